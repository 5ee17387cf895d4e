//! vmlog_forwarder: writes the logs vm_syslog ships from each VM (host port 9999).
//!
//! Records arrive through concierge's guest bridge, which addresses them from `vm_syslog@<vm>`;
//! they are appended to STATE/logs/<vm>.log, rotated to <vm>.log.1 before a batch would take
//! it past [`MAX_LOG_BYTES`] (the same [`RotatingLog`] keeps the guest console bounded).
//! Records are accepted only from an address inside a VM.

use crate::bus::Deliver;
use crate::bus::not_mine;
use crate::config::HostConfig;
use actix::{Actor, Context, Handler, MessageResult};
use cros_hypervisor::console::RotatingLog;
use cros_messages::addr::valid_name;
use cros_messages::vmlog::{LogRecord, VmlogReply, VmlogRequest};
use cros_messages::{Addr, Body, CrosError, ErrorKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A VM's log is rotated once it grows past this.
pub const MAX_LOG_BYTES: u64 = 4 << 20;

pub struct VmlogForwarder {
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
            VmlogRequest::Records { records } => match &from.vm {
                Some(vm) if from.actor == "vm_syslog" && valid_name(vm) => {
                    let count = records.len() as u32;
                    self.write(vm, &records)?;
                    Ok(VmlogReply::Written { count })
                }
                _ => Err(CrosError::new(
                    ErrorKind::PermissionDenied,
                    format!("log records are accepted only from a VM's vm_syslog, not from {from}"),
                )),
            },
        }
    }
}

impl VmlogForwarder {
    fn write(&mut self, vm: &str, records: &[LogRecord]) -> Result<(), CrosError> {
        let dir = self.config.state_dir.join("logs");
        let path = dir.join(format!("{vm}.log"));
        let io = |e: std::io::Error| {
            CrosError::internal(format!("cannot write {}: {e}", path.display()))
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut text = String::new();
        for r in records {
            // Guest text is untrusted: one record stays one line.
            let message: String = r
                .message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let source: String = r.source.chars().filter(|c| !c.is_control()).collect();
            text.push_str(&format!(
                "{}.{:09} {} {}: {}\n",
                r.time_ns / 1_000_000_000,
                r.time_ns % 1_000_000_000,
                r.severity,
                source,
                message
            ));
        }
        RotatingLog::open(&path, MAX_LOG_BYTES, 0o644)
            .and_then(|mut log| log.append(text.as_bytes()))
            .map_err(io)?;
        self.logs.insert(vm.to_string(), path.clone());
        Ok(())
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
        VmlogForwarder::new(HostConfig::new(dir.clone(), dir))
    }

    #[test]
    fn records_are_written_one_line_each_and_found_by_vm() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = VmlogForwarder::new(HostConfig::new(dir.path(), dir.path().join("run")));
        let rec = |m: &str| LogRecord {
            time_ns: 1_500_000_000,
            severity: cros_messages::vmlog::Severity::Info,
            source: "kernel".into(),
            message: m.into(),
        };
        let from = Addr::in_vm("vm_syslog", "termina");
        let reply = f.handle_request(
            &from,
            VmlogRequest::Records {
                records: vec![rec("hello"), rec("two\nlines")],
            },
        );
        assert_eq!(reply, Ok(VmlogReply::Written { count: 2 }));
        let Ok(VmlogReply::LogPath { path }) = f.handle_request(
            &Addr::client(1),
            VmlogRequest::GetLogPath {
                vm: "termina".into(),
            },
        ) else {
            panic!("log path")
        };
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            text,
            "1.500000000 Info kernel: hello\n1.500000000 Info kernel: two lines\n"
        );
    }

    #[test]
    fn a_vm_log_is_rotated_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = VmlogForwarder::new(HostConfig::new(dir.path(), dir.path().join("run")));
        let from = Addr::in_vm("vm_syslog", "termina");
        let records = vec![LogRecord {
            time_ns: 1,
            severity: cros_messages::vmlog::Severity::Info,
            source: "kernel".into(),
            message: "x".repeat(64 << 10),
        }];
        let log = dir.path().join("logs/termina.log");
        for _ in 0..100 {
            f.handle_request(
                &from,
                VmlogRequest::Records {
                    records: records.clone(),
                },
            )
            .unwrap();
            assert!(std::fs::metadata(&log).unwrap().len() <= MAX_LOG_BYTES);
        }
        let rotated = std::fs::metadata(dir.path().join("logs/termina.log.1")).unwrap();
        assert!(rotated.len() > MAX_LOG_BYTES / 2 && rotated.len() <= MAX_LOG_BYTES);
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
                &Addr::in_vm("maitred", "termina"),
                VmlogRequest::Records { records: vec![] },
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
    }
}
