//! garcon: the agent inside a container (reports to host 8889).

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum GarconRequest {
    /// Spawns vshd, which dials the host on `port`.
    LaunchVshd {
        port: u32,
    },
    LaunchApplication {
        desktop_file_id: String,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum GarconReply {
    Ack {},
    Launched { pid: u32 },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum GarconEvent {
    /// First message from a container: cicerone checks the token.
    ContainerReady { token: String, garcon_port: u32 },
}
