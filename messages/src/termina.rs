//! What the host and the termina guest agree on outside messages: the virtio-blk serials the
//! host gives each disk and maitred finds them by (virtio-mmio probe order is not guaranteed).

/// The read-only root filesystem image (vm_rootfs.img).
pub const ROOTFS_SERIAL: &str = "crosd-rootfs";
/// The read-only tools image (vm_tools.img), mounted at /opt/google/cros-containers.
pub const TOOLS_SERIAL: &str = "crosd-tools";
/// The VM's writable stateful disk, mounted at /mnt/stateful.
pub const STATEFUL_SERIAL: &str = "crosd-stateful";
