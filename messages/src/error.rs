//! Errors: [`CrosError`] travels in replies; [`FrameError`] is what reading a stream can go wrong with.

use serde::{Deserialize, Serialize};

/// Category of a failed request; clients branch on this, humans read the message.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::IntoStaticStr,
)]
pub enum ErrorKind {
    /// The named VM, disk, container, actor or operation does not exist.
    NotFound,
    /// A field of the request is malformed (bad name, bad size, bad JSON).
    InvalidArgument,
    /// The thing to create is already there (or already running).
    AlreadyExists,
    /// The request is valid but the current state forbids it (e.g. export while running).
    FailedPrecondition,
    /// No reply came before the deadline.
    Timeout,
    /// The peer or a resource is not reachable (daemon down, VM gone).
    Unavailable,
    /// The caller may not ask this (peer credentials, guest asking for another VM).
    PermissionDenied,
    /// Peers speak different protocol versions.
    VersionMismatch,
    /// The actor does not implement this request (yet).
    Unsupported,
    /// A bug or an unexpected host failure; the message says which.
    Internal,
}

/// An error reply: a kind to branch on and a message naming the bad input.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CrosError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CrosError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
}

/// What can go wrong reading or writing a framed stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    /// The length prefix exceeds the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The bytes are not a valid postcard encoding of the expected type.
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    /// The peer's Hello carried another protocol version.
    #[error("protocol version mismatch: we speak v{ours}, peer {peer} speaks v{theirs}")]
    VersionMismatch {
        ours: u16,
        theirs: u16,
        peer: String,
    },
}

impl FrameError {
    /// Maps a framing failure onto the reply error a client shows.
    pub fn to_cros_error(&self) -> CrosError {
        let kind = match self {
            FrameError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
            FrameError::Decode(_) | FrameError::TooLarge { .. } => ErrorKind::InvalidArgument,
            FrameError::Io(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                ErrorKind::Timeout
            }
            _ => ErrorKind::Unavailable,
        };
        CrosError::new(kind, self.to_string())
    }
}
