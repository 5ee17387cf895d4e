//! seneschal: host folders shared into VMs over 9P (REFERENCE.md, "Seneschal").
//!
//! One 9P2000.L server per VM, in a process of its own (`crosd-9s`, see [`nine_s`]): the `p9`
//! crate's server behind a guard ([`filter`]), confined to the VM's shares in a mount namespace
//! of its own, as the VM's owner (an unprivileged stand-in for root, see [`server_ids`]), under
//! seccomp. concierge starts it before the VMM (StartServer) and stops it with the VM
//! (StopServer); it listens on `<vm run dir>/vsock.sock_<port>`, which only that VM's hybrid
//! vsock device connects to (for a guest dialing host port `port`), so the socket's place is
//! the VM's identity; the server also serves only peers of crosd's own uid.
//!
//! SharePath comes from a user (`vmc share`) with the folder as an O_PATH descriptor the client
//! opened; seneschal mounts that descriptor's folder into the server's tree ([`process`]), so
//! crosd never opens a user's path with its own privileges. Shares are kept per VM
//! ([`store`]) and shared again at every start, opened then as the owner.

pub mod filter;
pub mod nine_s;
mod process;
mod store;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use actix::{Actor, Context, Handler, MessageResult};
use cros_messages::addr::valid_name;
use cros_messages::seneschal::{
    IdMapEntry, SeneschalReply, SeneschalRequest, ServerInfo, ShareInfo,
};
use cros_messages::{Addr, Body, CrosError, Envelope, ErrorKind, ports};

use crate::bus::{BusHandle, Deliver, not_mine};
use crate::config::HostConfig;
use process::{Launch, ServerProcess};

/// The guest uid that owns the shared files (the first user of termina and its containers).
pub const GUEST_USER: u32 = 1000;
/// Who serves the shares of a root-owned VM: never root, so `nobody`.
pub const NOBODY: u32 = 65534;
/// The server program, beside crosd.
pub const SERVER_BIN: &str = "crosd-9s";
/// Shares one VM may have.
const MAX_SHARES: usize = 64;
/// Id map entries honoured (each maps `count` ids, at most this many each).
const MAX_MAPPED: u32 = 1024;

struct Server {
    handle: u64,
    vm: String,
    port: u32,
    accept_cid: u32,
    /// The VM's owner: who may share into it.
    owner: u32,
    uid: u32,
    process: ServerProcess,
    shares: Vec<ShareInfo>,
    store: PathBuf,
}

impl Server {
    fn info(&self) -> ServerInfo {
        ServerInfo {
            handle: self.handle,
            port: self.port,
            accept_cid: self.accept_cid,
            vm: self.vm.clone(),
            uid: self.uid,
            pid: self.process.pid(),
            shares: self.shares.clone(),
        }
    }
}

pub struct Seneschal {
    bus: BusHandle,
    config: HostConfig,
    /// Running 9P servers by handle.
    servers: BTreeMap<u64, Server>,
    next_handle: u64,
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
struct Caller {
    uid: u32,
    admin: bool,
    /// A host actor inside crosd (concierge).
    daemon: bool,
}

impl Caller {
    fn may_use(&self, owner: u32) -> bool {
        self.admin || self.uid == owner
    }
}

/// The uid and gid a VM's server runs as: its owner, or `nobody` for root's VMs.
pub fn server_ids(owner: u32) -> (u32, u32) {
    if owner == 0 {
        return (NOBODY, NOBODY);
    }
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw())
        .filter(|&g| g != 0)
        .unwrap_or(owner);
    (owner, gid)
}

/// A StartServer id map as host → guest pairs; `server_id` → [`GUEST_USER`] when none is given.
fn id_pairs(map: &[IdMapEntry], server_id: u32) -> Vec<(u32, u32)> {
    if map.is_empty() {
        return vec![(server_id, GUEST_USER)];
    }
    map.iter()
        .flat_map(|e| {
            (0..e.count.min(MAX_MAPPED))
                .filter_map(move |i| Some((e.outside.checked_add(i)?, e.inside.checked_add(i)?)))
        })
        .collect()
}

impl Seneschal {
    pub fn new(bus: BusHandle, config: HostConfig) -> Self {
        // Servers of a crosd that died, or of a seneschal that panicked, left mounts behind.
        process::teardown_all(&servers_dir(&config));
        Self {
            bus,
            config,
            servers: BTreeMap::new(),
            next_handle: 1,
        }
    }

