//! vmlog_forwarder: writes the logs vm_syslog ships from each VM (host port 9999).
//!
//! Logs exist only for VMs that connected; none can yet (guest bridges come later), so the table
//! of log files is empty. Records are accepted only from an address inside a VM.

use crate::bus::Deliver;
use crate::host::{HostConfig, not_mine};
use actix::{Actor, Context, Handler, MessageResult};
use cros_messages::addr::valid_name;
use cros_messages::vmlog::{VmlogReply, VmlogRequest};
use cros_messages::{Addr, Body, CrosError, ErrorKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct VmlogForwarder {
    #[allow(dead_code)] // Log files go under STATE/logs once VMs connect.
    config: HostConfig,
    /// Log file of each VM that has connected.
    logs: BTreeMap<String, PathBuf>,
}

impl VmlogForwarder {
    pub fn new(config: HostConfig) -> Self {
        Self {
            config,
            logs: BTreeMap::new(),
        }
    }

    fn handle_request(&mut self, from: &Addr, req: VmlogRequest) -> Result<VmlogReply, CrosError> {
        match req {
            VmlogRequest::GetLogPath { vm } => {
                if !valid_name(&vm) {
                    return Err(CrosError::invalid(format!(
                        "bad VM name {vm:?}: use 1-64 characters of [A-Za-z0-9._-]"
                    )));
                }
                let path = self
                    .logs
                    .get(&vm)
                    .ok_or_else(|| CrosError::not_found(format!("no log for VM {vm:?}")))?;
                Ok(VmlogReply::LogPath {
                    path: path.display().to_string(),
                })
            }
            VmlogRequest::Records { .. } => match &from.vm {
                None => Err(CrosError::new(
                    ErrorKind::PermissionDenied,
                    format!("log records are accepted only from a VM's vm_syslog, not from {from}"),
                )),
                Some(vm) => Err(CrosError::unsupported(format!(
                    "cannot write log records of VM {vm:?}: guest log forwarding is not implemented yet"
                ))),
            },
        }
    }
}

impl Actor for VmlogForwarder {
    type Context = Context<Self>;
}

impl Handler<Deliver> for VmlogForwarder {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let env = msg.env;
        MessageResult(match env.body {
            Body::VmlogForwarder(req) => match self.handle_request(&env.from, req) {
                Ok(reply) => Body::VmlogReply(reply),
                Err(e) => Body::Error(e),
            },
            other => not_mine("vmlog_forwarder", &other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder() -> VmlogForwarder {
        let dir = std::env::temp_dir();
        VmlogForwarder::new(HostConfig {
            state_dir: dir.clone(),
            run_dir: dir,
        })
    }

    #[test]
    fn unknown_vm_log_is_not_found() {
        let err = forwarder()
            .handle_request(
                &Addr::client(1),
                VmlogRequest::GetLogPath {
                    vm: "termina".into(),
                },
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("termina"));
    }

    #[test]
    fn records_only_from_a_vm() {
        let err = forwarder()
            .handle_request(&Addr::client(1), VmlogRequest::Records { records: vec![] })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        let err = forwarder()
            .handle_request(
                &Addr::in_vm("vm_syslog", "termina"),
                VmlogRequest::Records { records: vec![] },
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
    }
}
