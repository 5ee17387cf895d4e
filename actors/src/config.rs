//! What the host actors are configured with. Its own module, below every actor, so that actors
//! and [`crate::host`] (which starts them) do not import each other.

use std::path::PathBuf;
use std::sync::Arc;

use cros_hypervisor::Hypervisor;

/// Where the host actors keep their state, and how VMs are run.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Persistent state: components, disks, logs (`/var/lib/crosd`).
    pub state_dir: PathBuf,
    /// Runtime state: sockets, per-VM runtime dirs (`/run/crosd`).
    pub run_dir: PathBuf,
    pub hypervisor: HypervisorConfig,
    /// VM networking (patchpanel); off unless crosd turns it on.
    pub network: NetworkConfig,
}

/// patchpanel's settings (`crosd --network`, `--network-pool`, `--hosts-file`, `--network-dns`).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Whether VMs get a tap and an address. Off by default (library users, tests and crosd
    /// without `--network` get VMs without a network).
    pub enabled: bool,
    /// The range the VMs' /30s come from.
    pub pool: crate::patchpanel::pool::Pool,
    /// The range each VM's containers' /28 (its lxdbr0) comes from; must not overlap `pool`.
    pub container_pool: crate::patchpanel::pool::Pool,
    /// The hosts file whose crosd block names the running containers (only touched with
    /// `enabled`).
    pub hosts_file: PathBuf,
    /// The guests' name servers instead of the host's non-loopback ones (resolv.conf).
    pub dns: Option<Vec<String>>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            pool: Default::default(),
            container_pool: crate::patchpanel::pool::default_container_pool(),
            hosts_file: PathBuf::from("/etc/hosts"),
            dns: None,
        }
    }
}

impl NetworkConfig {
    /// Whether `crosd --network` can work here: taps need /dev/net/tun and CAP_NET_ADMIN (crosd
    /// as root).
    pub fn can_make_taps() -> bool {
        std::path::Path::new("/dev/net/tun").exists() && nix::unistd::geteuid().is_root()
    }
}

impl HostConfig {
    /// Default hypervisor settings (`auto`, helper binaries beside this program).
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            hypervisor: HypervisorConfig::default(),
            network: NetworkConfig::default(),
        }
    }
}

/// Which hypervisor backend concierge boots VMs with (`crosd --hypervisor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HypervisorKind {
    /// crosvm where /dev/kvm can boot a stock kernel, else qemu.
    #[default]
    Auto,
    Qemu,
    Crosvm,
}

#[derive(Clone, Default)]
pub struct HypervisorConfig {
    pub kind: HypervisorKind,
    /// Where the `crosvm` binary (VMM and vhost-user backends) is; default: beside this program.
    pub bin_dir: Option<PathBuf>,
    /// A backend given in-process instead of `kind` (isolated replay's stand-in).
    pub backend: Option<Arc<dyn Hypervisor>>,
}

impl std::fmt::Debug for HypervisorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HypervisorConfig")
            .field("kind", &self.kind)
            .field("bin_dir", &self.bin_dir)
            .field("backend", &self.backend.as_ref().map(|b| b.name()))
            .finish()
    }
}
