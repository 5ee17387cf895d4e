//! Starting crosd's host actors, and what they share.

use crate::bus::BusHandle;
use crate::supervisor::{SupervisorError, spawn_supervised_on};
use crate::{cicerone, concierge, imageloader, seneschal, vmlog_forwarder};
use actix::Arbiter;
use cros_messages::{ActorKind, Addr, Body, CrosError};
use std::path::PathBuf;

/// Where the host actors keep their state, and how VMs are run.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Persistent state: components, disks, logs (`/var/lib/crosd`).
    pub state_dir: PathBuf,
    /// Runtime state: sockets, per-VM runtime dirs (`/run/crosd`).
    pub run_dir: PathBuf,
    pub hypervisor: HypervisorConfig,
}

impl HostConfig {
    /// Default hypervisor settings (`auto`, helper binaries beside this program).
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            hypervisor: HypervisorConfig::default(),
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

#[derive(Debug, Clone, Default)]
pub struct HypervisorConfig {
    pub kind: HypervisorKind,
    /// Where the `crosvm` binary (VMM and vhost-user backends) is; default: beside this program.
    pub bin_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0} is not a host actor; crosd runs {host}", host = host_names())]
    NotHostActor(String),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

fn host_names() -> String {
    ActorKind::HOST.map(ActorKind::name).join(", ")
}

/// Starts every host actor under the supervisor, on the caller's arbiter (in crosd, the thread
/// that also serves the control socket): a request then costs no thread switch, which is most of
/// its price on a small machine. Work that could block that thread runs elsewhere: imageloader
/// hashes on the blocking pool, concierge's VM processes are watched by their own threads.
pub async fn start_host_actors(bus: &BusHandle, config: &HostConfig) -> Result<(), SpawnError> {
    for kind in ActorKind::HOST {
        spawn_host_actor(bus, config, kind).await?;
    }
    Ok(())
}

/// Starts one host actor (a fresh instance: crosd at start-up, and `crosmsg trace replay
/// --actor` for an isolated replay).
pub async fn spawn_host_actor(
    bus: &BusHandle,
    config: &HostConfig,
    kind: ActorKind,
) -> Result<(), SpawnError> {
    let addr = Addr::host(kind.name());
    let (bus2, config) = (bus.clone(), config.clone());
    let here = Arbiter::current();
    match kind {
        ActorKind::Imageloader => {
            spawn_supervised_on(bus, addr, &here, move || {
                imageloader::Imageloader::new(config.clone())
            })
            .await?
        }
        ActorKind::Concierge => {
            spawn_supervised_on(bus, addr, &here, move || {
                concierge::Concierge::new(bus2.clone(), config.clone())
            })
            .await?
        }
        ActorKind::Cicerone => {
            spawn_supervised_on(bus, addr, &here, move || {
                cicerone::Cicerone::new(bus2.clone())
            })
            .await?
        }
        ActorKind::Seneschal => {
            spawn_supervised_on(bus, addr, &here, seneschal::Seneschal::new).await?
        }
        ActorKind::VmlogForwarder => {
            spawn_supervised_on(bus, addr, &here, move || {
                vmlog_forwarder::VmlogForwarder::new(config.clone())
            })
            .await?
        }
        other => return Err(SpawnError::NotHostActor(other.name().to_string())),
    }
    Ok(())
}

/// The reply of an actor handed a body of another actor's family (the bus checks families
/// before delivery, so this only fires for a mis-registered route).
pub(crate) fn not_mine(actor: &str, body: &Body) -> Body {
    CrosError::invalid(format!("{actor} does not handle {}", body.type_name())).into()
}
