//! guest → host: the listeners on the host ports a VM's guest actors dial (VmReady on 7777,
//! vm_syslog on 9999, tremplin on 7778, garcon on 8889).
//!
//! Every connection is served on a task of its own, so a guest that connects and stays silent
//! holds up nothing but itself: its Hello must come within [`Limits::hello`], a connection that
//! sends nothing for [`Limits::idle`] is closed (the guest's actors reconnect when they have
//! something to say), and a VM has at most [`Limits::connections`] connections open on each port
//! (more are closed at once).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{handshake, read_message, write_message};
use cros_messages::{Addr, Body, BodyKind, CrosError, Envelope, ErrorKind, FrameError};
use tokio::net::{UnixListener, UnixStream};

use crate::bus::BusHandle;

/// How long a guest has to introduce itself after connecting.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one VM may hold open on one host port.
pub const MAX_CONNECTIONS_PER_PORT: usize = 16;
/// How long a guest connection may stay silent.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What one guest may hold of the host's resources on a port.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub hello: Duration,
    pub idle: Duration,
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            hello: HELLO_TIMEOUT,
            idle: IDLE_TIMEOUT,
            connections: MAX_CONNECTIONS_PER_PORT,
        }
    }
}

/// A host port of a VM and what may come in on it.
#[derive(Clone, Copy)]
pub struct GuestPort {
    pub port: u32,
    /// The one guest actor that dials this port (`maitred`, `vm_syslog`).
    pub guest_actor: &'static str,
    /// The host actor listening: requests go to it.
    pub host_actor: &'static str,
    /// Which requests and events the guest actor may send.
    pub allowed: fn(&Body) -> bool,
}

/// Accepts `port`'s connections from VM `vm` until the listener fails or the task is aborted
/// (the VM stopped).
pub async fn serve(
    listener: UnixListener,
    bus: BusHandle,
    vm: String,
    port: GuestPort,
    limits: Limits,
) {
    let guest = Addr::in_vm(port.guest_actor, vm.as_str());
    let open = Rc::new(Cell::new(0usize));
    loop {
        let s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(%guest, port = port.port, error = %e, "guest port listener failed");
                return;
            }
        };
        if open.get() >= limits.connections {
            tracing::warn!(%guest, port = port.port, open = limits.connections, "guest connection refused: too many open");
            continue;
        }
        open.set(open.get() + 1);
        let (bus, guest, open) = (bus.clone(), guest.clone(), open.clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = connection(s, &bus, &guest, port, limits).await {
                tracing::debug!(%guest, port = port.port, error = %e, "guest connection ended");
            }
            open.set(open.get() - 1);
        });
    }
}

/// Why a guest connection was dropped.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("no Hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("nothing sent for {0:?}")]
    Idle(Duration),
    #[error("introduced itself as {claimed}, expected {expected}")]
    WrongActor { claimed: Addr, expected: Addr },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

async fn connection(
    mut s: UnixStream,
    bus: &BusHandle,
    guest: &Addr,
    port: GuestPort,
    limits: Limits,
) -> Result<(), ConnectionError> {
    let host = Addr::host(port.host_actor);
    let hello = tokio::time::timeout(limits.hello, handshake(&mut s, &host))
        .await
        .map_err(|_| ConnectionError::HelloTimeout(limits.hello))??;
    if !super::hello_matches(&hello.actor, guest) {
        tracing::warn!(expected = %guest, claimed = %hello.actor, port = port.port, "guest connection refused: wrong actor");
        return Err(ConnectionError::WrongActor {
            claimed: hello.actor,
            expected: guest.clone(),
        });
    }
    loop {
        let next = tokio::time::timeout(limits.idle, read_message(&mut s, MAX_CONTROL_FRAME));
        let env: Envelope = match next.await {
            Ok(Ok(env)) => env,
            Ok(Err(FrameError::Closed)) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ConnectionError::Idle(limits.idle)),
        };
        // Whatever the guest wrote, it speaks for this actor only.
        let env = Envelope {
            from: guest.clone(),
            ..env
        };
        match env.body.kind() {
            BodyKind::Event if (port.allowed)(&env.body) => bus.publish(guest, env.body),
            BodyKind::Event => {
                tracing::warn!(%guest, event = %env.body.type_name(), "guest event dropped: not allowed on this port");
            }
            BodyKind::Request => {
                let body = if (port.allowed)(&env.body) {
                    bus.request(guest, &host, env.body.clone())
                        .await
                        .unwrap_or_else(Body::Error)
                } else {
                    Body::Error(CrosError::new(
                        ErrorKind::PermissionDenied,
                        format!("{guest} may not send {}", env.body.type_name()),
                    ))
                };
                let reply = Envelope {
                    from: host.clone(),
                    to: guest.clone(),
                    ..env.reply(bus.next_id(), body)
                };
                write_message(&mut s, &reply, MAX_CONTROL_FRAME).await?;
            }
            BodyKind::Reply | BodyKind::Error => {
                tracing::debug!(%guest, got = %env.body.type_name(), "guest sent a reply nobody asked for");
            }
        }
    }
}

#[cfg(test)]
mod tests;
