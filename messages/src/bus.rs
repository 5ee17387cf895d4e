//! Requests to the bus itself (actor name `bus`).

use crate::Addr;
use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum BusRequest {
    /// Lists every registered actor.
    ListActors {},
    /// Round trip through the bus only; used by benchmarks and health checks.
    Ping { seq: u64 },
    /// Asks the bus to forward events whose type name starts with one of `prefixes` (all events
    /// when empty) to this connection.
    Subscribe {
        #[serde(default)]
        prefixes: Vec<String>,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum BusReply {
    Actors { actors: Vec<ActorInfo> },
    Pong { seq: u64 },
    Subscribed {},
}

/// One registered actor.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorInfo {
    pub addr: Addr,
    /// How many times the supervisor restarted it since crosd started.
    pub restarts: u32,
}
