//! `crosmsg trace replay`: reproduce what a trace recorded and report every difference.
//!
//! * Against a running crosd ([`replay_to_daemon`]): the requests clients sent are sent again,
//!   in order, over one connection; each reply is compared with the recorded one.
//! * Isolated ([`replay_actor`]): a fresh instance of one host actor, on a private bus, gets its
//!   recorded inbox in order (with the original senders); requests it sends to other actors are
//!   answered from the trace. Its replies are compared with the recorded ones, and requests it
//!   sends that the trace does not have (or does not send that it has) are divergences too.
//!
//! Replies are compared by body only: ids, times and trace ids differ on every run. Client
//! addresses (`client-7`) inside error messages are normalised, since the replaying connection
//! gets a new number.

use super::Trace;
use crate::client::{Client, ClientError};
use actix::{Actor, Context, Handler, MessageResult};
use cros_actors::{BusConfig, BusHandle, Deliver, HostConfig, spawn_host_actor};
use cros_messages::{ActorKind, Addr, Body, BodyKind, CrosError, Envelope};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One difference between the recording and the replay.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// Byte offset of the recorded request in the trace.
    pub offset: u64,
    pub what: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.what)
    }
}

#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Requests replayed and compared.
    pub replayed: usize,
    /// Recorded requests skipped because their reply is not in the trace.
    pub skipped: usize,
    pub divergences: Vec<Divergence>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0} is not a host actor that can be replayed in isolation (crosd runs {host})", host = host_names())]
    NotReplayable(String),
    #[error("cannot start {actor} for the replay: {reason}")]
    Start { actor: String, reason: String },
    #[error("cannot create a scratch state directory: {0}")]
    Scratch(std::io::Error),
}

fn host_names() -> String {
    ActorKind::HOST.map(ActorKind::name).join(", ")
}

/// A request and the reply the trace recorded for it.
struct Exchange {
    offset: u64,
    request: Envelope,
    reply: Option<Body>,
}

/// Every recorded request matching `is_wanted`, in order, with its recorded reply.
fn exchanges(trace: &Trace, is_wanted: impl Fn(&Envelope) -> bool) -> Vec<Exchange> {
    let mut replies: HashMap<(Addr, u64), Body> = HashMap::new();
    for (_, env) in trace.envelopes() {
        if let Some(id) = env.reply_to {
            replies.insert((env.to.clone(), id), env.body);
        }
    }
    trace
        .envelopes()
        .filter(|(_, env)| {
            env.reply_to.is_none() && env.body.kind() == BodyKind::Request && is_wanted(env)
        })
        .map(|(entry, env)| Exchange {
            offset: entry.offset,
            reply: replies.remove(&(env.from.clone(), env.id)),
            request: env,
        })
        .collect()
}