    fn caller(&self, from: &Addr) -> Result<Caller, CrosError> {
        if from.vm.is_some() {
            return Err(CrosError::new(
                ErrorKind::PermissionDenied,
                format!("{from} may not ask seneschal: guests cannot share host folders"),
            ));
        }
        let me = nix::unistd::geteuid().as_raw();
        if !from.is_client() {
            return Ok(Caller {
                uid: me,
                admin: true,
                daemon: true,
            });
        }
        let peer = self.bus.clients().peer(from).ok_or_else(|| {
            CrosError::new(
                ErrorKind::PermissionDenied,
                format!("{from} is no connection crosd knows the user of"),
            )
        })?;
        Ok(Caller {
            uid: peer.uid,
            admin: peer.uid == 0 || peer.uid == me,
            daemon: false,
        })
    }

    fn handle_request(
        &mut self,
        req: SeneschalRequest,
        caller: Caller,
        files: Vec<OwnedFd>,
    ) -> Result<SeneschalReply, CrosError> {
        match req {
            SeneschalRequest::ListServers {} => Ok(SeneschalReply::Servers {
                servers: self
                    .servers
                    .values()
                    .filter(|s| caller.may_use(s.owner))
                    .map(Server::info)
                    .collect(),
            }),
            SeneschalRequest::StartServer {
                port,
                accept_cid,
                uid_map,
                gid_map,
                vm,
                owner_uid,
                run_dir,
            } => {
                if !caller.daemon {
                    return Err(CrosError::new(
                        ErrorKind::PermissionDenied,
                        "StartServer is concierge's: a VM's 9P server starts with the VM",
                    ));
                }
                self.start_server(StartArgs {
                    port,
                    accept_cid,
                    uid_map,
                    gid_map,
                    vm,
                    owner: owner_uid,
                    run_dir: PathBuf::from(run_dir),
                })
            }
            SeneschalRequest::StopServer { handle } => {
                if !caller.daemon {
                    return Err(CrosError::new(
                        ErrorKind::PermissionDenied,
                        "StopServer is concierge's: a VM's 9P server stops with the VM",
                    ));
                }
                let server = self
                    .servers
                    .remove(&handle)
                    .ok_or_else(|| no_handle(handle))?;
                tracing::info!(vm = %server.vm, handle, "9P server stopped");
                server.process.stop();
                Ok(SeneschalReply::ServerStopped { handle })
            }
            SeneschalRequest::SharePath { vm, path, writable } => {
                self.share(caller, &vm, &path, writable, files)
            }
            SeneschalRequest::UnsharePath { vm, path } => self.unshare(caller, &vm, &path),
        }
    }

    fn start_server(&mut self, args: StartArgs) -> Result<SeneschalReply, CrosError> {
        if !valid_name(&args.vm) {
            return Err(CrosError::invalid(format!(
                "StartServer: bad VM name {:?}",
                args.vm
            )));
        }
        if !args.run_dir.is_absolute() || !args.run_dir.is_dir() {
            return Err(CrosError::invalid(format!(
                "StartServer: the VM's runtime directory {:?} is not a directory",
                args.run_dir
            )));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(CrosError::unsupported(
                "sharing folders needs crosd to run as root (it mounts the shared folders into \
                 the 9P server's own namespace and starts the server as the VM's owner)",
            ));
        }
        // One server per VM: a server left by an earlier boot of it goes.
        let stale: Vec<u64> = self
            .servers
            .values()
            .filter(|s| s.vm == args.vm)
            .map(|s| s.handle)
            .collect();
        for h in stale {
            if let Some(s) = self.servers.remove(&h) {
                s.process.stop();
            }
        }
        let port = match args.port {
            0 => (ports::SENESCHAL_BASE..)
                .find(|p| self.servers.values().all(|s| s.port != *p))
                .unwrap_or(ports::SENESCHAL_BASE),
            p if p >= ports::SENESCHAL_BASE => p,
            p => {
                return Err(CrosError::invalid(format!(
                    "StartServer: port {p} is below seneschal's ports ({})",
                    ports::SENESCHAL_BASE
                )));
            }
        };
        let handle = self.next_handle;
        self.next_handle += 1;
        let (uid, gid) = server_ids(args.owner);
        let logs = self.config.state_dir.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let launch = Launch {
            bin: crate::concierge::bin_dir(&self.config.hypervisor).join(SERVER_BIN),
            dir: servers_dir(&self.config).join(handle.to_string()),
            socket: args.run_dir.join(format!("vsock.sock_{port}")),
            uid,
            gid,
            uid_map: id_pairs(&args.uid_map, uid),
            gid_map: id_pairs(&args.gid_map, gid),
            log: logs.join(format!("{}.9s.log", args.vm)),
        };
        let process = ServerProcess::start(&launch)?;
        tracing::info!(vm = %args.vm, handle, port, uid, pid = process.pid(), "9P server started");
        let store = store::path(&self.config.state_dir, &args.vm);
        let mut server = Server {
            handle,
            vm: args.vm,
            port,
            accept_cid: args.accept_cid,
            owner: args.owner,
            uid,
            process,
            shares: Vec::new(),
            store,
        };
        // The shares of earlier boots, opened again as the owner.
        for kept in store::load(&server.store) {
            let opened = store::open_dir_as(Path::new(&kept.path), args.owner, gid)
                .map_err(|e| CrosError::internal(format!("open {}: {e}", kept.path)))
                .and_then(|fd| server.process.share(&kept.name, &fd, kept.writable));
            match opened {
                Ok(()) => server.shares.push(kept),
                Err(e) => {
                    tracing::warn!(vm = %server.vm, path = %kept.path, error = %e, "a kept share cannot be shared again")
                }
            }
        }
        self.servers.insert(handle, server);
        Ok(SeneschalReply::ServerStarted { handle, port })
    }

