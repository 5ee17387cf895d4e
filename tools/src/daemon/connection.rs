//! One control-socket connection: handshake, then requests in and replies/events out.
//!
//! The reader routes each request as its own task, so a slow request never holds up the next;
//! replies and subscribed events go through one channel to the writer, which batches whatever
//! is queued into one write. On shutdown the reader stops, and the writer finishes once every
//! in-flight request has sent its reply.
//!
//! Who the peer is comes from the kernel (SO_PEERCRED) and is registered on the bus for the
//! connection's life, so concierge knows each request's owner whatever the client wrote; files
//! the client passed with a request go with it (see [`super::passed_files`]).

use super::passed_files::{self, FilesInFlight, FrameReader};
use super::socket::AccessPolicy;
use cros_actors::BusHandle;
use cros_actors::bus::clients::Peer;
use cros_actors::bus::{RouteNow, channel_sink};
use cros_messages::bus::BusRequest;
use cros_messages::framing::{self, MAX_CONTROL_FRAME, tokio_io};
use cros_messages::{Addr, Body, CrosError, Envelope, ErrorKind, FrameError, PROTOCOL_VERSION};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc, watch};

/// Requests one connection may have in flight at once.
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long a peer may take to say Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves connection `n` until the peer closes, sends garbage it cannot recover from, or
/// `shutdown` fires.
pub async fn serve(
    stream: UnixStream,
    n: u64,
    bus: BusHandle,
    policy: &AccessPolicy,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = Addr::client(n);
    let mut stream = stream;
    let cred = stream.peer_cred();
    let refusal = match &cred {
        Ok(cred) => policy
            .check(cred.uid(), cred.gid())
            .err()
            .map(|why| format!("pid {:?}: {why}", cred.pid())),
        Err(e) => Some(format!("cannot read peer credentials: {e}")),
    };
    let peer = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_io::handshake(&mut stream, bus.addr()),
    )
    .await
    {
        Ok(Ok(hello)) => hello,
        // A peer that connects and leaves at once (another crosd probing the socket) is normal.
        Ok(Err(e @ (FrameError::Closed | FrameError::Io(_)))) => {
            tracing::debug!(%client, error = %e, "peer left during the handshake");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(%client, error = %e, "handshake failed; closing");
            return;
        }
        Err(_) => {
            tracing::warn!(%client, "no Hello within {HANDSHAKE_TIMEOUT:?}; closing");
            return;
        }
    };
    if let Some(why) = refusal {
        tracing::warn!(%client, peer = %peer.actor, "refused connection: {why}");
        let err = CrosError::new(
            ErrorKind::PermissionDenied,
            format!("not allowed to use crosd: {why}"),
        );
        let frame = error_envelope(&bus, &client, None, err);
        let _ = tokio_io::write_message(&mut stream, &frame, MAX_CONTROL_FRAME).await;
        return;
    }
    let Ok(cred) = cred else { return };
    let owner = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    };
    tracing::debug!(%client, peer = %peer.actor, uid = owner.uid, "connected");
    bus.clients().add_peer(client.clone(), owner);
    let (rd, wr) = stream.into_split();
    let mut rd = FrameReader::new(rd);
    let files_in_flight = FilesInFlight::default();
    let (tx, rx) = mpsc::unbounded_channel::<Envelope>();
    let writer = actix::spawn(write_loop(wr, rx, client.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));

    loop {
        let frame = tokio::select! {
            _ = shutdown.changed() => break,
            frame = rd.read_frame(MAX_CONTROL_FRAME) => frame,
        };
        let passed_files::Frame { payload, files } = match frame {
            Ok(f) => f,
            Err(FrameError::Closed) => break,
            Err(e @ FrameError::TooLarge { .. }) => {
                // The oversized payload is still in the stream: answer, then close.
                tracing::warn!(%client, error = %e, "refusing frame; closing");
                let _ = tx.send(error_envelope(&bus, &client, None, e.to_cros_error()));
                break;
            }
            Err(e) => {
                tracing::warn!(%client, error = %e, "bad frame; closing");
                break;
            }
        };
        let mut env = match framing::decode::<Envelope>(&payload) {
            Ok(env) => env,
            Err(e) => {
                // The frame boundary is intact, so the connection can go on.
                tracing::warn!(%client, error = %e, "malformed envelope");
                let err = CrosError::invalid(format!("malformed envelope: {e}"));
                let _ = tx.send(error_envelope(&bus, &client, None, err));
                continue;
            }
        };
        // Replies go back to this connection whatever the peer wrote in `from`.
        env.from = client.clone();
        if env.v != PROTOCOL_VERSION {
            let err = CrosError::new(
                ErrorKind::VersionMismatch,
                format!(
                    "envelope is protocol v{}, crosd speaks v{PROTOCOL_VERSION}",
                    env.v
                ),
            );
            let _ = tx.send(error_envelope(&bus, &client, Some(env.id), err));
            continue;
        }
        if matches!(env.body, Body::Bus(BusRequest::Subscribe { .. })) && env.to == *bus.addr() {
            let _ = tx.send(bus.subscribe_request(&env, channel_sink(tx.clone())));
            continue;
        }
        let reservation = match files_in_flight.attach(&bus, &env, files) {
            Ok(r) => r,
            Err(err) => {
                let _ = tx.send(error_envelope(&bus, &client, Some(env.id), err));
                continue;
            }
        };
        let request_id = env.id;
        // Requests the bus answers itself need no task.
        match bus.route_now(env) {
            RouteNow::Replied(reply) => {
                drop(bus.clients().take_files(&client, request_id));
                drop(reservation);
                let _ = tx.send(reply);
            }
            RouteNow::NeedsActor(env) => {
                // At most MAX_IN_FLIGHT requests per connection: past that, stop reading until
                // one finishes, so a flooding client is slowed, not buffered without bound.
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let (bus, tx, client) = (bus.clone(), tx.clone(), client.clone());
                actix::spawn(async move {
                    let reply = bus.route(env).await;
                    // What the actor did not take is closed now.
                    drop(bus.clients().take_files(&client, request_id));
                    drop(reservation);
                    let _ = tx.send(reply);
                    drop(permit);
                });
            }
        }
    }
    bus.unsubscribe(&client);
    drop(tx);
    // In-flight requests hold senders; the writer ends after their replies are written.
    let _ = writer.await;
    // Only now: an in-flight request still acts for this peer.
    bus.clients().remove_peer(&client);
    tracing::debug!(%client, "disconnected");
}

