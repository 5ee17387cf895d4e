//! concierge: VMs and their disks.
//!
//! The VM table is real and starts empty. Booting VMs and managing disk images come with later
//! issues; until then those requests answer `Unsupported` saying so, after the checks that do
//! not depend on them (bad names, unknown VMs).

use crate::bus::{BusHandle, Deliver};
use crate::host::{HostConfig, not_mine};
use actix::{Actor, Context, Handler, MessageResult};
use cros_messages::addr::valid_name;
use cros_messages::concierge::{ConciergeReply, ConciergeRequest, VmInfo};
use cros_messages::{Body, CrosError};
use std::collections::BTreeMap;

pub struct Concierge {
    #[allow(dead_code)] // Used once concierge starts VMs and publishes their events.
    bus: BusHandle,
    #[allow(dead_code)] // Disks and per-VM runtime dirs live here once VMs start.
    config: HostConfig,
    /// Running VMs by name.
    vms: BTreeMap<String, VmInfo>,
}

impl Concierge {
    pub fn new(bus: BusHandle, config: HostConfig) -> Self {
        Self {
            bus,
            config,
            vms: BTreeMap::new(),
        }
    }

    fn handle_request(&mut self, req: ConciergeRequest) -> Result<ConciergeReply, CrosError> {
        match req {
            ConciergeRequest::ListVms {} => Ok(ConciergeReply::Vms {
                vms: self.vms.values().cloned().collect(),
            }),
            ConciergeRequest::GetVmInfo { name, .. } => Ok(ConciergeReply::VmInfo {
                vm_info: self.vm(&name)?.clone(),
            }),
            ConciergeRequest::StartVm { name, .. } => {
                check_name(&name)?;
                if self.vms.contains_key(&name) {
                    return Err(CrosError::new(
                        cros_messages::ErrorKind::AlreadyExists,
                        format!("VM {name:?} is already running"),
                    ));
                }
                Err(CrosError::unsupported(format!(
                    "cannot start VM {name:?}: this build of crosd cannot boot VMs yet"
                )))
            }
            ConciergeRequest::StopVm { name, .. }
            | ConciergeRequest::SuspendVm { name, .. }
            | ConciergeRequest::ResumeVm { name, .. } => {
                // With an empty table every VM is unknown; a known one would need the VMM.
                self.vm(&name)?;
                Err(CrosError::unsupported(format!(
                    "cannot control VM {name:?}: this build of crosd cannot manage VMs yet"
                )))
            }
            ConciergeRequest::StopAllVms {} => {
                if self.vms.is_empty() {
                    Ok(ConciergeReply::AllVmsStopped { count: 0 })
                } else {
                    Err(CrosError::unsupported(
                        "cannot stop VMs: this build of crosd cannot manage VMs yet",
                    ))
                }
            }
            ConciergeRequest::CreateDiskImage { name, .. }
            | ConciergeRequest::DestroyDiskImage { name, .. } => {
                check_name(&name)?;
                Err(CrosError::unsupported(format!(
                    "cannot manage the disk image of {name:?}: disk images are not implemented yet"
                )))
            }
            ConciergeRequest::ListVmDisks {} => Err(CrosError::unsupported(
                "cannot list VM disks: disk images are not implemented yet",
            )),
        }
    }

    fn vm(&self, name: &str) -> Result<&VmInfo, CrosError> {
        check_name(name)?;
        self.vms
            .get(name)
            .ok_or_else(|| CrosError::not_found(format!("no VM named {name:?}")))
    }
}

fn check_name(name: &str) -> Result<(), CrosError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(CrosError::invalid(format!(
            "bad VM name {name:?}: use 1-64 characters of [A-Za-z0-9._-]"
        )))
    }
}

impl Actor for Concierge {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Concierge {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(match msg.env.body {
            Body::Concierge(req) => match self.handle_request(req) {
                Ok(reply) => Body::ConciergeReply(reply),
                Err(e) => Body::Error(e),
            },
            other => not_mine("concierge", &other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusConfig;
    use cros_messages::ErrorKind;

    fn concierge() -> Concierge {
        let dir = std::env::temp_dir();
        Concierge::new(
            BusHandle::new(BusConfig::default()).unwrap(),
            HostConfig {
                state_dir: dir.clone(),
                run_dir: dir,
            },
        )
    }

    #[test]
    fn list_vms_is_empty_table() {
        assert_eq!(
            concierge().handle_request(ConciergeRequest::ListVms {}),
            Ok(ConciergeReply::Vms { vms: vec![] })
        );
    }

    #[test]
    fn unknown_vm_is_not_found_by_name() {
        let err = concierge()
            .handle_request(ConciergeRequest::GetVmInfo {
                name: "termina".into(),
                owner_id: String::new(),
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("termina"), "{err}");
        let err = concierge()
            .handle_request(ConciergeRequest::StopVm {
                name: "termina".into(),
                owner_id: String::new(),
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
    }

    #[test]
    fn start_vm_says_unsupported_and_checks_names_first() {
        let req: ConciergeRequest =
            serde_json::from_str(r#"{"StartVm":{"name":"termina"}}"#).unwrap();
        let err = concierge().handle_request(req).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.message.contains("cannot boot VMs"), "{err}");
        let req: ConciergeRequest = serde_json::from_str(r#"{"StartVm":{"name":"../x"}}"#).unwrap();
        assert_eq!(
            concierge().handle_request(req).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn stop_all_with_no_vms_stops_none() {
        assert_eq!(
            concierge().handle_request(ConciergeRequest::StopAllVms {}),
            Ok(ConciergeReply::AllVmsStopped { count: 0 })
        );
    }
}
