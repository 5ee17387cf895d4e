//! host → guest: the bus address of one guest actor (`maitred@termina`), served over vsock.
//!
//! Each request is written to a stream to the guest actor's listener and answered by the reply
//! whose `reply_to` is the request's id, all within the deadline the bus gave the request: a
//! silent guest is a timeout error, never a hang, and a stream that timed out is dropped (its
//! late reply must not answer the next request). Finished streams are kept for the next request,
//! up to [`MAX_IDLE_STREAMS`]; the guest's listeners serve one request at a time per stream, so
//! concurrent requests use one stream each, up to [`MAX_STREAMS`].
//!
//! A kept stream may have been closed by the guest meanwhile (maitred restarted its listener,
//! or the VM rebooted). A request that finds its reused stream closed before any byte of a reply
//! came back is sent once more on a fresh stream, as HTTP clients retry on a stale keep-alive
//! connection; a fresh stream that fails is the request's error.

use std::path::PathBuf;
use std::time::Instant;

use actix::{Actor, ActorFutureExt, Context, Handler, ResponseActFuture, WrapFuture};
use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{handshake, read_message, write_message};
use cros_messages::{Addr, Body, CrosError, Envelope, ErrorKind, FrameError};
use tokio::net::UnixStream;

use super::vsock::connect_guest_port;
use crate::bus::Deliver;

/// Streams open to one guest actor at once (requests in flight).
pub const MAX_STREAMS: usize = 8;
/// Streams kept open between requests.
pub const MAX_IDLE_STREAMS: usize = 2;

/// Serves the bus address `peer` by forwarding its requests to guest port `port` of the VM whose
/// hybrid vsock socket is `uds`.
pub struct GuestActorBridge {
    peer: Addr,
    uds: PathBuf,
    port: u32,
    idle: Vec<UnixStream>,
    in_flight: usize,
}

impl GuestActorBridge {
    pub fn new(peer: Addr, uds: PathBuf, port: u32) -> Self {
        Self {
            peer,
            uds,
            port,
            idle: Vec::new(),
            in_flight: 0,
        }
    }
}

impl Actor for GuestActorBridge {
    type Context = Context<Self>;
}

impl Handler<Deliver> for GuestActorBridge {
    type Result = ResponseActFuture<Self, Body>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        if self.in_flight >= MAX_STREAMS {
            let busy = CrosError::unavailable(format!(
                "{} has {MAX_STREAMS} requests in flight already; try again",
                self.peer
            ));
            return Box::pin(actix::fut::ready(Body::Error(busy)));
        }
        self.in_flight += 1;
        let stream = Stream {
            uds: self.uds.clone(),
            port: self.port,
            peer: self.peer.clone(),
        };
        let reused = self.idle.pop();
        let exchange = async move { stream.request(reused, msg.env, msg.deadline).await };
        Box::pin(exchange.into_actor(self).map(|(body, kept), act, _| {
            act.in_flight -= 1;
            if let Some(s) = kept
                && act.idle.len() < MAX_IDLE_STREAMS
            {
                act.idle.push(s);
            }
            body
        }))
    }
}

/// Where a bridge's streams go.
struct Stream {
    uds: PathBuf,
    port: u32,
    peer: Addr,
}

/// Why an exchange on a stream failed.
enum ExchangeError {
    /// The stream was closed before any byte of a reply: the guest never answered on it.
    Closed(String),
    Failed(CrosError),
}

impl Stream {
    /// Sends `env` (on `reused`, else a fresh stream) and returns the reply body, with the stream
    /// when it can serve another request.
    async fn request(
        &self,
        reused: Option<UnixStream>,
        env: Envelope,
        deadline: Instant,
    ) -> (Body, Option<UnixStream>) {
        let what = env.body.type_name();
        let within = deadline.saturating_duration_since(Instant::now());
        let attempt = async {
            if let Some(s) = reused {
                match self.exchange(s, &env).await {
                    Ok(done) => return Ok(done),
                    Err(ExchangeError::Closed(reason)) => {
                        tracing::debug!(peer = %self.peer, %reason, "kept stream closed by the guest; reconnecting");
                    }
                    Err(ExchangeError::Failed(e)) => return Err(e),
                }
            }
            let s = self.open().await?;
            self.exchange(s, &env).await.map_err(|e| match e {
                ExchangeError::Closed(reason) => CrosError::unavailable(format!(
                    "{} closed the connection without answering {what}: {reason}",
                    self.peer
                )),
                ExchangeError::Failed(e) => e,
            })
        };
        match tokio::time::timeout_at(deadline.into(), attempt).await {
            Ok(Ok((body, stream))) => (body, Some(stream)),
            Ok(Err(e)) => (Body::Error(e), None),
            Err(_) => (
                Body::Error(CrosError::timeout(format!(
                    "{} did not answer {what} within {within:?}",
                    self.peer
                ))),
                None,
            ),
        }
    }

    /// A fresh stream to the guest actor, handshaken: the peer must say it is the actor this
    /// bridge serves (a VM's port could be served by anything the guest runs).
    async fn open(&self) -> Result<UnixStream, CrosError> {
        let mut s = connect_guest_port(&self.uds, self.port).await?;
        let hello = handshake(&mut s, &Addr::host(crate::bus::BUS_ACTOR))
            .await
            .map_err(|e| {
                CrosError::unavailable(format!(
                    "{} (guest port {}): handshake failed: {}",
                    self.peer,
                    self.port,
                    e.to_cros_error().message
                ))
            })?;
        if !super::hello_matches(&hello.actor, &self.peer) {
            return Err(CrosError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "guest port {} answered as {}, expected {}",
                    self.port, hello.actor, self.peer
                ),
            ));
        }
        Ok(s)
    }

    async fn exchange(
        &self,
        mut s: UnixStream,
        env: &Envelope,
    ) -> Result<(Body, UnixStream), ExchangeError> {
        if let Err(e) = write_message(&mut s, env, MAX_CONTROL_FRAME).await {
            return Err(ExchangeError::Closed(e.to_string()));
        }
        loop {
            let reply: Envelope = match read_message(&mut s, MAX_CONTROL_FRAME).await {
                Ok(reply) => reply,
                Err(FrameError::Closed) => {
                    return Err(ExchangeError::Closed("end of stream".into()));
                }
                Err(FrameError::Io(e)) if is_reset(&e) => {
                    return Err(ExchangeError::Closed(e.to_string()));
                }
                Err(e) => {
                    return Err(ExchangeError::Failed(CrosError::unavailable(format!(
                        "{} ({}): {}",
                        self.peer,
                        env.body.type_name(),
                        e.to_cros_error().message
                    ))));
                }
            };
            // A reply to an earlier request that timed out cannot be here (such streams are
            // dropped); anything else unasked for is skipped, within the deadline.
            if reply.reply_to == Some(env.id) {
                return Ok((reply.body, s));
            }
            tracing::debug!(peer = %self.peer, got = %reply.body.type_name(), "skipping an envelope that answers nothing asked");
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests;
