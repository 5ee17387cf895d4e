//! seneschal: 9P file-sharing servers, one per VM.
//!
//! The server table is real and starts empty; serving 9P comes with the file-sharing issue, so
//! StartServer answers `Unsupported` and requests naming a handle answer `NotFound`.

use crate::bus::Deliver;
use crate::bus::not_mine;
use actix::{Actor, Context, Handler, MessageResult};
use cros_messages::seneschal::{SeneschalReply, SeneschalRequest, ServerInfo};
use cros_messages::{Body, CrosError};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Seneschal {
    /// Running 9P servers by handle.
    servers: BTreeMap<u64, ServerInfo>,
}

impl Seneschal {
    pub fn new() -> Self {
        Self::default()
    }

    fn handle_request(&mut self, req: SeneschalRequest) -> Result<SeneschalReply, CrosError> {
        match req {
            SeneschalRequest::ListServers {} => Ok(SeneschalReply::Servers {
                servers: self.servers.values().cloned().collect(),
            }),
            SeneschalRequest::StartServer { accept_cid, .. } => {
                Err(CrosError::unsupported(format!(
                    "cannot start a 9P server for cid {accept_cid}: this build of crosd does not serve 9P yet"
                )))
            }
            SeneschalRequest::StopServer { handle }
            | SeneschalRequest::SharePath { handle, .. }
            | SeneschalRequest::UnsharePath { handle, .. } => {
                self.server(handle)?;
                Err(CrosError::unsupported("9P servers are not implemented yet"))
            }
        }
    }

    fn server(&self, handle: u64) -> Result<&ServerInfo, CrosError> {
        self.servers
            .get(&handle)
            .ok_or_else(|| CrosError::not_found(format!("no 9P server with handle {handle}")))
    }
}

impl Actor for Seneschal {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Seneschal {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(match msg.env.body {
            Body::Seneschal(req) => match self.handle_request(req) {
                Ok(reply) => Body::SeneschalReply(reply),
                Err(e) => Body::Error(e),
            },
            other => not_mine("seneschal", &other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::ErrorKind;

    #[test]
    fn lists_no_servers() {
        assert_eq!(
            Seneschal::new().handle_request(SeneschalRequest::ListServers {}),
            Ok(SeneschalReply::Servers { servers: vec![] })
        );
    }

    #[test]
    fn unknown_handle_is_not_found_and_start_is_unsupported() {
        let mut s = Seneschal::new();
        let err = s
            .handle_request(SeneschalRequest::SharePath {
                handle: 7,
                path: "Downloads".into(),
                writable: false,
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains('7'));
        let err = s
            .handle_request(SeneschalRequest::StartServer {
                port: 0,
                accept_cid: 3,
                uid_map: vec![],
                gid_map: vec![],
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
    }
}
