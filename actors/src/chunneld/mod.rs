//! chunneld: a container's listening TCP ports on the host's localhost, tunnelled over vsock
//! (issue 14 item 4), so forwarding works with or without IP routing to the VM.
//!
//! [`forwarder`] is the host half: one listener per forwarded port on 127.0.0.1 and [::1],
//! each accepted connection handed to a [`forwarder::Dial`] that opens a stream to the
//! container's port; [`dial`] is that Dial for a real VM (hybrid vsock to garcon, whose side
//! is `cros_guest::garcon::forward`).
//!
//! The actor ([`Chunneld`]) keeps the table the forwards need. cicerone, which knows the VMs
//! and their containers, tells it what runs (`Notify*`: the VM's owner and vsock socket, each
//! container's garcon port) and relays garcon's ListeningPorts; only cicerone may. Clients
//! (`vmc port-forward`) list, add and remove the forwards of the VMs they own, checked against
//! the uid the kernel reported for their connection, as cicerone and concierge check it.
//!
//! It runs on an arbiter of its own: the byte pumps of forwarded connections are the only bulk
//! I/O a host actor does, and there they never delay a control request on crosd's main thread.

pub mod dial;
pub mod forwarder;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use actix::{Actor, Context, Handler, MessageResult};
use cros_messages::chunneld::{ChunneldReply, ChunneldRequest, ForwardState, PortForward};
use cros_messages::{ActorKind, Addr, Body, CrosError, ErrorKind};

use crate::bus::{BusHandle, Deliver, not_mine};
use crate::cicerone::{check_name, may_manage, no_such_vm};
use crate::concierge::owner::is_admin;
use forwarder::{Container, ForwardInfo, Forwards};

/// The most ports of one container forwarded automatically. The guest is untrusted: a
/// container listening on thousands of ports must not make crosd hold thousands of host
/// sockets. Manual forwards do not count (a user asked for each).
pub const MAX_AUTO_FORWARDS: usize = 64;

/// Ports below this are privileged on the host. Crostini's chunneld runs unprivileged and
/// cannot bind them; crosd may run as root, so it leaves them alone itself: a container's
/// sshd or DNS server never takes the host's 127.0.0.1:22 or :53. Only an administrator may
/// forward onto one by hand.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// A running VM, as cicerone described it.
struct Vm {
    owner_uid: u32,
    vsock_socket: PathBuf,
    /// Containers whose garcon is connected, with the guest vsock port garcon serves on.
    containers: BTreeMap<String, u32>,
}

#[derive(Default)]
struct State {
    vms: BTreeMap<String, Vm>,
    forwards: Forwards,
}

/// What outlives one instance of the actor (a restart after a panic): the table and the open
/// forwards, whose listeners are tasks of the arbiter, not of the actor. Without it a restart
/// would close every forward until each container's port list next changed.
#[derive(Clone, Default)]
pub struct SharedState(Arc<Mutex<State>>);

pub struct Chunneld {
    bus: BusHandle,
    shared: SharedState,
}

/// Why a client's port-forward request is refused before anything is bound.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("port 0 of container {container:?} cannot be forwarded: name a port 1-65535")]
    PortZero { container: String },
    #[error("container {container:?} of VM {vm:?} is not running (no garcon has reported from it)")]
    NoGarcon { vm: String, container: String },
    #[error(
        "host port {host_port} is privileged: only an administrator may forward onto a port \
         below {FIRST_UNPRIVILEGED_PORT}"
    )]
    Privileged { host_port: u16 },
    #[error("port {port} of container {container:?} in VM {vm:?} is not forwarded")]
    NotForwarded {
        vm: String,
        container: String,
        port: u16,
    },
    #[error("cannot forward port {port} of container {container:?}: host port {reason}")]
    Taken {
        container: String,
        port: u16,
        reason: String,
    },
}

impl From<ForwardError> for CrosError {
    fn from(e: ForwardError) -> Self {
        let kind = match &e {
            ForwardError::PortZero { .. } => ErrorKind::InvalidArgument,
            ForwardError::NoGarcon { .. } | ForwardError::NotForwarded { .. } => {
                ErrorKind::NotFound
            }
            ForwardError::Privileged { .. } => ErrorKind::PermissionDenied,
            ForwardError::Taken { .. } => ErrorKind::Unavailable,
        };
        CrosError::new(kind, e.to_string())
    }
}