    fn server_of(&mut self, caller: &Caller, vm: &str) -> Result<&mut Server, CrosError> {
        self.servers
            .values_mut()
            .find(|s| s.vm == vm && caller.may_use(s.owner))
            .ok_or_else(|| {
                CrosError::not_found(format!(
                    "VM {vm:?} is not running (or has no 9P server): start it, then share"
                ))
            })
    }

    fn share(
        &mut self,
        caller: Caller,
        vm: &str,
        path: &str,
        writable: bool,
        mut files: Vec<OwnedFd>,
    ) -> Result<SeneschalReply, CrosError> {
        if !Path::new(path).is_absolute() || path.len() > 4096 || path.contains('\0') {
            return Err(CrosError::invalid(format!(
                "share {path:?}: give the folder's absolute path"
            )));
        }
        if files.len() > 1 {
            return Err(CrosError::invalid(format!(
                "share {path:?}: pass one folder descriptor, not {}",
                files.len()
            )));
        }
        let server = self.server_of(&caller, vm)?;
        if let Some(s) = server.shares.iter().find(|s| s.path == path) {
            if s.writable != writable {
                return Err(CrosError::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "{path} is already shared with {vm} as {} ({}): unshare it first",
                        s.name,
                        if s.writable { "writable" } else { "read-only" }
                    ),
                ));
            }
            return Ok(SeneschalReply::PathShared {
                path: s.name.clone(),
            });
        }
        if server.shares.len() >= MAX_SHARES {
            return Err(CrosError::new(
                ErrorKind::FailedPrecondition,
                format!("VM {vm:?} already has {MAX_SHARES} shares"),
            ));
        }
        let folder = match files.pop() {
            Some(fd) => fd,
            // crosmsg and other administrators' tools may name the path alone: it is opened
            // with that user's access, like a client would.
            None if caller.admin => store::open_dir_as(Path::new(path), caller.uid, caller.uid)
                .map_err(|e| CrosError::not_found(format!("open {path}: {e}")))?,
            None => {
                return Err(CrosError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "share {path:?}: pass the folder's descriptor with the request (vmc share does)"
                    ),
                ));
            }
        };
        check_folder(&folder, path)?;
        let taken: Vec<&str> = server.shares.iter().map(|s| s.name.as_str()).collect();
        let name = store::share_name(path, &taken);
        server.process.share(&name, &folder, writable)?;
        server.shares.push(ShareInfo {
            name: name.clone(),
            path: path.to_string(),
            writable,
        });
        if let Err(e) = store::save(&server.store, &server.shares) {
            tracing::warn!(vm, error = %e, "cannot keep the VM's shares");
        }
        tracing::info!(vm, path, name = %name, writable, "folder shared");
        Ok(SeneschalReply::PathShared { path: name })
    }

    fn unshare(
        &mut self,
        caller: Caller,
        vm: &str,
        path: &str,
    ) -> Result<SeneschalReply, CrosError> {
        let server = self.server_of(&caller, vm)?;
        let i = server
            .shares
            .iter()
            .position(|s| s.path == path || s.name == path)
            .ok_or_else(|| CrosError::not_found(format!("{path:?} is not shared with {vm}")))?;
        let name = server.shares[i].name.clone();
        let result = server.process.unshare(&name);
        server.shares.remove(i);
        if let Err(e) = store::save(&server.store, &server.shares) {
            tracing::warn!(vm, error = %e, "cannot keep the VM's shares");
        }
        result?;
        tracing::info!(vm, name = %name, "folder unshared");
        Ok(SeneschalReply::PathUnshared { path: name })
    }
}

