//! cicerone: containers inside VMs (REFERENCE.md, "Cicerone").
//!
//! Its VM table comes from concierge (NotifyVmStarted/NotifyVmStopped, only concierge may send
//! them). For each VM it talks to `tremplin@<vm>` (LXD in the VM) and, per container, to
//! `garcon@<vm>/<container>`, both through the VM's guest bridges on the bus; their events reach
//! it as bus events (TremplinEvent from host port 7778) and garcon's ContainerReady as a request
//! on host port 8889, which must carry the token cicerone handed the container at start.
//!
//! It also serves each VM's image proxy (see [`image_proxy`]) and the host ports a container
//! shell's vshd and an image upload dial back on ([`host_port`]).

pub mod host_port;
pub mod image_proxy;
mod requests;
mod vm_table;

pub(crate) use vm_table::{check_name, may_manage, no_such_vm};

use std::collections::BTreeMap;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, ResponseActFuture};
use cros_messages::chunneld::ChunneldRequest;
use cros_messages::cicerone::{CiceroneEvent, CiceroneReply, ContainerStatus};
use cros_messages::garcon::GarconEvent;
use cros_messages::tremplin::TremplinEvent;
use cros_messages::{ActorKind, Addr, Body, CrosError, Envelope};

use crate::bus::{BusHandle, Deliver, Published, actor_sink, not_mine};
use vm_table::VmEntry;

/// The image server `vmc container` uses when none is named (Crostini's default).
pub const DEFAULT_IMAGE_SERVER: &str = "https://images.lxd.canonical.com";
pub const DEFAULT_IMAGE_ALIAS: &str = "debian/bookworm";

type Reply = ResponseActFuture<Cicerone, Body>;

/// chunneld answers from its own table: a short wait is plenty.
const CHUNNELD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn ready(body: Body) -> Reply {
    Box::pin(actix::fut::ready(body))
}

fn reply(r: Result<CiceroneReply, CrosError>) -> Body {
    match r {
        Ok(r) => Body::CiceroneReply(r),
        Err(e) => Body::Error(e),
    }
}

pub struct Cicerone {
    bus: BusHandle,
    vms: BTreeMap<String, VmEntry>,
}

impl Cicerone {
    pub fn new(bus: BusHandle) -> Self {
        Self {
            bus,
            vms: BTreeMap::new(),
        }
    }

    fn me() -> Addr {
        Addr::host(ActorKind::Cicerone.name())
    }

    fn publish(&self, event: CiceroneEvent) {
        self.bus.publish(&Self::me(), Body::CiceroneEvent(event));
    }

    /// Tells chunneld (port forwarding) what runs, in the background. What cicerone tells it
    /// arrives in order: untraced, the request is in chunneld's mailbox when this returns;
    /// traced, the tasks that deliver them start in the order spawned on this arbiter. A
    /// chunneld that is not there (unit tests) or refuses only costs forwarding.
    fn tell_chunneld(&self, req: ChunneldRequest) {
        let what = <&'static str>::from(&req);
        let asked = self.bus.request_with_deadline(
            &Self::me(),
            &Addr::host(ActorKind::Chunneld.name()),
            Body::Chunneld(req),
            CHUNNELD_TIMEOUT,
        );
        actix::spawn(async move {
            if let Err(e) = asked.await {
                tracing::debug!(error = %e, "chunneld did not take {what}");
            }
        });
    }

    /// A garcon event, from `garcon@<vm>` (the bridge set `from` to the VM the connection
    /// came in on; garcon names its container by the token it was given).
    fn garcon_event(&mut self, vm: &str, event: GarconEvent) {
        match event {
            GarconEvent::ListeningPorts { token, ports } => {
                let Some(entry) = self.vms.get(vm) else {
                    return;
                };
                let Some(container) = entry.container_with_token(&token) else {
                    tracing::warn!(vm, "ListeningPorts with a token no container of the VM has");
                    return;
                };
                // chunneld itself refuses a container whose garcon it was not told is ready.
                self.tell_chunneld(ChunneldRequest::UpdateListeningPorts {
                    vm: vm.to_string(),
                    container: container.to_string(),
                    ports,
                });
            }
        }
    }

