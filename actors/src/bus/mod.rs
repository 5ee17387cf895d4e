//! The bus: a registry of named actors, request/reply with deadlines, events to subscribers,
//! and the trace recorder.
//!
//! There is no router actor: [`BusHandle::route`] looks the destination up in the registry and
//! sends straight into that actor's mailbox, so a request costs one mailbox hop each way. Every
//! routed envelope is handed to the trace recorder when one is configured.

pub mod clients;
mod deadline;
mod events;
mod recorder;
mod registry;

pub use events::{EventSink, Published, actor_sink, channel_sink};
pub use recorder::RecorderError;
pub use registry::RestartCounter;
pub(crate) use registry::Route;

use actix::{Arbiter, MailboxError, Message, Recipient};
use cros_messages::bus::{ActorInfo, BusReply, BusRequest};
use cros_messages::{ActorKind, Addr, Body, BodyKind, CrosError, Envelope, PROTOCOL_VERSION};
use events::Subscriptions;
use futures_util::FutureExt;
use futures_util::future::{self, Either};
use recorder::Recorder;
use registry::Registry;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Name of the bus itself as an actor.
pub const BUS_ACTOR: &str = "bus";

/// How long a request may take when its body names no timeout of its own.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// An envelope delivered to an actor's mailbox; the actor answers with the reply body (errors
/// as [`Body::Error`]).
pub struct Deliver {
    pub env: Envelope,
    /// When the asker stops waiting. An actor whose answer waits on something else (a bridge
    /// on its guest) gives up then too, so no work outlives the request it serves.
    pub deadline: Instant,
}

impl Deliver {
    /// `env`, to be answered within the bus's deadline for its body.
    pub fn new(env: Envelope, within: Duration) -> Self {
        Self {
            env,
            deadline: Instant::now() + within,
        }
    }

