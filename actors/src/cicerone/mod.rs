//! cicerone: containers inside VMs.
//!
//! Its VM table is real: concierge's NotifyVmStarted/NotifyVmStopped fill and empty it (only
//! concierge may send those). Talking to tremplin and garcon needs the guest bridges of later
//! issues; until then container requests for a known VM answer `Unsupported` saying so.

use crate::bus::not_mine;
use crate::bus::{BusHandle, Deliver};
use actix::{Actor, Context, Handler, MessageResult};
use cros_messages::addr::valid_name;
use cros_messages::cicerone::{CiceroneReply, CiceroneRequest};
use cros_messages::{ActorKind, Addr, Body, CrosError, ErrorKind};
use std::collections::BTreeMap;

/// What cicerone knows about a VM concierge started.
#[derive(Debug, Clone)]
struct VmEntry {
    #[allow(dead_code)] // Checked against the peer cid once guest bridges connect.
    cid: u32,
    #[allow(dead_code)] // Checked against container tokens once garcon connects.
    token: String,
    /// Running containers by name.
    containers: BTreeMap<String, ()>,
}

pub struct Cicerone {
    #[allow(dead_code)] // Used once cicerone publishes container events.
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

    fn handle_request(
        &mut self,
        from: &Addr,
        req: CiceroneRequest,
    ) -> Result<CiceroneReply, CrosError> {
        match req {
            CiceroneRequest::NotifyVmStarted { vm, cid, token, .. } => {
                only_concierge(from, "NotifyVmStarted")?;
                check_name("VM", &vm)?;
                self.vms.insert(
                    vm,
                    VmEntry {
                        cid,
                        token,
                        containers: BTreeMap::new(),
                    },
                );
                Ok(CiceroneReply::Ack {})
            }
            CiceroneRequest::NotifyVmStopping { vm } => {
                only_concierge(from, "NotifyVmStopping")?;
                self.vm(&vm)?;
                Ok(CiceroneReply::Ack {})
            }
            CiceroneRequest::NotifyVmStopped { vm } => {
                only_concierge(from, "NotifyVmStopped")?;
                self.vm(&vm)?;
                self.vms.remove(&vm);
                Ok(CiceroneReply::Ack {})
            }
            CiceroneRequest::ListRunningContainers { vm } => Ok(CiceroneReply::RunningContainers {
                containers: self.vm(&vm)?.containers.keys().cloned().collect(),
            }),
            CiceroneRequest::StartLxd { vm } => {
                self.vm(&vm)?;
                Err(unsupported(&vm, "start LXD"))
            }
            CiceroneRequest::CreateLxdContainer { vm, container, .. }
            | CiceroneRequest::SetUpLxdContainerUser { vm, container, .. }
            | CiceroneRequest::StartLxdContainer { vm, container, .. }
            | CiceroneRequest::StopLxdContainer { vm, container }
            | CiceroneRequest::DeleteLxdContainer { vm, container }
            | CiceroneRequest::LaunchVshd { vm, container, .. } => {
                self.vm(&vm)?;
                check_name("container", &container)?;
                Err(unsupported(&vm, &format!("manage container {container:?}")))
            }
        }
    }

    fn vm(&self, name: &str) -> Result<&VmEntry, CrosError> {
        check_name("VM", name)?;
        self.vms
            .get(name)
            .ok_or_else(|| CrosError::not_found(format!("no VM named {name:?} is running")))
    }
}

fn unsupported(vm: &str, what: &str) -> CrosError {
    CrosError::unsupported(format!(
        "cannot {what} in VM {vm:?}: this build of crosd has no tremplin/garcon connection yet"
    ))
}

fn only_concierge(from: &Addr, what: &str) -> Result<(), CrosError> {
    if *from == Addr::host(ActorKind::Concierge.name()) {
        Ok(())
    } else {
        Err(CrosError::new(
            ErrorKind::PermissionDenied,
            format!("{what} is accepted only from concierge, not from {from}"),
        ))
    }
}

fn check_name(what: &str, name: &str) -> Result<(), CrosError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(CrosError::invalid(format!(
            "bad {what} name {name:?}: use 1-64 characters of [A-Za-z0-9._-]"
        )))
    }
}

impl Actor for Cicerone {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Cicerone {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let env = msg.env;
        MessageResult(match env.body {
            Body::Cicerone(req) => match self.handle_request(&env.from, req) {
                Ok(reply) => Body::CiceroneReply(reply),
                Err(e) => Body::Error(e),
            },
            other => not_mine("cicerone", &other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusConfig;

    fn cicerone() -> Cicerone {
        Cicerone::new(BusHandle::new(BusConfig::default()).unwrap())
    }

    fn started(vm: &str) -> CiceroneRequest {
        CiceroneRequest::NotifyVmStarted {
            vm: vm.into(),
            cid: 3,
            token: "t".into(),
            pid: 1,
        }
    }

    #[test]
    fn unknown_vm_is_not_found() {
        let err = cicerone()
            .handle_request(
                &Addr::client(1),
                CiceroneRequest::ListRunningContainers {
                    vm: "termina".into(),
                },
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("termina"));
    }

    #[test]
    fn vm_table_follows_concierge_notifications() {
        let mut c = cicerone();
        let concierge = Addr::host("concierge");
        assert_eq!(
            c.handle_request(&concierge, started("termina")),
            Ok(CiceroneReply::Ack {})
        );
        assert_eq!(
            c.handle_request(
                &Addr::client(1),
                CiceroneRequest::ListRunningContainers {
                    vm: "termina".into()
                }
            ),
            Ok(CiceroneReply::RunningContainers { containers: vec![] })
        );
        let err = c
            .handle_request(
                &Addr::client(1),
                CiceroneRequest::StartLxd {
                    vm: "termina".into(),
                },
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        c.handle_request(
            &concierge,
            CiceroneRequest::NotifyVmStopped {
                vm: "termina".into(),
            },
        )
        .unwrap();
        assert_eq!(
            c.handle_request(
                &Addr::client(1),
                CiceroneRequest::StartLxd {
                    vm: "termina".into()
                }
            )
            .unwrap_err()
            .kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn only_concierge_may_notify() {
        let err = cicerone()
            .handle_request(&Addr::client(1), started("termina"))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        assert!(err.message.contains("client-1"), "{err}");
    }
}
