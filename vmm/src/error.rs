//! The VMM's error enum: everything that can go wrong building or running a VM, each variant
//! naming what failed so `crosvm run` can print one clear line.

use std::path::PathBuf;

use kvm_ioctls::Cap;

use crate::acpi::AcpiError;
use crate::arch::x86_64::zero_page::ZeroPageError;
use crate::control::ControlError;
use crate::devices::bus::BusError;
use crate::devices::net::NetError;
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::pmem::PmemError;
use crate::devices::vsock::VsockError;
use crate::loader::LoaderError;
use crate::memory::MemoryError;
use crate::seccomp::SeccompError;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open /dev/kvm (is KVM enabled and are you in the kvm group?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm lacks {0:?}, which this VMM needs")]
    MissingCapability(Cap),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("KVM {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Pmem(#[from] PmemError),
    #[error("cannot create the vsock device")]
    Vsock(#[from] VsockError),
    #[error("cannot create the network device")]
    Net(#[from] NetError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    ZeroPage(#[from] ZeroPageError),
    #[error("cannot set up vCPU {cpu}: {what}")]
    VcpuSetup {
        cpu: u8,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot place a device on the bus")]
    Bus(#[from] BusError),
    #[error("cannot open serial log {path}")]
    SerialLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("vCPU {cpu} triple-faulted (guest CPU reset) at rip {rip}")]
    TripleFault { cpu: u8, rip: String },
    #[error("vCPU {cpu} stopped: {reason}")]
    VcpuFatal { cpu: u8, reason: String },
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}
