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

/// What the bus itself announces.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum BusEvent {
    /// crosd is up: what it runs with. The first record of every trace, so that an isolated
    /// replay elsewhere can tell the recording's directories from its own.
    DaemonStarted {
        state_dir: String,
        run_dir: String,
        hypervisor: String,
    },
    /// Control connection `client` is user `uid` (the kernel's word, SO_PEERCRED). Recorded in
    /// the trace only, never published: an isolated replay gives the recorded requests the
    /// owners they had.
    ClientConnected { client: Addr, uid: u32, gid: u32 },
}

/// One registered actor.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorInfo {
    pub addr: Addr,
    /// How many times the supervisor restarted it since crosd started.
    pub restarts: u32,
}
