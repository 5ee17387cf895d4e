//! Starting crosd's host actors (their configuration is in [`crate::config`]).

use crate::bus::BusHandle;
use crate::config::HostConfig;
use crate::supervisor::{SupervisorError, spawn_supervised, spawn_supervised_on};
use crate::{chunneld, cicerone, concierge, imageloader, patchpanel, seneschal, vmlog_forwarder};
use actix::Arbiter;
use cros_messages::{ActorKind, Addr};

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
            // Shared by every instance the supervisor builds: a restarted concierge takes over
            // the VMs of the one that crashed.
            let handover = std::sync::Arc::new(concierge::Handover::default());
            spawn_supervised_on(bus, addr, &here, move || {
                concierge::Concierge::with_handover(bus2.clone(), config.clone(), handover.clone())
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
            spawn_supervised_on(bus, addr, &here, move || {
                seneschal::Seneschal::new(bus2.clone(), config.clone())
            })
            .await?
        }
        ActorKind::VmlogForwarder => {
            spawn_supervised_on(bus, addr, &here, move || {
                vmlog_forwarder::VmlogForwarder::new(config.clone())
            })
            .await?
        }
        ActorKind::Patchpanel => {
            // Shared by every instance, as concierge's handover: a restarted patchpanel keeps
            // the running VMs' taps instead of taking them for leftovers.
            let state = patchpanel::SharedState::default();
            spawn_supervised_on(bus, addr, &here, move || {
                patchpanel::Patchpanel::new(config.network.clone(), state.clone())
                    .on_bus(bus2.clone())
            })
            .await?
        }
        ActorKind::Chunneld => {
            // Its own arbiter (thread): forwarded connections' byte pumps run there, off the
            // thread that serves the control socket. The forwards outlive a restart.
            let state = chunneld::SharedState::default();
            spawn_supervised(bus, addr, move || {
                chunneld::Chunneld::new(bus2.clone(), state.clone())
            })
            .await?
        }
        other => return Err(SpawnError::NotHostActor(other.name().to_string())),
    }
    Ok(())
}
