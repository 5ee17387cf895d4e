//! seneschal: 9P file-sharing servers (REFERENCE.md, "Seneschal").

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapEntry {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum SeneschalRequest {
    StartServer {
        /// vsock port; 0 picks the next free one from 16384.
        #[serde(default)]
        port: u32,
        accept_cid: u32,
        #[serde(default)]
        uid_map: Vec<IdMapEntry>,
        #[serde(default)]
        gid_map: Vec<IdMapEntry>,
    },
    StopServer {
        handle: u64,
    },
    SharePath {
        handle: u64,
        path: String,
        #[serde(default)]
        writable: bool,
    },
    UnsharePath {
        handle: u64,
        path: String,
    },
    ListServers {},
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub handle: u64,
    pub port: u32,
    pub accept_cid: u32,
    pub shared: Vec<String>,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum SeneschalReply {
    ServerStarted { handle: u64, port: u32 },
    ServerStopped { handle: u64 },
    PathShared { path: String },
    PathUnshared { path: String },
    Servers { servers: Vec<ServerInfo> },
}
