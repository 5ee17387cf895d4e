//! vmlog_forwarder: guest logs shipped by vm_syslog (host port 9999).

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum Severity {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Guest wall time, nanoseconds since the epoch.
    pub time_ns: u64,
    pub severity: Severity,
    /// `kernel` or the program name.
    pub source: String,
    pub message: String,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum VmlogRequest {
    /// Sent by vm_syslog; the VM is known from the connection, never from the message.
    Records { records: Vec<LogRecord> },
    /// Where the log file of VM `vm` is.
    GetLogPath { vm: String },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum VmlogReply {
    Written { count: u32 },
    LogPath { path: String },
}