/// Replaces every `client-<digits>` with `client-*`.
fn normalise_clients(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("client-") {
        out.push_str(&rest[..i + "client-".len()]);
        rest = &rest[i + "client-".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push('*');
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

fn comparable(body: &Body) -> Body {
    match body {
        Body::Error(e) => Body::Error(CrosError::new(e.kind, normalise_clients(&e.message))),
        other => other.clone(),
    }
}

fn json(body: &Body) -> String {
    serde_json::to_string(body).unwrap_or_else(|e| format!("<{e}>"))
}

fn compare(ex: &Exchange, recorded: &Body, got: &Body, report: &mut ReplayReport) {
    report.replayed += 1;
    if comparable(recorded) != comparable(got) {
        report.divergences.push(Divergence {
            offset: ex.offset,
            what: format!(
                "{} {} -> {}: recorded reply {}, replay got {}",
                ex.request.body.type_name(),
                ex.request.from,
                ex.request.to,
                json(recorded),
                json(got)
            ),
        });
    }
}

/// Re-sends the recorded client requests to the crosd at `socket`.
pub fn replay_to_daemon(
    trace: &Trace,
    socket: &Path,
    timeout: Duration,
) -> Result<ReplayReport, ReplayError> {
    let mut client = Client::connect(socket)?;
    let mut report = ReplayReport::default();
    for ex in exchanges(trace, |env| env.from.is_client()) {
        let Some(recorded) = &ex.reply else {
            report.skipped += 1;
            continue;
        };
        let got = match client.request(&ex.request.to, ex.request.body.clone(), timeout) {
            Ok(body) => body,
            Err(ClientError::Timeout { .. }) => {
                report.divergences.push(Divergence {
                    offset: ex.offset,
                    what: format!(
                        "{} -> {}: no reply within {timeout:?} (recorded {})",
                        ex.request.body.type_name(),
                        ex.request.to,
                        json(recorded)
                    ),
                });
                // The connection cannot be trusted after a timeout.
                client = Client::connect(socket)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        compare(&ex, recorded, &got, &mut report);
    }
    Ok(report)
}

/// Answers requests to one address from the trace.
struct TraceResponder {
    addr: Addr,
    /// Recorded (request, reply) pairs not yet used, in order.
    recorded: VecDeque<(Exchange, Body)>,
    divergences: Arc<Mutex<Vec<Divergence>>>,
}

impl Actor for TraceResponder {
    type Context = Context<Self>;
}

impl Handler<Deliver> for TraceResponder {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let env = msg.env;
        let pos = self
            .recorded
            .iter()
            .position(|(ex, _)| ex.request.body == env.body && ex.request.from == env.from);
        MessageResult(match pos.and_then(|i| self.recorded.remove(i)) {
            Some((_, reply)) => reply,
            None => {
                let what = format!(
                    "{} sent {} to {} which the trace does not have: {}",
                    env.from,
                    env.body.type_name(),
                    self.addr,
                    json(&env.body)
                );
                self.divergences
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Divergence { offset: 0, what });
                CrosError::unavailable(format!(
                    "isolated replay: {} is not in the trace",
                    env.body.type_name()
                ))
                .into()
            }
        })
    }
}

/// Replays actor `name` in isolation. `state_dir` is the state the fresh actor sees (a new
/// empty directory when None). Must run inside an actix `System`.
pub async fn replay_actor(
    trace: &Trace,
    name: &str,
    state_dir: Option<&Path>,
) -> Result<ReplayReport, ReplayError> {
    let kind = name
        .parse::<ActorKind>()
        .ok()
        .filter(|k| ActorKind::HOST.contains(k))
        .ok_or_else(|| ReplayError::NotReplayable(name.to_string()))?;
    let target = Addr::host(kind.name());
    let scratch = tempfile::tempdir().map_err(ReplayError::Scratch)?;
    let state: PathBuf = state_dir.map_or_else(|| scratch.path().join("state"), Path::to_path_buf);
    let bus = BusHandle::new(BusConfig::default()).map_err(|e| ReplayError::Start {
        actor: name.to_string(),
        reason: e.to_string(),
    })?;

    // Outbound requests of the actor, answered from the trace by one responder per address.
    let divergences = Arc::new(Mutex::new(Vec::new()));
    let mut responders: HashMap<Addr, VecDeque<(Exchange, Body)>> = HashMap::new();
    for ex in exchanges(trace, |env| env.from == target) {
        if let Some(reply) = ex.reply.clone() {
            responders
                .entry(ex.request.to.clone())
                .or_default()
                .push_back((ex, reply));
        }
    }
    let mut responder_addrs = Vec::new();
    for (addr, recorded) in responders {
        let responder = TraceResponder {
            addr: addr.clone(),
            recorded,
            divergences: divergences.clone(),
        }
        .start();
        bus.register(addr.clone(), responder.clone().recipient());
        responder_addrs.push(responder);
    }

    let host = HostConfig::new(state, scratch.path().join("run"));
    spawn_host_actor(&bus, &host, kind)
        .await
        .map_err(|e| ReplayError::Start {
            actor: name.to_string(),
            reason: e.to_string(),
        })?;

    let mut report = ReplayReport::default();
    for ex in exchanges(trace, |env| env.to == target) {
        let Some(recorded) = &ex.reply else {
            report.skipped += 1;
            continue;
        };
        let reply = bus.route(ex.request.clone()).await;
        compare(&ex, recorded, &reply.body, &mut report);
    }
    bus.shutdown();
    // Recorded outbound requests the fresh actor never sent.
    for responder in responder_addrs {
        if let Ok(unused) = responder.send(TakeUnused).await {
            for (ex, _) in unused {
                report.divergences.push(Divergence {
                    offset: ex.offset,
                    what: format!(
                        "the recording has {} sending {} to {}, the replay did not send it",
                        ex.request.from,
                        ex.request.body.type_name(),
                        ex.request.to
                    ),
                });
            }
        }
    }
    report.divergences.extend(
        divergences
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..),
    );
    Ok(report)
}

/// Asks a responder for the recorded requests nobody sent.
struct TakeUnused;

impl actix::Message for TakeUnused {
    type Result = Vec<(Exchange, Body)>;
}

impl Handler<TakeUnused> for TraceResponder {
    type Result = MessageResult<TakeUnused>;

    fn handle(&mut self, _msg: TakeUnused, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.recorded.drain(..).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_numbers_are_normalised() {
        assert_eq!(
            normalise_clients(
                "NotifyVmStarted is accepted only from concierge, not from client-12"
            ),
            "NotifyVmStarted is accepted only from concierge, not from client-*"
        );
        assert_eq!(normalise_clients("client-x client-"), "client-x client-");
    }
}
