//! What `crosvm run` is asked to build: the VM's configuration, as the command line and the
//! crosvm hypervisor backend give it, and its validation before anything is created.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::devices::net::NetConfig;
use crate::devices::vsock::VsockConfig;
use crate::error::VmmError;

/// First interrupt line for virtio-mmio devices (below: legacy ISA devices we emulate).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// The IOAPIC has 24 pins; the last one is the ACPI GED's, virtio devices get the ones below.
const IRQ_MAX: u32 = crate::devices::legacy::ged::GED_IRQ - 1;
/// How long a Stop request waits for the guest to power off after the power button, unless
/// `crosvm run --stop-timeout` says otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest vCPU count: APIC ids fit the MADT's 8-bit fields and the boot CPUID.
pub const MAX_VCPUS: u8 = 254;

/// Where the guest's serial console goes.
#[derive(Debug, Clone)]
pub enum SerialOutput {
    Stdout,
    File(PathBuf),
    /// Kept in memory, for callers that read what the guest printed (the KVM probe).
    Capture(Arc<Mutex<Vec<u8>>>),
}

/// A serial sink appending to a shared buffer.
pub(crate) struct CaptureWriter(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `--block PATH[,ro=true][,serial=NAME]` disk (or a `--pmem PATH[,ro=true]` image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// The disk's virtio-blk serial (GET_ID); default: the image's device and inode.
    pub serial: Option<String>,
}

impl std::str::FromStr for BlockConfig {
    type Err = String;

    /// Parses `PATH[,ro=true|false][,serial=NAME]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("block device {s:?} has no path (expected PATH[,ro=true])"))?;
        let mut read_only = false;
        let mut serial = None;
        for opt in parts {
            match opt {
                "ro=true" | "ro" => read_only = true,
                "ro=false" => read_only = false,
                _ if opt.starts_with("serial=") => {
                    serial = Some(opt["serial=".len()..].to_owned());
                }
                other => {
                    return Err(format!(
                        "block device option {other:?} in {s:?} is not one of ro=true, \
                         ro=false, serial=NAME"
                    ));
                }
            }
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
            serial,
        })
    }
}

/// Everything `crosvm run` needs to start a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub cpus: u8,
    pub mem_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub params: String,
    pub serial: SerialOutput,
    /// virtio-blk disks, in window order (before the virtio-rng devices).
    pub block: Vec<BlockConfig>,
    /// virtio-pmem images, after the disks in window order, mapped above RAM.
    pub pmem: Vec<BlockConfig>,
    /// The hybrid vsock device (guest cid, host Unix socket), after the pmem devices.
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices, each on its tap, after the vsock device in window order.
    pub net: Vec<NetConfig>,
    /// Number of virtio-rng devices, each in its own virtio-mmio window.
    pub virtio_rng: usize,
    /// Confine the VMM's vCPU, device and helper threads with seccomp filters.
    pub seccomp: bool,
    /// Forward this process's stdin to the guest's serial port (an interactive console).
    pub serial_input: bool,
    /// Where to listen for control requests (`crosvm stop|pause|resume|status`).
    pub control_socket: Option<PathBuf>,
    /// How long a Stop request waits, after pressing the ACPI power button, for the guest to
    /// power off on its own before the VMM ends it (zero: end it at once).
    pub stop_timeout: Duration,
}

impl VmConfig {
    /// One vCPU, `mem_mib` of RAM, `kernel` with an empty command line, the console to
    /// `serial`, no devices, seccomp on, no control socket, the default stop timeout.
    pub fn new(kernel: PathBuf, mem_mib: u64, serial: SerialOutput) -> Self {
        Self {
            cpus: 1,
            mem_mib,
            kernel,
            initrd: None,
            params: String::new(),
            serial,
            block: Vec::new(),
            pmem: Vec::new(),
            vsock: None,
            net: Vec::new(),
            virtio_rng: 0,
            seccomp: true,
            serial_input: false,
            control_socket: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), VmmError> {
        if self.cpus == 0 || self.cpus > MAX_VCPUS {
            return Err(VmmError::Config(format!(
                "--cpus {} is out of range 1..={MAX_VCPUS}",
                self.cpus
            )));
        }
        if self.pmem.iter().any(|p| p.serial.is_some()) {
            return Err(VmmError::Config(
                "serial= applies to --block disks, not to --pmem images".into(),
            ));
        }
        let irqs_needed = (self.block.len()
            + self.pmem.len()
            + usize::from(self.vsock.is_some())
            + self.net.len()
            + self.virtio_rng) as u32;
        if VIRTIO_IRQ_BASE + irqs_needed > IRQ_MAX + 1 {
            return Err(VmmError::Config(format!(
                "{irqs_needed} virtio devices need more interrupt lines than the IOAPIC has"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_option_parsing() {
        let b: BlockConfig = "/tmp/disk.img".parse().unwrap();
        assert_eq!(
            b,
            BlockConfig {
                path: "/tmp/disk.img".into(),
                read_only: false,
                serial: None,
            }
        );
        let b: BlockConfig = "/tmp/disk.img,serial=stateful,ro".parse().unwrap();
        assert_eq!(b.serial.as_deref(), Some("stateful"));
        assert!(b.read_only);
        let b: BlockConfig = "/tmp/disk.img,ro=true".parse().unwrap();
        assert!(b.read_only);
        let b: BlockConfig = "d,ro=true,ro=false".parse().unwrap();
        assert!(!b.read_only);
        assert!("".parse::<BlockConfig>().is_err());
        assert!(",ro=true".parse::<BlockConfig>().is_err());
        let e = "d,rw".parse::<BlockConfig>().unwrap_err();
        assert!(e.contains("\"rw\""), "{e}");
    }
}
