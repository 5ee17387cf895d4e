//! What a VM is made of, independent of the backend that runs it.

use std::path::PathBuf;
use std::time::Duration;

/// A disk handed to the guest as a virtio block device, in the order given (first = vda).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    /// virtio-blk serial (the device's get-id), which the guest finds the disk by: device order
    /// on virtio-mmio is not guaranteed.
    pub serial: Option<String>,
    /// The disk may be resized while the VM runs. Under QEMU such a disk is served by QEMU
    /// itself (resized with QMP `block_resize`): a vhost-user-blk backend built on the vhost
    /// crate cannot send the config-change message that tells QEMU the capacity changed.
    pub online_resize: bool,
}

/// The VM's hybrid vsock device (Firecracker convention): the host reaches guest port P by
/// connecting to `uds_path` and writing `CONNECT P\n`; a guest connection to cid 2 port P
/// reaches the Unix socket `<uds_path>_P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// The VM's network device: virtio-net on a host tap that patchpanel made (and addressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap's name (it exists before the VM starts; the backend only attaches).
    pub tap: String,
    /// The guest NIC's MAC, `xx:xx:xx:xx:xx:xx`; `None` lets the device pick one.
    pub mac: Option<String>,
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Name for logs and errors.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    pub mem_mib: u32,
    pub cpus: u32,
    pub disks: Vec<DiskSpec>,
    pub vsock: Option<VsockSpec>,
    /// A network device; `None`: the VM has none.
    pub net: Option<NetSpec>,
    /// Directory for the VM's sockets and logs; created if missing.
    pub run_dir: PathBuf,
    /// Where the guest's serial console is written.
    pub console_log: PathBuf,
    /// How long the guest may take to print anything on its console before the start is
    /// declared stalled.
    pub first_output_timeout: Duration,
}

impl VmSpec {
    /// A spec with 512 MiB, 2 cpus, a serial console command line, no disks and no vsock,
    /// logging to `run_dir/console.log`.
    pub fn new(
        name: impl Into<String>,
        kernel: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
    ) -> Self {
        let run_dir = run_dir.into();
        VmSpec {
            name: name.into(),
            kernel: kernel.into(),
            initrd: None,
            cmdline: "console=ttyS0".to_string(),
            mem_mib: 512,
            cpus: 2,
            disks: Vec::new(),
            vsock: None,
            net: None,
            console_log: run_dir.join("console.log"),
            run_dir,
            first_output_timeout: Duration::from_secs(30),
        }
    }
}
