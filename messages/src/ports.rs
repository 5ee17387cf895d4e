//! vsock ports and cids, as Crostini assigns them.

/// The host's vsock context id (VMADDR_CID_HOST).
pub const HOST_CID: u32 = 2;
/// The first cid handed to guests; 0..=2 are reserved by the vsock spec.
pub const FIRST_GUEST_CID: u32 = 3;

/// maitred, the guest init, listens here.
pub const MAITRED: u32 = 8888;
/// tremplin, the container manager in the guest, listens here.
pub const TREMPLIN: u32 = 8890;
/// vshd, the VM shell server, listens here.
pub const VSHD: u32 = 9001;
/// concierge's StartupListener on the host: maitred sends VmReady here.
pub const CONCIERGE_STARTUP: u32 = 7777;
/// cicerone's TremplinListener on the host.
pub const CICERONE_TREMPLIN: u32 = 7778;
/// cicerone's ContainerListener on the host (garcon reports here).
pub const CICERONE_CONTAINER: u32 = 8889;
/// crosd's image proxy on the host: raw bytes of HTTP/1.1 (CONNECT for https, absolute URIs for
/// http), through which LXD in a VM with no network device downloads container images.
pub const IMAGE_PROXY: u32 = 3128;
/// garcon listens on the first free guest port of this range, as Crostini's does.
pub const GARCON_FIRST: u32 = 10000;
pub const GARCON_LAST: u32 = 20000;
/// Host ports crosd listens on for one connection from a guest (a container shell's vshd dialing
/// back, an image upload), picked per use from this range.
pub const HOST_EPHEMERAL_FIRST: u32 = 20001;
pub const HOST_EPHEMERAL_LAST: u32 = 30000;
/// vmlog_forwarder on the host: vm_syslog ships guest logs here.
pub const VMLOG_FORWARDER: u32 = 9999;
/// seneschal's 9P servers take ports from here up.
pub const SENESCHAL_BASE: u32 = 16384;
