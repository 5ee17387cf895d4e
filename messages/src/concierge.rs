//! concierge: VMs and their disks (REFERENCE.md, "Concierge").

use serde::{Deserialize, Serialize};

fn default_cpus() -> u32 {
    2
}
fn default_memory_mib() -> u32 {
    1024
}
fn default_true() -> bool {
    true
}
fn default_start_timeout() -> u32 {
    120
}

/// Requests to concierge. Each acts for the uid of the client's connection (SO_PEERCRED), not
/// for the `owner_id` it carries: that is read only from root (or crosd's own user), to act
/// for the user it names (a decimal uid), and ignored from anyone else.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ConciergeRequest {
    StartVm(StartVm),
    StopVm {
        name: String,
        #[serde(default)]
        owner_id: String,
    },
    StopAllVms {},
    SuspendVm {
        name: String,
        #[serde(default)]
        owner_id: String,
    },
    ResumeVm {
        name: String,
        #[serde(default)]
        owner_id: String,
    },
    GetVmInfo {
        name: String,
        #[serde(default)]
        owner_id: String,
    },
    ListVms {},
    /// Creates the VM's stateful disk; `size` 0 means auto (90% of free + used, >= 1 GiB).
    CreateDiskImage {
        name: String,
        #[serde(default)]
        owner_id: String,
        #[serde(default)]
        size: u64,
    },
    DestroyDiskImage {
        name: String,
        #[serde(default)]
        owner_id: String,
    },
    ListVmDisks {},
    /// Writes the VM's disk as a zstd stream; refused while the VM runs unless `force`. Replies
    /// `DiskImageOperation` at once.
    ///
    /// The client opens the files and passes them with the request (SCM_RIGHTS): the export
    /// target first, then the digest file when `digest_path` is set. `path` and `digest_path`
    /// then only name them in messages; crosd never opens them. Without passed files (root or
    /// crosd's own user only, e.g. `crosmsg send`), crosd writes `<path>.partial` itself and
    /// renames it to `path`, refusing an existing `path` unless `force`.
    ExportDiskImage {
        name: String,
        #[serde(default)]
        owner_id: String,
        path: String,
        /// Also write the SHA-256 of the exported file here (`sha256sum` format).
        #[serde(default)]
        digest_path: Option<String>,
        #[serde(default)]
        force: bool,
    },
    /// Replaces the VM's disk with the zstd stream at `path` once the whole stream (and the
    /// digest, when given) checked out; refused while the VM runs. Replies `DiskImageOperation`.
    /// Files are passed as for `ExportDiskImage`: the stream first, then the digest; both must
    /// be regular files, the digest at most a few hundred bytes.
    ImportDiskImage {
        name: String,
        #[serde(default)]
        owner_id: String,
        path: String,
        #[serde(default)]
        digest_path: Option<String>,
    },
    /// Grows or shrinks the VM's disk to `size` bytes (a multiple of 4096). Grow: the file,
    /// then (VM running) the VMM's disk and the guest's filesystem, online. Shrink (VM running
    /// only): the guest's filesystem first, then the disk and the file; refused below the
    /// filesystem's minimum. Replies `DiskImageOperation` once started.
    ResizeDiskImage {
        name: String,
        #[serde(default)]
        owner_id: String,
        size: u64,
    },
    DiskImageStatus {
        uuid: String,
    },
    CancelDiskImageOperation {
        uuid: String,
    },
}

/// StartVm: boot a VM from the termina component (REFERENCE.md's StartVm sequence). Passed whole
/// from the request into concierge's boot plan.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartVm {
    pub name: String,
    #[serde(default)]
    pub owner_id: String,
    /// Extra disks; the stateful disk named after the VM is always first.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    #[serde(default)]
    pub kernel_params: Vec<String>,
    #[serde(default = "default_true")]
    pub start_termina: bool,
    /// Seconds to wait for VmReady and StartTermina together.
    #[serde(default = "default_start_timeout")]
    pub timeout_secs: u32,
    /// Component version to boot; the newest verified one when absent.
    #[serde(default)]
    pub component_version: Option<String>,
}

