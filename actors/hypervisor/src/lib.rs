//! Hypervisor backends behind one trait: how concierge (and the tests) start a VM process.
//!
//! A [`Hypervisor`] turns a [`VmSpec`] (kernel, initrd, command line, memory, cpus, disks, vsock)
//! into running processes and hands back a [`VmHandle`] that owns them: dropping the handle kills
//! them, so a failed start or a panicking caller leaves no stray VMM behind.
//!
//! Backends: [`qemu::QemuBackend`] (QEMU microvm, TCG or KVM, with our vhost-user-vsock backend
//! process) and [`crosvm::CrosvmBackend`] (our own VMM, for hosts whose KVM boots Linux); and
//! [`standin::StandInBackend`], which runs no VM, for isolated replay.

pub mod console;
pub mod crosvm;
pub mod error;
pub mod fsutil;
pub mod handle;
pub mod initramfs;
pub mod qemu;
pub mod qmp;
pub mod spec;
pub mod standin;
mod unix_listen;

pub use crosvm::CrosvmBackend;
pub use error::HypervisorError;
pub use handle::VmHandle;
pub use initramfs::{Initramfs, InitramfsError};
pub use qemu::{Accel, QemuBackend, VhostUserVsockBackend};
pub use spec::{DiskSpec, NetSpec, VmSpec, VsockSpec};
pub use standin::StandInBackend;

/// A way to run a VM. Implementations must stop every process they started when the start fails.
pub trait Hypervisor: Send + Sync {
    /// Short name of the backend, as users select it ("qemu", "crosvm").
    fn name(&self) -> &'static str;

    /// Starts the VM described by `spec` and returns once it is running: for the QEMU backend,
    /// once the guest has written its first console output.
    fn start(&self, spec: &VmSpec) -> Result<VmHandle, HypervisorError>;
}
