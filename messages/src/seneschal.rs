//! seneschal: 9P file-sharing servers (REFERENCE.md, "Seneschal").
//!
//! concierge starts one server per VM (StartServer, a host actor's request only) and stops it
//! with the VM; users share and unshare folders of their own VMs (SharePath names the VM, and
//! the client passes the folder as an O_PATH descriptor with the request: crosd never opens a
//! user's path itself). A share appears in the VM at `/mnt/shared/<name>`, `name` being what
//! PathShared answers.

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
        /// The VM the server is for.
        #[serde(default)]
        vm: String,
        /// The VM's owner: the server runs as this user (an unprivileged stand-in for root).
        #[serde(default)]
        owner_uid: u32,
        /// The VM's runtime directory: the server listens on `<run_dir>/vsock.sock_<port>`,
        /// where the VM's hybrid vsock device connects a guest that dials host port `port`.
        #[serde(default)]
        run_dir: String,
    },
    StopServer {
        handle: u64,
    },
    /// Shares the folder the client passed (an O_PATH descriptor of a directory); `path` is
    /// its host path, which names the share and is kept to share it again at the next boot.
    SharePath {
        vm: String,
        path: String,
        #[serde(default)]
        writable: bool,
    },
    /// Withdraws a share, named by its host path or its name under /mnt/shared.
    UnsharePath {
        vm: String,
        path: String,
    },
    ListServers {},
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    /// The name under /mnt/shared in the VM.
    pub name: String,
    /// The host folder.
    pub path: String,
    pub writable: bool,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub handle: u64,
    pub port: u32,
    pub accept_cid: u32,
    #[serde(default)]
    pub vm: String,
    /// The uid the server process runs as.
    #[serde(default)]
    pub uid: u32,
    /// The server process.
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub shares: Vec<ShareInfo>,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum SeneschalReply {
    ServerStarted {
        handle: u64,
        port: u32,
    },
    ServerStopped {
        handle: u64,
    },
    /// `path`: the share's name under /mnt/shared.
    PathShared {
        path: String,
    },
    PathUnshared {
        path: String,
    },
    Servers {
        servers: Vec<ServerInfo>,
    },
}