fn error_envelope(
    bus: &BusHandle,
    client: &Addr,
    reply_to: Option<u64>,
    err: CrosError,
) -> Envelope {
    let id = bus.next_id();
    let mut env = Envelope::new(id, 0, bus.addr().clone(), client.clone(), Body::Error(err));
    env.reply_to = reply_to;
    env
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    client: Addr,
) {
    let mut buf = Vec::new();
    let mut peer_gone = false;
    while let Some(env) = rx.recv().await {
        if peer_gone {
            continue; // drain, so in-flight tasks never block on us
        }
        buf.clear();
        let mut next = Some(env);
        while let Some(env) = next {
            match framing::encode_frame(&env) {
                Ok(frame) if frame.len() - 4 <= MAX_CONTROL_FRAME => buf.extend_from_slice(&frame),
                Ok(frame) => {
                    let msg = env.body.type_name();
                    tracing::error!(%client, len = frame.len(), %msg, "reply too large to send");
                    let err = CrosError::internal(format!(
                        "the {msg} reply is {} bytes, over the {MAX_CONTROL_FRAME}-byte frame limit",
                        frame.len() - 4
                    ));
                    let mut e =
                        Envelope::new(env.id, env.trace, env.from, env.to, Body::Error(err));
                    e.reply_to = env.reply_to;
                    if let Ok(frame) = framing::encode_frame(&e) {
                        buf.extend_from_slice(&frame);
                    }
                }
                Err(e) => tracing::error!(%client, error = %e, "cannot encode reply"),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = wr.write_all(&buf).await {
            tracing::debug!(%client, error = %e, "peer gone while writing");
            peer_gone = true;
        }
    }
    let _ = wr.shutdown().await;
}