impl StartVm {
    /// A request with every field at its default (what `{"StartVm":{"name":…}}` means).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            owner_id: String::new(),
            disks: Vec::new(),
            cpus: default_cpus(),
            memory_mib: default_memory_mib(),
            kernel_params: Vec::new(),
            start_termina: true,
            timeout_secs: default_start_timeout(),
            component_version: None,
        }
    }
}

/// A disk to attach to a VM.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub path: String,
    #[serde(default)]
    pub writable: bool,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum VmStatus {
    Starting,
    Running,
    Stopping,
    Stopped,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub owner_id: String,
    pub cid: u32,
    /// Host pid of the hypervisor process.
    pub pid: u32,
    pub ipv4: String,
    pub seneschal_handle: u64,
    pub status: VmStatus,
    /// Which backend runs it: `crosvm` or `qemu`.
    pub hypervisor: String,
    /// Host side of the VM's hybrid-vsock device: the Unix socket where `CONNECT <port>\n`
    /// reaches a guest listener (vsh dials vshd on 9001 through it). Empty when unknown.
    #[serde(default)]
    pub vsock_socket: String,
    /// For a VM reported `Stopped`: why it stopped.
    #[serde(default)]
    pub detail: String,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskImageStatus {
    Created,
    Exists,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDiskInfo {
    pub name: String,
    pub path: String,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes actually allocated on the host (sparse files use less).
    pub allocated: u64,
    pub min_size: u64,
    pub available_space: u64,
    pub vm_type: String,
    /// The uid that owns the disk (decimal); disks from before owners were recorded are root's.
    #[serde(default)]
    pub owner_id: String,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ConciergeReply {
    VmStarted {
        vm_info: VmInfo,
    },
    VmStopped {
        name: String,
    },
    AllVmsStopped {
        count: u32,
    },
    VmInfo {
        vm_info: VmInfo,
    },
    Vms {
        vms: Vec<VmInfo>,
    },
    DiskImage {
        status: DiskImageStatus,
        path: String,
        size: u64,
    },
    DiskImageDestroyed {
        name: String,
    },
    Disks {
        disks: Vec<VmDiskInfo>,
    },
    /// A long disk operation started; follow it with `DiskImageStatus` or
    /// `DiskImageProgress` events.
    DiskImageOperation {
        uuid: String,
    },
    DiskOperation {
        op: DiskOpInfo,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum DiskOpKind {
    Export,
    Import,
    Resize,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum DiskOpState {
    Running,
    Done,
    Failed,
    Cancelled,
}

/// A disk export or import, as `DiskImageStatus` reports it.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskOpInfo {
    pub uuid: String,
    pub kind: DiskOpKind,
    /// The VM whose disk it reads or replaces.
    pub name: String,
    /// The exported or imported file.
    pub path: String,
    pub state: DiskOpState,
    pub percent: u8,
    /// Bytes of the source handled so far, of `total_bytes`.
    pub processed_bytes: u64,
    pub total_bytes: u64,
    /// Why it failed; empty otherwise.
    pub message: String,
    /// The uid that started it (decimal); records from before owners were kept are root's.
    #[serde(default)]
    pub owner_id: String,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum StopReason {
    /// StopVm asked for it.
    Requested,
    /// The guest powered itself off.
    GuestShutdown,
    /// The hypervisor process exited unexpectedly.
    HypervisorExited,
    /// crosd is shutting down.
    DaemonShutdown,
    /// crosd was killed (SIGKILL, a crash) while the VM ran; the VM died with it.
    DaemonKilled,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ConciergeEvent {
    VmStartingUp {
        name: String,
    },
    VmStarted {
        vm_info: VmInfo,
    },
    VmStopping {
        name: String,
    },
    VmStopped {
        name: String,
        reason: StopReason,
        detail: String,
    },
    DiskImageProgress {
        uuid: String,
        percent: u8,
    },
}
