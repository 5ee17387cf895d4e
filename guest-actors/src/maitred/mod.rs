//! maitred: the termina VM's init (PID 1) and its control service on vsock port 8888.
//!
//! Boot runs in two stages. Stage 1 is this binary as `/init` of the initramfs: it loads the
//! kernel modules the VM needs (virtio, block, vsock, filesystems), finds the root filesystem disk by
//! its virtio serial, and switches root to it. Stage 2 is the same binary as `/sbin/maitred` on the
//! read-only root: it makes the mounts REFERENCE.md lists, starts vm_syslog and vshd, tells the host
//! `VmReady` on port 7777 and serves [`cros_messages::maitred::MaitredRequest`]s.

pub mod disks;
pub mod handlers;
pub mod init;
pub mod mount9p;
pub mod network;
pub mod power_button;
pub mod reaper;
pub mod server;
pub mod services;
pub mod stage1;

pub use cros_messages::termina::{ROOTFS_SERIAL, STATEFUL_SERIAL, TOOLS_SERIAL};

/// Where the stateful disk is mounted.
pub const STATEFUL_MOUNT: &str = "/mnt/stateful";
/// Where the tools image is mounted (as on Chrome OS).
pub const TOOLS_MOUNT: &str = "/opt/google/cros-containers";
/// Module directory inside the initramfs: the .ko files and their `load-order`.
pub const INITRAMFS_MODULES: &str = "/lib/modules/crosd";
/// Module directory in the root image: what stage 2 loads after VmReady (btrfs, 9P, overlay).
pub const LATE_MODULES: &str = "/lib/modules/crosd-late";
/// Marker file that exists only in the initramfs: its presence selects stage 1.
pub const INITRAMFS_MARKER: &str = "/.crosd-initramfs";
/// Prefix of maitred's console lines.
pub const CONSOLE_PREFIX: &str = "maitred";
