//! `crosmsg trace replay`: reproduce what a trace recorded and report every difference.
//!
//! * Against a running crosd ([`replay_to_daemon`]): the requests clients sent are sent again,
//!   in order, over one connection; each reply is compared with the recorded one.
//! * Isolated ([`replay_actor`]): a fresh instance of one host actor, on a private bus, gets its
//!   recorded inbox in order (requests and events, with the original senders); requests it sends
//!   to other actors — host actors and guest actors (`maitred@termina`) alike — are answered from
//!   the trace. Its replies are compared with the recorded ones, and requests it sends that the
//!   trace does not have (or does not send that it has) are divergences too. Each inbound
//!   request runs as its own task, as on crosd's bus; an inbound envelope is delivered once the
//!   actor has sent every request the recording has it sending before that envelope, and a
//!   recorded reply is compared when the trace reaches it — so a VM start that waits for
//!   maitred's VmReady event gets the event at the point the recording did.
//!
//! Replaying concierge needs one thing the trace cannot give: the hypervisor process it spawns
//! and watches. [`cros_hypervisor::StandInBackend`] stands in for it (a placeholder process, no
//! VM), and powers off when the trace shows the guest's maitred acknowledging Shutdown, as the
//! real guest does. Guest bridges that the replayed concierge registers for its VMs are ignored:
//! the trace's responders for `maitred@<vm>` are pinned on the replay's bus.
//!
//! Replies are compared by body only: ids, times and trace ids differ on every run, and so does
//! the VMM's pid in a VmInfo (a replay's stand-in is another process). Client addresses
//! (`client-7`) inside error messages are normalised, since the replaying connection gets a new
//! number; an isolated replay runs in scratch directories, so its state and run directories are
//! mapped onto the recording's (from the trace's `DaemonStarted` record) before comparing.

use super::Trace;
use crate::client::{Client, ClientError};
use actix::{Actor, Context, Handler, MessageResult};
use cros_actors::bus::clients::Peer;
use cros_actors::{BusConfig, BusHandle, Deliver, HostConfig, HypervisorConfig, spawn_host_actor};
use cros_hypervisor::StandInBackend;
use cros_messages::bus::BusEvent;
use cros_messages::cicerone::CiceroneRequest;
use cros_messages::concierge::{ConciergeReply, VmInfo};
use cros_messages::maitred::MaitredRequest;
use cros_messages::{ActorKind, Addr, Body, BodyKind, CrosError, Envelope};
use std::collections::{BTreeSet, HashMap, VecDeque};
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
        .filter(|(_, env)| is_request(env) && is_wanted(env))
        .map(|(entry, env)| Exchange {
            offset: entry.offset,
            reply: replies.remove(&(env.from.clone(), env.id)),
            request: env,
        })
        .collect()
}

