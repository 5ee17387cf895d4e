//! The vsh protocol between the `vsh` client and `vshd` (REFERENCE.md "vsh / vshd").
//!
//! Frames are the same length-prefixed postcard frames as everywhere, capped at
//! [`MAX_VSH_FRAME`]; data messages carry at most [`MAX_DATA`] bytes.

use serde::{Deserialize, Serialize};

/// The largest vsh frame on the wire.
pub const MAX_VSH_FRAME: usize = 4096;
/// The most payload bytes one data message carries.
pub const MAX_DATA: usize = 4000;
/// The target that names the VM itself rather than a container.
pub const VM_SHELL: &str = "/vm_shell";
/// Exit code the client uses when the server sent none.
pub const NO_EXIT_STATUS: i32 = 123;

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupConnectionRequest {
    /// Container name, or [`VM_SHELL`].
    pub target: String,
    pub user: String,
    pub env: Vec<(String, String)>,
    /// Empty: a login shell.
    pub argv: Vec<String>,
    pub cwd: String,
    pub window_rows: u16,
    pub window_cols: u16,
    pub nopty: bool,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectionStatus {
    Ready,
    Failed,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupConnectionResponse {
    pub status: ConnectionStatus,
    pub description: String,
    pub pid: u32,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VshSignal {
    Hup,
    Int,
    Quit,
    Term,
}

/// Client → server after setup.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// Empty data means EOF on stdin.
    Stdin(Vec<u8>),
    Resize {
        rows: u16,
        cols: u16,
    },
    Signal(VshSignal),
}

/// Server → client after setup.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// Empty data means EOF on that stream.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit {
        code: i32,
    },
}
