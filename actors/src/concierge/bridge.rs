//! Host listeners for connections a guest opens (guest → host ports of the hybrid vsock:
//! `vsock.sock_<port>`), and the bridge that moves a guest actor's requests onto the bus.
//!
//! The guest is untrusted: a connection must introduce itself as the one actor expected on that
//! port in that VM, its envelopes are re-addressed from that actor (whatever `from` it wrote),
//! and only the request families allowed for it reach the bus.

use std::path::Path;

use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{handshake, read_message, write_message};
use cros_messages::maitred::MaitredEvent;
use cros_messages::{Addr, Body, CrosError, Envelope, ErrorKind, FrameError};
use tokio::net::{UnixListener, UnixStream};

use crate::bus::BusHandle;

/// Binds the host side of guest port `port`: `<uds>_<port>`, replacing a stale socket file.
pub fn listen_guest_port(uds: &Path, port: u32) -> Result<UnixListener, CrosError> {
    let path = format!("{}_{port}", uds.display());
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path)
        .map_err(|e| CrosError::internal(format!("cannot listen on {path}: {e}")))
}

async fn accept_from(
    listener: &UnixListener,
    me: &Addr,
    expected: &Addr,
) -> Result<UnixStream, CrosError> {
    loop {
        let (mut s, _) = listener
            .accept()
            .await
            .map_err(|e| CrosError::internal(format!("accept: {e}")))?;
        match handshake(&mut s, me).await {
            Ok(hello) if &hello.actor == expected => return Ok(s),
            Ok(hello) => {
                tracing::warn!(expected = %expected, claimed = %hello.actor, "guest connection refused: wrong actor")
            }
            Err(e) => {
                tracing::warn!(expected = %expected, error = %e, "guest connection failed its handshake")
            }
        }
    }
}

/// Waits for maitred of `vm` to connect to port 7777 and say VmReady.
pub async fn wait_for_vm_ready(listener: &UnixListener, vm: &str) -> Result<(), CrosError> {
    let me = Addr::host("concierge");
    let maitred = Addr::in_vm("maitred", vm);
    loop {
        let mut s = accept_from(listener, &me, &maitred).await?;
        match read_message::<Envelope, _>(&mut s, MAX_CONTROL_FRAME).await {
            Ok(env) if env.body == Body::MaitredEvent(MaitredEvent::VmReady {}) => return Ok(()),
            Ok(env) => {
                tracing::warn!(vm, got = %env.body.type_name(), "expected VmReady on port 7777")
            }
            Err(e) => tracing::warn!(vm, error = %e, "reading VmReady"),
        }
    }
}

/// Which request bodies a guest actor may send to the bus.
pub type Allowed = fn(&Body) -> bool;

/// Serves guest connections from `actor@vm` on `listener` forever, forwarding each allowed
/// request to `to` on the bus and writing back the reply.
pub async fn serve_bridge(
    listener: UnixListener,
    bus: BusHandle,
    vm: String,
    actor: &'static str,
    to: Addr,
    allowed: Allowed,
) {
    let me = Addr::host("concierge");
    let from = Addr::in_vm(actor, vm.as_str());
    loop {
        let s = match accept_from(&listener, &me, &from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(vm, actor, error = %e, "guest bridge listener failed");
                return;
            }
        };
        let (bus, from, to) = (bus.clone(), from.clone(), to.clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = bridge_connection(s, &bus, &from, &to, allowed).await {
                tracing::debug!(%from, error = %e, "guest bridge connection ended");
            }
        });
    }
}

async fn bridge_connection(
    mut s: UnixStream,
    bus: &BusHandle,
    from: &Addr,
    to: &Addr,
    allowed: Allowed,
) -> Result<(), FrameError> {
    loop {
        let env: Envelope = match read_message(&mut s, MAX_CONTROL_FRAME).await {
            Ok(env) => env,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let body = if allowed(&env.body) {
            match bus.request(from, to, env.body.clone()).await {
                Ok(b) => b,
                Err(e) => Body::Error(e),
            }
        } else {
            Body::Error(CrosError::new(
                ErrorKind::PermissionDenied,
                format!("{from} may not send {}", env.body.type_name()),
            ))
        };
        let reply = Envelope {
            from: to.clone(),
            to: from.clone(),
            ..env.reply(bus.next_id(), body)
        };
        write_message(&mut s, &reply, MAX_CONTROL_FRAME).await?;
    }
}