fn cicerone() -> Addr {
    Addr::host(ActorKind::Cicerone.name())
}

fn describe(info: ForwardInfo) -> PortForward {
    let addrs = |a: Vec<SocketAddr>| a.iter().map(SocketAddr::to_string).collect();
    PortForward {
        vm: info.container.vm,
        container: info.container.container,
        container_port: info.container_port,
        host_port: info.host_port,
        state: match info.state {
            forwarder::ForwardState::Listening(a) => ForwardState::Listening { addrs: addrs(a) },
            forwarder::ForwardState::Taken(reason) => ForwardState::Taken { reason },
        },
        manual: info.manual,
    }
}

/// The ports of garcon's list that are forwarded automatically: unprivileged ones, each once,
/// at most [`MAX_AUTO_FORWARDS`].
fn auto_ports(container: &Container, ports: &[u16]) -> Vec<u16> {
    let mut wanted: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| p >= FIRST_UNPRIVILEGED_PORT)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.len() > MAX_AUTO_FORWARDS {
        tracing::warn!(
            vm = %container.vm,
            container = %container.container,
            listening = wanted.len(),
            "forwarding only the first {MAX_AUTO_FORWARDS} listening ports"
        );
        wanted.truncate(MAX_AUTO_FORWARDS);
    }
    wanted
}

impl Chunneld {
    pub fn new(bus: BusHandle, shared: SharedState) -> Self {
        Self { bus, shared }
    }

    fn handle_request(
        &mut self,
        from: &Addr,
        req: ChunneldRequest,
    ) -> Result<ChunneldReply, CrosError> {
        use ChunneldRequest as R;
        let mut state = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        match req {
            R::NotifyVmStarted {
                vm,
                owner_uid,
                vsock_socket,
            } => {
                only_cicerone(from, "NotifyVmStarted")?;
                check_name("VM", &vm)?;
                state.forwards.forget_vm(&vm);
                state.vms.insert(
                    vm,
                    Vm {
                        owner_uid,
                        vsock_socket: vsock_socket.into(),
                        containers: BTreeMap::new(),
                    },
                );
                Ok(ChunneldReply::Ack {})
            }
            R::NotifyVmStopped { vm } => {
                only_cicerone(from, "NotifyVmStopped")?;
                state.forwards.forget_vm(&vm);
                state.vms.remove(&vm);
                Ok(ChunneldReply::Ack {})
            }
            R::NotifyContainerReady {
                vm,
                container,
                garcon_port,
            } => {
                only_cicerone(from, "NotifyContainerReady")?;
                check_name("container", &container)?;
                let entry = state.vms.get_mut(&vm).ok_or_else(|| no_such_vm(&vm))?;
                // A garcon that came back (the container restarted) may serve on another port:
                // the old forwards dial the old one, so they go; garcon's first report opens
                // the automatic ones again.
                let key = Container {
                    vm: vm.clone(),
                    container: container.clone(),
                };
                if entry.containers.insert(container, garcon_port) != Some(garcon_port) {
                    state.forwards.forget(&key);
                }
                Ok(ChunneldReply::Ack {})
            }
            R::NotifyContainerStopped { vm, container } => {
                only_cicerone(from, "NotifyContainerStopped")?;
                if let Some(entry) = state.vms.get_mut(&vm) {
                    entry.containers.remove(&container);
                }
                state.forwards.forget(&Container { vm, container });
                Ok(ChunneldReply::Ack {})
            }
            R::UpdateListeningPorts {
                vm,
                container,
                ports,
            } => {
                only_cicerone(from, "UpdateListeningPorts")?;
                let (key, dial) = dial_for(state, &vm, &container)?;
                let wanted = auto_ports(&key, &ports);
                state.forwards.sync(&key, &wanted, &dial);
                Ok(ChunneldReply::Ack {})
            }
            R::ListForwards { vm } => {
                if !vm.is_empty() {
                    self.owned(state, from, &vm)?;
                }
                let forwards = state
                    .forwards
                    .list()
                    .into_iter()
                    .filter(|f| {
                        (vm.is_empty() || f.container.vm == vm)
                            && self.owned(state, from, &f.container.vm).is_ok()
                    })
                    .map(describe)
                    .collect();
                Ok(ChunneldReply::Forwards { forwards })
            }
            R::AddForward {
                vm,
                container,
                port,
                host_port,
            } => {
                self.owned(state, from, &vm)?;
                check_name("container", &container)?;
                if port == 0 {
                    return Err(ForwardError::PortZero { container }.into());
                }
                let (key, dial) = dial_for(state, &vm, &container)?;
                let host_port = if host_port == 0 { port } else { host_port };
                if host_port < FIRST_UNPRIVILEGED_PORT && !self.is_admin(from) {
                    return Err(ForwardError::Privileged { host_port }.into());
                }
                let info = state.forwards.add(&key, port, host_port, &dial);
                if let forwarder::ForwardState::Taken(reason) = info.state {
                    // A manual forward that cannot listen is a failed request, not an entry.
                    state.forwards.remove(&key, port);
                    return Err(ForwardError::Taken {
                        container,
                        port,
                        reason,
                    }
                    .into());
                }
                Ok(ChunneldReply::Added {
                    forward: describe(info),
                })
            }
            R::RemoveForward {
                vm,
                container,
                port,
            } => {
                self.owned(state, from, &vm)?;
                check_name("container", &container)?;
                let key = Container {
                    vm: vm.clone(),
                    container: container.clone(),
                };
                match state.forwards.remove(&key, port) {
                    Some(info) => Ok(ChunneldReply::Removed {
                        forward: describe(info),
                    }),
                    None => Err(ForwardError::NotForwarded {
                        vm,
                        container,
                        port,
                    }
                    .into()),
                }
            }
        }
    }

