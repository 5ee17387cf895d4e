//! The supervisor: runs each host actor on its own actix [`Arbiter`] (thread) and restarts it when
//! it crashes.
//!
//! actix does not catch panics: a panicking handler unwinds out of the actor's context future.
//! The supervisor runs that future as its own task on the arbiter, so tokio catches the panic at
//! the task boundary; the arbiter thread and the supervisor loop (a sibling task) survive, read
//! the panic message from the task's `JoinError`, log it, build a fresh actor and register its
//! new mailbox in place of the dead one. Requests in flight at the crash get an `Unavailable`
//! reply from the bus (the dead mailbox drops their reply channel), never a hang.

use crate::bus::{BusHandle, Deliver, RestartCounter, Route};
use actix::{Actor, Arbiter, ArbiterHandle, AsyncContext, Context, Handler};
use cros_messages::Addr;
use std::any::Any;
use std::time::{Duration, Instant};

/// Mailbox size of a supervised actor. actix's default (16) makes a busy sender wait for the
/// actor every 16 messages; a deeper mailbox lets bursts through.
pub const MAILBOX_CAPACITY: usize = 1024;

/// An actor that crashes again within this long after a (re)start is in a crash loop.
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(1);
/// Pause before restarting an actor in a crash loop, multiplied by its restart count (capped).
const CRASH_LOOP_PAUSE: Duration = Duration::from_millis(100);
const CRASH_LOOP_MAX_PAUSE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start an arbiter thread for {actor}: {source}")]
    Arbiter { actor: Addr, source: std::io::Error },
    #[error("cannot start {actor}: its arbiter has stopped")]
    ArbiterStopped { actor: Addr },
    #[error("{actor} failed while starting (its constructor panicked)")]
    DiedAtStart { actor: Addr },
}

/// Starts the actor `factory` builds on a new arbiter, registers it at `addr`, and keeps it
/// running: after a crash, `factory` builds the replacement. Returns once the first instance is
/// registered. Must run inside an actix `System`.
pub async fn spawn_supervised<A, F>(
    bus: &BusHandle,
    addr: Addr,
    factory: F,
) -> Result<(), SupervisorError>
where
    A: Actor<Context = Context<A>> + Handler<Deliver>,
    F: Fn() -> A + Send + 'static,
{
    let arbiter = Arbiter::try_new().map_err(|source| SupervisorError::Arbiter {
        actor: addr.clone(),
        source,
    })?;
    let handle = arbiter.handle();
    bus.adopt_arbiter(arbiter);
    spawn_supervised_on(bus, addr, &handle, factory).await
}

/// Like [`spawn_supervised`], on an existing arbiter: for actors light enough to share a thread
/// (with each other, or with their callers, which saves a thread hop per message). A panic still
/// only ends the actor's own task; a blocking handler stalls everything on that arbiter.
pub async fn spawn_supervised_on<A, F>(
    bus: &BusHandle,
    addr: Addr,
    arbiter: &ArbiterHandle,
    factory: F,
) -> Result<(), SupervisorError>
where
    A: Actor<Context = Context<A>> + Handler<Deliver>,
    F: Fn() -> A + Send + 'static,
{
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (bus2, addr2) = (bus.clone(), addr.clone());
    // The supervisor future holds the actor's context, which is not Send: build it on the
    // arbiter's thread and run it there as a local task.
    let sent = arbiter.spawn_fn(move || {
        actix::spawn(supervise(bus2, addr2, factory, ready_tx));
    });
    if !sent {
        return Err(SupervisorError::ArbiterStopped { actor: addr });
    }
    ready_rx
        .await
        .map_err(|_| SupervisorError::DiedAtStart { actor: addr })
}

async fn supervise<A, F>(
    bus: BusHandle,
    addr: Addr,
    factory: F,
    ready: tokio::sync::oneshot::Sender<()>,
) where
    A: Actor<Context = Context<A>> + Handler<Deliver>,
    F: Fn() -> A + 'static,
{
    let restarts = RestartCounter::default();
    let mut ready = Some(ready);
    loop {
        let started = Instant::now();
        let actor = factory();
        let mut ctx: Context<A> = Context::new();
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        bus.register_route(
            addr.clone(),
            Route {
                recipient: std::sync::Arc::new(ctx.address().recipient()),
                restarts: restarts.clone(),
            },
        );
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        let outcome = actix::spawn(ctx.into_future(actor)).await;
        if bus.is_shutting_down() {
            return;
        }
        let why = match outcome {
            Ok(()) => "it stopped itself".to_string(),
            Err(e) if e.is_panic() => format!("panic: {}", panic_message(e.into_panic())),
            Err(e) => format!("its task was cancelled: {e}"),
        };
        let count = restarts.bump();
        tracing::error!(actor = %addr, restarts = count, "actor crashed ({why}); restarting");
        if started.elapsed() < CRASH_LOOP_WINDOW {
            let pause = (CRASH_LOOP_PAUSE * count).min(CRASH_LOOP_MAX_PAUSE);
            tokio::time::sleep(pause).await;
        }
    }
}

/// The message of a panic payload (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "(panic payload is not a string)".to_string(),
        },
    }
}
