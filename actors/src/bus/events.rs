//! Event subscriptions: in-process subscribers and control-socket connections alike hand the bus
//! an [`EventSink`]; the bus forwards every published event whose type name matches one of the
//! subscription's prefixes.

use cros_messages::{Addr, Envelope};
use std::sync::{Arc, RwLock};

/// Where a subscriber's events go. Returns false once the subscriber is gone (its channel
/// closed), which drops the subscription.
pub type EventSink = Arc<dyn Fn(Envelope) -> bool + Send + Sync>;

/// An [`EventSink`] feeding a tokio channel (a control-socket connection's writer, or a test).
pub fn channel_sink(tx: tokio::sync::mpsc::UnboundedSender<Envelope>) -> EventSink {
    Arc::new(move |env| tx.send(env).is_ok())
}

/// An event the bus published, as an actor that subscribed with [`actor_sink`] receives it.
pub struct Published(pub Envelope);

impl actix::Message for Published {
    type Result = ();
}

/// An [`EventSink`] handing each event to actor `me` as a [`Published`] message, for as long
/// as the actor lives (host actors that follow guest actors' events: concierge, cicerone).
pub fn actor_sink<A>(me: actix::WeakAddr<A>) -> EventSink
where
    A: actix::Actor + actix::Handler<Published>,
    A::Context: actix::dev::ToEnvelope<A, Published>,
{
    Arc::new(move |env| match me.upgrade() {
        Some(me) => {
            me.do_send(Published(env));
            true
        }
        None => false,
    })
}

struct Subscription {
    subscriber: Addr,
    /// Type-name prefixes (`ConciergeEvent`, `CiceroneEvent::ContainerStarted`); empty = all.
    prefixes: Vec<String>,
    sink: EventSink,
}

impl Subscription {
    fn wants(&self, type_name: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| type_name.starts_with(p))
    }
}

#[derive(Default)]
pub(crate) struct Subscriptions {
    subs: RwLock<Vec<Subscription>>,
}

impl Subscriptions {
    /// Adds a subscription; a subscriber that subscribes again replaces its earlier one.
    pub fn subscribe(&self, subscriber: Addr, prefixes: Vec<String>, sink: EventSink) {
        let mut subs = self.subs.write().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| s.subscriber != subscriber);
        subs.push(Subscription {
            subscriber,
            prefixes,
            sink,
        });
    }

    pub fn unsubscribe(&self, subscriber: &Addr) {
        let mut subs = self.subs.write().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| &s.subscriber != subscriber);
    }

    /// Calls `deliver(subscriber)` for each interested subscriber to build its copy of the event,
    /// hands it to the sink, and drops subscriptions whose sink is gone. Returns the envelopes
    /// delivered (for the trace).
    pub fn publish(
        &self,
        type_name: &str,
        mut make: impl FnMut(&Addr) -> Envelope,
    ) -> Vec<Envelope> {
        let mut delivered = Vec::new();
        let mut dead = Vec::new();
        {
            let subs = self.subs.read().unwrap_or_else(|p| p.into_inner());
            for s in subs.iter().filter(|s| s.wants(type_name)) {
                let env = make(&s.subscriber);
                if (s.sink)(env.clone()) {
                    delivered.push(env);
                } else {
                    dead.push(s.subscriber.clone());
                }
            }
        }
        for d in dead {
            self.unsubscribe(&d);
        }
        delivered
    }

    pub fn count(&self) -> usize {
        self.subs.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}