fn is_request(env: &Envelope) -> bool {
    env.reply_to.is_none() && env.body.kind() == BodyKind::Request
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

/// What differs between a recording and its replay on every run, made equal before comparing.
#[derive(Default, Clone)]
struct Normaliser {
    /// (the replay's, the recording's) directory, as text.
    dirs: Vec<(String, String)>,
}

impl Normaliser {
    /// The replay's view of `body` in the recording's terms.
    fn replayed(&self, body: &Body) -> Body {
        if self.dirs.is_empty() {
            return body.clone();
        }
        let Ok(mut text) = serde_json::to_string(body) else {
            return body.clone();
        };
        for (ours, theirs) in &self.dirs {
            text = text.replace(ours.as_str(), theirs);
        }
        serde_json::from_str(&text).unwrap_or_else(|_| body.clone())
    }
}

/// `body` without what no two runs share: client numbers in errors, VMM pids.
fn comparable(body: &Body) -> Body {
    match body {
        Body::Error(e) => Body::Error(CrosError::new(e.kind, normalise_clients(&e.message))),
        Body::ConciergeReply(reply) => Body::ConciergeReply(match reply.clone() {
            ConciergeReply::VmStarted { vm_info } => ConciergeReply::VmStarted {
                vm_info: without_pid(vm_info),
            },
            ConciergeReply::VmInfo { vm_info } => ConciergeReply::VmInfo {
                vm_info: without_pid(vm_info),
            },
            ConciergeReply::Vms { vms } => ConciergeReply::Vms {
                vms: vms.into_iter().map(without_pid).collect(),
            },
            other => other,
        }),
        other => other.clone(),
    }
}

/// A request without what no two runs share, for finding its recorded twin: the random token
/// and the VMM pid concierge tells cicerone.
fn comparable_request(body: &Body) -> Body {
    match body.clone() {
        Body::Cicerone(CiceroneRequest::NotifyVmStarted {
            vm,
            cid,
            owner_uid,
            vsock_socket,
            ..
        }) => Body::Cicerone(CiceroneRequest::NotifyVmStarted {
            vm,
            cid,
            token: String::new(),
            pid: 0,
            owner_uid,
            vsock_socket,
        }),
        Body::Cicerone(CiceroneRequest::NotifyVmStopped { vm, .. }) => {
            Body::Cicerone(CiceroneRequest::NotifyVmStopped {
                vm,
                token: String::new(),
            })
        }
        other => other,
    }
}

fn without_pid(info: VmInfo) -> VmInfo {
    VmInfo { pid: 0, ..info }
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

/// Which recorded outbound requests the replayed actor has sent (by trace offset).
#[derive(Default)]
struct Sent {
    offsets: Mutex<BTreeSet<u64>>,
    changed: tokio::sync::Notify,
}

impl Sent {
    fn mark(&self, offset: u64) {
        self.offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(offset);
        self.changed.notify_waiters();
    }

    fn all(&self, wanted: &[u64]) -> bool {
        let sent = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
        wanted.iter().all(|o| sent.contains(o))
    }

    /// Waits (at most `timeout`) until every request at `wanted` was sent; a request never sent
    /// is reported at the end as one the replay did not send.
    async fn wait_for(&self, wanted: &[u64], timeout: Duration) {
        let all_sent = async {
            loop {
                let changed = self.changed.notified();
                if self.all(wanted) {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(timeout, all_sent).await;
    }
}

/// Answers requests to one address from the trace.
struct TraceResponder {
    addr: Addr,
    /// Recorded (request, reply) pairs not yet used, in order.
    recorded: VecDeque<(Exchange, Body)>,
    divergences: Arc<Mutex<Vec<Divergence>>>,
    sent: Arc<Sent>,
    /// The replay's stand-in hypervisor, powered off when this responder (a guest's maitred)
    /// acknowledges Shutdown, as the real guest powers off then.
    stand_in: Option<Arc<StandInBackend>>,
    /// Puts a request in the recording's terms (its directories) before it is looked up.
    normaliser: Normaliser,
}

impl Actor for TraceResponder {
    type Context = Context<Self>;
}

impl Handler<Deliver> for TraceResponder {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let env = msg.env;
        let wanted = comparable_request(&self.normaliser.replayed(&env.body));
        let pos = self.recorded.iter().position(|(ex, _)| {
            comparable_request(&ex.request.body) == wanted && ex.request.from == env.from
        });
        MessageResult(match pos.and_then(|i| self.recorded.remove(i)) {
            Some((ex, reply)) => {
                self.sent.mark(ex.offset);
                let shutdown = env.body == Body::Maitred(MaitredRequest::Shutdown {});
                if let (Some(stand_in), Some(vm), true) = (&self.stand_in, &self.addr.vm, shutdown)
                    && reply.kind() != BodyKind::Error
                {
                    stand_in.power_off(vm);
                }
                reply
            }
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

/// How long an isolated replay waits for the actor to send what the recording has it send
/// before the next inbound envelope.
const OUTBOUND_WAIT: Duration = Duration::from_secs(10);

/// The recording crosd's state and run directories, from its `DaemonStarted` record.
fn recorded_dirs(trace: &Trace) -> Option<(String, String)> {
    trace.envelopes().find_map(|(_, env)| match env.body {
        Body::BusEvent(BusEvent::DaemonStarted {
            state_dir, run_dir, ..
        }) => Some((state_dir, run_dir)),
        _ => None,
    })
}

/// The backend the recorded VMs ran on (what a stand-in answers to): "qemu" unless the trace
/// shows crosvm.
fn recorded_backend(trace: &Trace) -> &'static str {
    let crosvm = trace.envelopes().any(|(_, env)| {
        matches!(&env.body, Body::ConciergeReply(ConciergeReply::VmStarted { vm_info }) if vm_info.hypervisor == "crosvm")
    });
    if crosvm { "crosvm" } else { "qemu" }
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
    let run = scratch.path().join("run");
    let bus = BusHandle::new(BusConfig::default()).map_err(|e| ReplayError::Start {
        actor: name.to_string(),
        reason: e.to_string(),
    })?;
    let stand_in = Arc::new(StandInBackend::new(recorded_backend(trace)));
    let normaliser = Normaliser {
        dirs: recorded_dirs(trace)
            .map(|(s, r)| {
                vec![
                    (state.display().to_string(), s),
                    (run.display().to_string(), r),
                ]
            })
            .unwrap_or_default(),
    };

    // Outbound requests of the actor, answered from the trace by one responder per address.
    let divergences = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(Sent::default());
    let mut outbound_offsets = Vec::new();
    let mut responders: HashMap<Addr, VecDeque<(Exchange, Body)>> = HashMap::new();
    for ex in exchanges(trace, |env| env.from == target) {
        if let Some(reply) = ex.reply.clone() {
            outbound_offsets.push(ex.offset);
            responders
                .entry(ex.request.to.clone())
                .or_default()
                .push_back((ex, reply));
        }
    }
    let mut responder_addrs = Vec::new();
    for (addr, recorded) in responders {
        let is_guest_maitred = addr.actor == "maitred" && addr.vm.is_some();
        let responder = TraceResponder {
            addr: addr.clone(),
            recorded,
            divergences: divergences.clone(),
            sent: sent.clone(),
            stand_in: is_guest_maitred.then(|| stand_in.clone()),
            normaliser: normaliser.clone(),
        }
        .start();
        bus.pin(addr.clone(), responder.clone().recipient());
        responder_addrs.push(responder);
    }

    let host = HostConfig {
        hypervisor: HypervisorConfig {
            backend: Some(stand_in.clone()),
            ..HypervisorConfig::default()
        },
        ..HostConfig::new(state, run)
    };
    // The recorded connections, as the users they were.
    for (_, env) in trace.envelopes() {
        if let Body::BusEvent(BusEvent::ClientConnected { client, uid, gid }) = env.body {
            let peer = Peer {
                uid,
                gid,
                pid: None,
            };
            bus.clients().add_peer(client, peer);
        }
    }
    spawn_host_actor(&bus, &host, kind)
        .await
        .map_err(|e| ReplayError::Start {
            actor: name.to_string(),
            reason: e.to_string(),
        })?;

    let mut report = ReplayReport::default();
    let mut pending: HashMap<(Addr, u64), (Exchange, tokio::task::JoinHandle<Envelope>)> =
        HashMap::new();
    for (entry, env) in trace.envelopes() {
        let before: Vec<u64> = outbound_offsets
            .iter()
            .copied()
            .filter(|o| *o < entry.offset)
            .collect();
        if env.to == target && is_request(&env) {
            sent.wait_for(&before, OUTBOUND_WAIT).await;
            let key = (env.from.clone(), env.id);
            let (bus, request) = (bus.clone(), env.clone());
            let reply = tokio::task::spawn_local(async move { bus.route(request).await });
            let ex = Exchange {
                offset: entry.offset,
                request: env,
                reply: None,
            };
            pending.insert(key, (ex, reply));
        } else if env.to == target && env.body.kind() == BodyKind::Event {
            sent.wait_for(&before, OUTBOUND_WAIT).await;
            bus.publish(&env.from, env.body);
        } else if env.from == target
            && let Some(id) = env.reply_to
            && let Some((ex, reply)) = pending.remove(&(env.to.clone(), id))
        {
            let got = match reply.await {
                Ok(reply) => normaliser.replayed(&reply.body),
                Err(e) => CrosError::internal(format!("the replayed request failed: {e}")).into(),
            };
            compare(&ex, &env.body, &got, &mut report);
        }
    }
    // Requests whose reply the trace does not have (it was cut short) are not compared.
    for (_, (_, reply)) in pending {
        reply.abort();
        report.skipped += 1;
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
    report.divergences.sort_by_key(|d| d.offset);
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