struct StartArgs {
    port: u32,
    accept_cid: u32,
    uid_map: Vec<IdMapEntry>,
    gid_map: Vec<IdMapEntry>,
    vm: String,
    owner: u32,
    run_dir: PathBuf,
}

fn servers_dir(config: &HostConfig) -> PathBuf {
    config.run_dir.join("seneschal")
}

fn no_handle(handle: u64) -> CrosError {
    CrosError::not_found(format!("no 9P server with handle {handle}"))
}

/// The passed descriptor must be a directory.
fn check_folder(fd: &OwnedFd, path: &str) -> Result<(), CrosError> {
    let meta = std::fs::File::from(
        fd.try_clone()
            .map_err(|e| CrosError::internal(format!("dup the folder descriptor: {e}")))?,
    )
    .metadata()
    .map_err(|e| CrosError::invalid(format!("share {path:?}: {e}")))?;
    if !meta.is_dir() || meta.file_type().is_symlink() {
        return Err(CrosError::invalid(format!(
            "share {path:?}: not a directory (share folders, not files)"
        )));
    }
    Ok(())
}

impl Actor for Seneschal {
    type Context = Context<Self>;

    /// crosd is going away (or this instance is): every server stops and its mounts go.
    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.servers.clear();
    }
}

impl Handler<Deliver> for Seneschal {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let Envelope { id, from, body, .. } = msg.env;
        MessageResult(match body {
            Body::Seneschal(req) => {
                let files = if from.is_client() {
                    self.bus.clients().take_files(&from, id)
                } else {
                    Vec::new()
                };
                match self
                    .caller(&from)
                    .and_then(|c| self.handle_request(req, c, files))
                {
                    Ok(reply) => Body::SeneschalReply(reply),
                    Err(e) => Body::Error(e),
                }
            }
            other => not_mine("seneschal", &other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusConfig;

    fn seneschal(dir: &Path) -> Seneschal {
        Seneschal::new(
            BusHandle::new(BusConfig::default()).unwrap(),
            HostConfig::new(dir, dir.join("run")),
        )
    }

    fn daemon() -> Caller {
        Caller {
            uid: 0,
            admin: true,
            daemon: true,
        }
    }

    #[test]
    fn lists_no_servers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            seneschal(dir.path()).handle_request(
                SeneschalRequest::ListServers {},
                daemon(),
                vec![]
            ),
            Ok(SeneschalReply::Servers { servers: vec![] })
        );
    }

    #[test]
    fn only_the_daemon_starts_servers_and_unknown_vms_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = seneschal(dir.path());
        let user = Caller {
            uid: 4321,
            admin: false,
            daemon: false,
        };
        let err = s
            .handle_request(
                SeneschalRequest::StartServer {
                    port: 0,
                    accept_cid: 3,
                    uid_map: vec![],
                    gid_map: vec![],
                    vm: "termina".into(),
                    owner_uid: 4321,
                    run_dir: "/tmp".into(),
                },
                user,
                vec![],
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        let err = s
            .handle_request(
                SeneschalRequest::SharePath {
                    vm: "termina".into(),
                    path: "/home/u/Downloads".into(),
                    writable: false,
                },
                user,
                vec![],
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("termina"), "{err}");
        let err = s
            .handle_request(
                SeneschalRequest::SharePath {
                    vm: "termina".into(),
                    path: "relative".into(),
                    writable: false,
                },
                user,
                vec![],
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
    }

    #[test]
    fn root_vms_are_served_by_nobody_and_maps_are_bounded() {
        assert_eq!(server_ids(0), (NOBODY, NOBODY));
        assert_eq!(server_ids(4321).0, 4321);
        assert_eq!(id_pairs(&[], 4321), vec![(4321, GUEST_USER)]);
        let big = IdMapEntry {
            inside: 0,
            outside: u32::MAX - 1,
            count: u32::MAX,
        };
        assert_eq!(id_pairs(&[big], 1).len(), 2, "no overflow");
        let many = IdMapEntry {
            inside: 0,
            outside: 100_000,
            count: u32::MAX,
        };
        assert_eq!(id_pairs(&[many], 1).len(), MAX_MAPPED as usize);
    }
}