    /// A tremplin event, from `tremplin@<vm>` (the bridge set `from` to the VM the connection
    /// came in on).
    fn tremplin_event(&mut self, vm: &str, event: TremplinEvent) {
        let Some(entry) = self.vms.get_mut(vm) else {
            tracing::debug!(vm, ?event, "tremplin event for a VM cicerone does not know");
            return;
        };
        let vm = vm.to_string();
        match event {
            TremplinEvent::TremplinReady {} => {
                entry.tremplin_ready.send_replace(true);
                tracing::info!(vm = %vm, "tremplin started");
                self.publish(CiceroneEvent::TremplinStarted { vm });
            }
            TremplinEvent::UpdateCreateStatus {
                name,
                status,
                percent,
                failure_reason,
            } => match status {
                ContainerStatus::Downloading => {
                    self.publish(CiceroneEvent::LxdContainerDownloading {
                        vm,
                        container: name,
                        percent,
                    })
                }
                ContainerStatus::Creating => {}
                status => self.publish(CiceroneEvent::LxdContainerCreated {
                    vm,
                    container: name,
                    status,
                    failure_reason,
                }),
            },
            TremplinEvent::UpdateStartStatus {
                name,
                status,
                failure_reason,
            } => self.publish(CiceroneEvent::LxdContainerStarting {
                vm,
                container: name,
                status,
                failure_reason,
            }),
            TremplinEvent::ContainerShutdown { name } => {
                if let Some(c) = entry.containers.get_mut(&name)
                    && c.garcon.take().is_some()
                {
                    self.bus
                        .unregister(&Addr::in_container("garcon", &vm, &name));
                }
                self.tell_chunneld(ChunneldRequest::NotifyContainerStopped {
                    vm: vm.clone(),
                    container: name.clone(),
                });
                self.publish(CiceroneEvent::ContainerShutdown {
                    vm,
                    container: name,
                });
            }
        }
    }

    fn forget_vm(&mut self, vm: &str) {
        if let Some(entry) = self.vms.remove(vm) {
            for (name, c) in entry.containers {
                if c.garcon.is_some() {
                    self.bus
                        .unregister(&Addr::in_container("garcon", vm, &name));
                }
            }
        }
    }
}

impl Actor for Cicerone {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let sink = actor_sink(ctx.address().downgrade());
        self.bus.subscribe(
            Self::me(),
            vec!["TremplinEvent".into(), "GarconEvent".into()],
            sink,
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.bus.unsubscribe(&Self::me());
        let vms: Vec<String> = self.vms.keys().cloned().collect();
        for vm in vms {
            self.forget_vm(&vm);
        }
    }
}

impl Handler<Deliver> for Cicerone {
    type Result = ResponseActFuture<Self, Body>;

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) -> Self::Result {
        let Envelope { id, from, body, .. } = msg.env;
        match body {
            Body::Cicerone(req) => {
                let files = if from.is_client() {
                    self.bus.clients().take_files(&from, id)
                } else {
                    Vec::new()
                };
                self.handle_request(ctx, from, req, files, msg.deadline)
            }
            other => ready(not_mine("cicerone", &other)),
        }
    }
}

/// An event a guest actor published (see [`Actor::started`]).
impl Handler<Published> for Cicerone {
    type Result = ();

    fn handle(&mut self, Published(env): Published, ctx: &mut Context<Self>) {
        let from = &env.from;
        let (Some(vm), None) = (&from.vm, &from.container) else {
            tracing::debug!(%from, "event from an unexpected sender");
            return;
        };
        let vm = vm.clone();
        match (from.actor.as_str(), env.body) {
            ("tremplin", Body::TremplinEvent(event)) => self.tremplin_event(&vm, event),
            ("garcon", Body::GarconEvent(event)) => self.garcon_event(&vm, event),
            (actor, body) => {
                tracing::debug!(actor, event = %body.type_name(), "event from an unexpected sender")
            }
        }
        if self.bus.is_shutting_down() {
            ctx.stop();
        }
    }
}

#[cfg(test)]
mod tests;
