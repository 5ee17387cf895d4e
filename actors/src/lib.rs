//! The host actor bus and host actors.
//!
//! [`bus`] routes [`cros_messages::Envelope`]s between named actors with deadlines, publishes
//! events and records traces; [`supervisor`] runs each actor on its own arbiter and restarts it
//! after a panic; [`host`] starts crosd's host actors, one module each, configured by [`config`].

pub mod bridge;
pub mod bus;
pub mod chunneld;
pub mod cicerone;
pub mod concierge;
pub mod config;
pub mod host;
pub mod imageloader;
pub mod patchpanel;
pub mod seneschal;
pub mod supervisor;
pub mod vmlog_forwarder;

pub use bus::{BusConfig, BusHandle, Deliver, EventSink};
pub use config::{HostConfig, HypervisorConfig, HypervisorKind, NetworkConfig};
pub use host::{spawn_host_actor, start_host_actors};
pub use supervisor::{spawn_supervised, spawn_supervised_on};
