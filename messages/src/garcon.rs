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
    GetDebugInformation {},
    /// Port forwarding (chunneld): garcon connects to 127.0.0.1:`port` in the container and
    /// answers Ack; from then on this connection carries that TCP stream's raw bytes, both
    /// ways, and no more envelopes. Appended, so earlier requests keep their postcard tags.
    ForwardPort {
        port: u16,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum GarconReply {
    Ack {},
    Launched { pid: u32 },
    DebugInformation { text: String },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum GarconEvent {
    /// The TCP ports the container listens on (from /proc/net/tcp{,6}), sent when they change;
    /// `token` says which container (for port forwarding).
    ListeningPorts { token: String, ports: Vec<u16> },
}