    /// The VM runs and `from` may manage it; what a user may not manage answers as if it did
    /// not exist, as cicerone does.
    fn owned(&self, state: &State, from: &Addr, vm: &str) -> Result<(), CrosError> {
        check_name("VM", vm)?;
        match state.vms.get(vm) {
            Some(entry) if may_manage(&self.bus, from, entry.owner_uid) => Ok(()),
            _ => Err(no_such_vm(vm)),
        }
    }

    /// crosd's own actors and administrators may bind privileged host ports.
    fn is_admin(&self, from: &Addr) -> bool {
        !from.is_client()
            || self
                .bus
                .clients()
                .peer(from)
                .is_some_and(|p| is_admin(p.uid))
    }
}

/// The forward key and the dial to a container whose garcon is connected.
fn dial_for(
    state: &State,
    vm: &str,
    container: &str,
) -> Result<(Container, forwarder::Dial), CrosError> {
    let entry = state.vms.get(vm).ok_or_else(|| no_such_vm(vm))?;
    let Some(&garcon_port) = entry.containers.get(container) else {
        return Err(ForwardError::NoGarcon {
            vm: vm.to_string(),
            container: container.to_string(),
        }
        .into());
    };
    let dial = dial::garcon_dial(
        entry.vsock_socket.clone(),
        garcon_port,
        Addr::in_container("garcon", vm, container),
    );
    let key = Container {
        vm: vm.to_string(),
        container: container.to_string(),
    };
    Ok((key, dial))
}

/// Only cicerone says what runs.
fn only_cicerone(from: &Addr, what: &str) -> Result<(), CrosError> {
    if *from == cicerone() {
        Ok(())
    } else {
        Err(CrosError::new(
            ErrorKind::PermissionDenied,
            format!("{what} is accepted only from cicerone, not from {from}"),
        ))
    }
}

impl Actor for Chunneld {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Chunneld {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let env = msg.env;
        MessageResult(match env.body {
            Body::Chunneld(req) => match self.handle_request(&env.from, req) {
                Ok(r) => Body::ChunneldReply(r),
                Err(e) => Body::Error(e),
            },
            other => not_mine("chunneld", &other),
        })
    }
}

#[cfg(test)]
mod tests;