    /// What is left of the deadline.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

impl Message for Deliver {
    type Result = Body;
}

#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Record every routed envelope to this file (created or truncated).
    pub trace: Option<PathBuf>,
    /// Deadline of requests that carry no timeout of their own.
    pub default_deadline: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            trace: None,
            default_deadline: DEFAULT_DEADLINE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Recorder(#[from] RecorderError),
}

/// What [`BusHandle::route_now`] did.
pub enum RouteNow {
    /// The reply, made without an actor.
    Replied(Envelope),
    /// The request, untouched: route it with [`BusHandle::route`].
    NeedsActor(Envelope),
}

enum Dispatch {
    /// Answered without an actor.
    Answer(Body),
    Deliver(Arc<Recipient<Deliver>>),
}

/// The cheap, clonable handle every actor, connection and test uses to reach the bus.
#[derive(Clone)]
pub struct BusHandle {
    inner: Arc<Inner>,
}

struct Inner {
    me: Addr,
    registry: Registry,
    subs: Subscriptions,
    next_id: AtomicU64,
    recorder: Option<Recorder>,
    default_deadline: Duration,
    arbiters: Mutex<Vec<Arbiter>>,
    shutting_down: AtomicBool,
    clients: clients::ClientTable,
}

impl BusHandle {
    pub fn new(config: BusConfig) -> Result<Self, BusError> {
        let recorder = match &config.trace {
            Some(path) => Some(Recorder::create(path)?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                me: Addr::host(BUS_ACTOR),
                registry: Registry::default(),
                subs: Subscriptions::default(),
                next_id: AtomicU64::new(1),
                recorder,
                default_deadline: config.default_deadline,
                arbiters: Mutex::new(Vec::new()),
                shutting_down: AtomicBool::new(false),
                clients: clients::ClientTable::default(),
            }),
        })
    }

    /// The bus's own address (`bus`).
    pub fn addr(&self) -> &Addr {
        &self.inner.me
    }

    /// Control-socket peers and the files they passed with requests (see [`clients`]).
    pub fn clients(&self) -> &clients::ClientTable {
        &self.inner.clients
    }

    /// A fresh envelope id, unique within this bus.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `recipient` as the actor at `addr`, replacing any earlier route. Bridges use
    /// this for remote addresses (`maitred@termina`); host actors go through the supervisor.
    pub fn register(&self, addr: Addr, recipient: Recipient<Deliver>) -> RestartCounter {
        let restarts = RestartCounter::default();
        self.register_route(
            addr,
            Route {
                recipient: Arc::new(recipient),
                restarts: restarts.clone(),
            },
        );
        restarts
    }

    pub(crate) fn register_route(&self, addr: Addr, route: Route) {
        if self.inner.registry.insert(addr.clone(), route) {
            tracing::debug!(actor = %addr, "registered");
        } else {
            tracing::debug!(actor = %addr, "pinned: registration ignored");
        }
    }

    /// Registers `recipient` at `addr` for good: later registrations and unregistrations of
    /// `addr` are ignored. Isolated replay pins its trace responders so that the replayed actor's
    /// own registrations (a VM's guest bridges) do not replace them.
    pub fn pin(&self, addr: Addr, recipient: Recipient<Deliver>) {
        self.inner.registry.pin(
            addr,
            Route {
                recipient: Arc::new(recipient),
                restarts: RestartCounter::default(),
            },
        );
    }

    pub fn unregister(&self, addr: &Addr) {
        if self.inner.registry.remove(addr).is_some() {
            tracing::debug!(actor = %addr, "unregistered");
        }
    }

    pub fn is_registered(&self, addr: &Addr) -> bool {
        addr == &self.inner.me || self.inner.registry.contains(addr)
    }

    /// Every actor the bus can route to, the bus itself first.
    pub fn actors(&self) -> Vec<ActorInfo> {
        let mut actors = vec![ActorInfo {
            addr: self.inner.me.clone(),
            restarts: 0,
        }];
        actors.extend(self.inner.registry.list());
        actors
    }

    /// How long the bus waits for the reply to `body`.
    pub fn deadline_for(&self, body: &Body) -> Duration {
        body.timeout().unwrap_or(self.inner.default_deadline)
    }

    /// Routes a request envelope and returns the reply envelope (an error reply when the actor is
    /// unknown, crashed or missed its deadline). Both are recorded in the trace.
    pub async fn route(&self, env: Envelope) -> Envelope {
        let deadline = self.deadline_for(&env.body);
        self.route_with_deadline(env, deadline).await
    }

    pub async fn route_with_deadline(&self, env: Envelope, deadline: Duration) -> Envelope {
        self.record(&env);
        let (request_id, trace) = (env.id, env.trace);
        let (asker, actor) = (env.from.clone(), env.to.clone());
        let body = self.deliver(env, deadline).await;
        let reply = Envelope {
            v: PROTOCOL_VERSION,
            id: self.next_id(),
            trace,
            from: actor,
            to: asker,
            reply_to: Some(request_id),
            body,
        };
        self.record(&reply);
        reply
    }

    /// Sends `body` from `from` to `to` and waits for the reply: the in-process way to ask.
    /// An error reply, unknown actor or missed deadline is the `Err`.
    pub fn request(
        &self,
        from: &Addr,
        to: &Addr,
        body: Body,
    ) -> impl Future<Output = Result<Body, CrosError>> + Send + use<> {
        let deadline = self.deadline_for(&body);
        self.request_with_deadline(from, to, body, deadline)
    }

    /// [`BusHandle::request`] with an explicit deadline.
    ///
    /// Not an `async fn`: the envelope is built and dispatched now, and the future returned holds
    /// only the pending delivery (a few hundred bytes instead of every layer's arguments), which
    /// matters when thousands are in flight.
    pub fn request_with_deadline(
        &self,
        from: &Addr,
        to: &Addr,
        body: Body,
        deadline: Duration,
    ) -> impl Future<Output = Result<Body, CrosError>> + Send + use<> {
        let id = self.next_id();
        let env = Envelope::new(id, id, from.clone(), to.clone(), body);
        let reply = if self.inner.recorder.is_some() {
            let bus = self.clone();
            Either::Left(Box::pin(async move {
                bus.route_with_deadline(env, deadline).await.body
            }))
        } else {
            // Untraced fast path: no reply envelope is built.
            Either::Right(self.deliver(env, deadline))
        };
        reply.map(|body| match body {
            Body::Error(e) => Err(e),
            other => Ok(other),
        })
    }

    /// Answers what needs no actor (requests to the bus, malformed or misaddressed requests),
    /// or finds the mailbox to deliver to.
    fn dispatch(&self, env: &Envelope) -> Dispatch {
        if env.body.kind() != BodyKind::Request {
            return Dispatch::Answer(
                CrosError::invalid(format!(
                    "only requests are routed; {} is a {}",
                    env.body.type_name(),
                    env.body.kind()
                ))
                .into(),
            );
        }
        if env.to == self.inner.me {
            return Dispatch::Answer(self.handle_bus_request(&env.body));
        }
        if let Some(kind) = env.to.kind()
            && env.body.request_target() != Some(kind)
        {
            return Dispatch::Answer(
                CrosError::invalid(format!(
                    "{} does not handle {}: {} expects {} requests",
                    env.to,
                    env.body.type_name(),
                    env.to,
                    family_of(kind)
                ))
                .into(),
            );
        }
        match self.inner.registry.get(&env.to) {
            Some(recipient) => Dispatch::Deliver(recipient),
            None => Dispatch::Answer(
                CrosError::not_found(format!("no actor {} is registered", env.to)).into(),
            ),
        }
    }

    /// Routes `env` at once when no actor is needed (requests to the bus, misaddressed ones),
    /// recording both like [`BusHandle::route`]; otherwise hands `env` back for
    /// [`BusHandle::route`]. Lets a connection answer such requests without spawning a task.
    pub fn route_now(&self, env: Envelope) -> RouteNow {
        match self.dispatch(&env) {
            Dispatch::Deliver(_) => RouteNow::NeedsActor(env),
            Dispatch::Answer(body) => {
                self.record(&env);
                let reply = env.reply(self.next_id(), body);
                self.record(&reply);
                RouteNow::Replied(reply)
            }
        }
    }

    /// Delivers `env` to its actor (or answers it now, see [`BusHandle::dispatch`]).
    fn deliver(
        &self,
        env: Envelope,
        deadline: Duration,
    ) -> impl Future<Output = Body> + Send + use<> {
        match self.dispatch(&env) {
            Dispatch::Answer(answer) => Either::Left(future::ready(answer)),
            Dispatch::Deliver(recipient) => Either::Right(deliver_to(&recipient, env, deadline)),
        }
    }

    fn handle_bus_request(&self, body: &Body) -> Body {
        match body {
            Body::Bus(BusRequest::ListActors {}) => Body::BusReply(BusReply::Actors {
                actors: self.actors(),
            }),
            Body::Bus(BusRequest::Ping { seq }) => Body::BusReply(BusReply::Pong { seq: *seq }),
            Body::Bus(BusRequest::Subscribe { .. }) => CrosError::invalid(
                "Subscribe needs a connection to deliver events to: send it over crosd's control \
                 socket, or call BusHandle::subscribe in-process",
            )
            .into(),
            other => CrosError::invalid(format!(
                "bus does not handle {}: it expects Bus requests",
                other.type_name()
            ))
            .into(),
        }
    }

    /// Answers a `Bus::Subscribe` request that arrived on a connection whose events go to `sink`.
    pub fn subscribe_request(&self, env: &Envelope, sink: EventSink) -> Envelope {
        self.record(env);
        let body = match &env.body {
            Body::Bus(BusRequest::Subscribe { prefixes }) => {
                self.subscribe(env.from.clone(), prefixes.clone(), sink);
                Body::BusReply(BusReply::Subscribed {})
            }
            other => CrosError::invalid(format!("{} is not a Subscribe", other.type_name())).into(),
        };
        let reply = env.reply(self.next_id(), body);
        self.record(&reply);
        reply
    }

    /// Forwards events whose type name starts with one of `prefixes` (all when empty) to `sink`.
    pub fn subscribe(&self, subscriber: Addr, prefixes: Vec<String>, sink: EventSink) {
        tracing::debug!(%subscriber, ?prefixes, "subscribed");
        self.inner.subs.subscribe(subscriber, prefixes, sink);
    }

    pub fn unsubscribe(&self, subscriber: &Addr) {
        self.inner.subs.unsubscribe(subscriber);
    }

    pub fn subscriber_count(&self) -> usize {
        self.inner.subs.count()
    }

    /// Publishes event `body` from `from` to every interested subscriber.
    pub fn publish(&self, from: &Addr, body: Body) {
        let type_name = body.type_name();
        let delivered = self.inner.subs.publish(&type_name, |sub| {
            let id = self.next_id();
            Envelope::new(id, 0, from.clone(), sub.clone(), body.clone())
        });
        if self.inner.recorder.is_some() {
            if delivered.is_empty() {
                // Nobody listened; the trace still shows the event happened.
                let id = self.next_id();
                self.record(&Envelope::new(
                    id,
                    0,
                    from.clone(),
                    self.inner.me.clone(),
                    body,
                ));
            }
            for env in &delivered {
                self.record(env);
            }
        }
    }

    /// Hands `env` to the trace recorder, if one is running.
    pub fn record(&self, env: &Envelope) {
        if let Some(r) = &self.inner.recorder {
            r.record(env);
        }
    }

    pub fn is_tracing(&self) -> bool {
        self.inner.recorder.is_some()
    }

    pub(crate) fn adopt_arbiter(&self, arbiter: Arbiter) {
        self.inner
            .arbiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(arbiter);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Stops every supervised actor (their arbiters) and flushes the trace. Requests routed
    /// afterwards get `Unavailable` errors.
    pub fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let arbiters: Vec<Arbiter> = std::mem::take(
            &mut *self
                .inner
                .arbiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for a in &arbiters {
            a.stop();
        }
        for a in arbiters {
            let _ = a.join();
        }
        if let Some(r) = &self.inner.recorder {
            r.stop();
        }
    }
}

