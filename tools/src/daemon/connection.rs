//! One control-socket connection: handshake, then requests in and replies/events out.
//!
//! The reader routes each request as its own task, so a slow request never holds up the next;
//! replies and subscribed events go through one bounded queue to the writer, which batches
//! whatever is queued into one write. On shutdown the reader stops, and the writer finishes
//! once every in-flight request has sent its reply.
//!
//! A client that does not read what it is sent fills the queue. Replies then wait (the reader
//! stops reading requests, so the client is slowed, not buffered); an event that finds the
//! queue full cuts the connection off instead: events cannot wait (the bus publishes to every
//! subscriber from the publisher's thread) and dropping one silently would leave the client
//! waiting forever for a VmStarted it lost, while a closed connection is an error it sees.
//!
//! Who the peer is comes from the kernel (SO_PEERCRED) and is registered on the bus for the
//! connection's life, so concierge knows each request's owner whatever the client wrote; files
//! the client passed with a request go with it (see [`super::passed_files`]).

use super::passed_files::{self, FilesInFlight, FrameReader};
use super::socket::AccessPolicy;
use cros_actors::BusHandle;
use cros_actors::bus::clients::Peer;
use cros_actors::bus::{EventSink, RouteNow};
use cros_messages::bus::{BusEvent, BusRequest};
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

/// Replies and events queued for one connection's writer; an event that finds this many
/// queued cuts the connection off.
pub const MAX_QUEUED: usize = 1024;

/// How long a peer may take to say Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused peer may take to say Hello and read why it is refused.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Tells a peer crosd will not serve why (after the handshake, as one error frame), then
/// closes. Bounded by [`REFUSAL_TIMEOUT`], so a silent peer holds its descriptor briefly.
pub async fn refuse(mut stream: UnixStream, n: u64, bus: BusHandle, why: CrosError) {
    let client = Addr::client(n);
    let told = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        tokio_io::handshake(&mut stream, bus.addr()).await?;
        let frame = error_envelope(&bus, &client, None, why);
        tokio_io::write_message(&mut stream, &frame, MAX_CONTROL_FRAME).await
    })
    .await;
    if let Ok(Err(e)) = told {
        tracing::debug!(%client, error = %e, "refused peer left early");
    }
}

/// The event sink of a subscribed connection: queues without waiting, and on a full queue
/// cuts the connection off (`cut_off`) and ends the subscription.
fn bounded_sink(
    tx: mpsc::Sender<Envelope>,
    cut_off: Arc<watch::Sender<bool>>,
    client: Addr,
) -> EventSink {
    Arc::new(move |env| match tx.try_send(env) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(env)) => {
            tracing::warn!(
                %client,
                event = env.body.type_name(),
                "client does not read: {MAX_QUEUED} replies and events are queued for it; \
                 closing its connection rather than losing events"
            );
            cut_off.send_replace(true);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    })
}

/// Queues `env` for the writer, waiting for room unless the connection is cut off meanwhile;
/// false once nothing more can be sent.
async fn queue(
    tx: &mpsc::Sender<Envelope>,
    env: Envelope,
    cut: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        sent = tx.send(env) => sent.is_ok(),
        _ = cut.wait_for(|c| *c) => false,
    }
}

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
    if bus.is_tracing() {
        let connected = BusEvent::ClientConnected {
            client: client.clone(),
            uid: owner.uid,
            gid: owner.gid,
        };
        let id = bus.next_id();
        let me = bus.addr().clone();
        bus.record(&Envelope::new(
            id,
            0,
            me.clone(),
            me,
            Body::BusEvent(connected),
        ));
    }
    let (rd, wr) = stream.into_split();
    let mut rd = FrameReader::new(rd);
    let files_in_flight = FilesInFlight::default();
    let (tx, rx) = mpsc::channel::<Envelope>(MAX_QUEUED);
    let writer = actix::spawn(write_loop(wr, rx, client.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (cut_tx, mut cut) = watch::channel(false);
    let cut_tx = Arc::new(cut_tx);

    loop {
        let frame = tokio::select! {
            _ = shutdown.changed() => break,
            _ = cut.wait_for(|c| *c) => break,
            frame = rd.read_frame(MAX_CONTROL_FRAME) => frame,
        };
        let passed_files::Frame { payload, files } = match frame {
            Ok(f) => f,
            Err(FrameError::Closed) => break,
            Err(e @ FrameError::TooLarge { .. }) => {
                // The oversized payload is still in the stream: answer, then close.
                tracing::warn!(%client, error = %e, "refusing frame; closing");
                let err = error_envelope(&bus, &client, None, e.to_cros_error());
                queue(&tx, err, &mut cut).await;
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
                if !queue(&tx, error_envelope(&bus, &client, None, err), &mut cut).await {
                    break;
                }
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
            if !queue(
                &tx,
                error_envelope(&bus, &client, Some(env.id), err),
                &mut cut,
            )
            .await
            {
                break;
            }
            continue;
        }
        if matches!(env.body, Body::Bus(BusRequest::Subscribe { .. })) && env.to == *bus.addr() {
            let sink = bounded_sink(tx.clone(), cut_tx.clone(), client.clone());
            if !queue(&tx, bus.subscribe_request(&env, sink), &mut cut).await {
                break;
            }
            continue;
        }
        let reservation = match files_in_flight.attach(&bus, &env, files) {
            Ok(r) => r,
            Err(err) => {
                if !queue(
                    &tx,
                    error_envelope(&bus, &client, Some(env.id), err),
                    &mut cut,
                )
                .await
                {
                    break;
                }
                continue;
            }
        };
        let request_id = env.id;
        // Requests the bus answers itself need no task.
        match bus.route_now(env) {
            RouteNow::Replied(reply) => {
                drop(bus.clients().take_files(&client, request_id));
                drop(reservation);
                if !queue(&tx, reply, &mut cut).await {
                    break;
                }
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
                    // Fails only once the writer is gone (the connection was cut off).
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
            }
        }
    }
    bus.unsubscribe(&client);
    drop(tx);
    if *cut.borrow() {
        // The writer may be stuck writing to a peer that never reads: stop it; the replies
        // of in-flight requests then have nowhere to go and are dropped.
        writer.abort();
        tracing::warn!(%client, "connection cut off");
        return;
    }
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

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Envelope>, client: Addr) {
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