/// Sends `env` into `recipient`'s mailbox now and waits for the reply until `deadline`.
fn deliver_to(
    recipient: &Recipient<Deliver>,
    env: Envelope,
    deadline: Duration,
) -> impl Future<Output = Body> + Send + use<> {
    let (family, variant) = (env.body.family(), env.body.variant());
    let to = env.to.clone();
    let pending = deadline::with_deadline(recipient.send(Deliver::new(env, deadline)), deadline);
    async move {
        match pending.await {
            Some(Ok(body)) => body,
            Some(Err(MailboxError::Closed)) => CrosError::unavailable(format!(
                "{to} stopped while handling {family}::{variant} (crashed?); the supervisor restarts it"
            ))
            .into(),
            Some(Err(MailboxError::Timeout)) | None => CrosError::timeout(format!(
                "{to} did not answer {family}::{variant} within {deadline:?}"
            ))
            .into(),
        }
    }
}

/// The reply of an actor handed a body of another actor's family (the bus checks families
/// before delivery, so this only fires for a mis-registered route).
pub(crate) fn not_mine(actor: &str, body: &Body) -> Body {
    CrosError::invalid(format!("{actor} does not handle {}", body.type_name())).into()
}

/// The request family an actor kind expects (`Concierge`, `VmlogForwarder`, …).
fn family_of(kind: ActorKind) -> &'static str {
    match kind {
        ActorKind::Bus => "Bus",
        ActorKind::Imageloader => "Imageloader",
        ActorKind::Concierge => "Concierge",
        ActorKind::Cicerone => "Cicerone",
        ActorKind::Seneschal => "Seneschal",
        ActorKind::VmlogForwarder => "VmlogForwarder",
        ActorKind::Maitred => "Maitred",
        ActorKind::Tremplin => "Tremplin",
        ActorKind::Garcon => "Garcon",
        ActorKind::Crosvm => "Crosvm",
        ActorKind::Patchpanel => "Patchpanel",
        ActorKind::Chunneld => "Chunneld",
    }
}

#[cfg(test)]
mod tests;
