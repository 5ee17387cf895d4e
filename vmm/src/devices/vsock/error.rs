//! Errors of the vsock device. Packet errors describe what was wrong with a guest descriptor
//! chain; they make the device drop the packet (or reset its connection), never stop it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// A descriptor chain or header the guest handed us is malformed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("descriptor chain holds {len} header bytes, need 44")]
    ShortHeader { len: usize },
    #[error("rx buffer holds {len} bytes, too small for a 44-byte header")]
    ShortRxBuffer { len: usize },
    #[error("descriptor {index} of a tx chain is device-writable; tx buffers must be read-only")]
    UnexpectedWriteOnly { index: usize },
    #[error("descriptor {index} of an rx chain is device-readable; rx buffers must be write-only")]
    UnexpectedReadOnly { index: usize },
    #[error("descriptor chain longer than {max} descriptors")]
    ChainTooLong { max: usize },
    #[error("descriptor points outside guest memory: addr {addr:#x} len {len}")]
    InvalidAddress { addr: u64, len: u32 },
    #[error("header len {len} exceeds the {max}-byte packet limit")]
    PayloadTooLarge { len: u32, max: u32 },
    #[error("header len {len} exceeds the {available} payload bytes in the chain")]
    PayloadExceedsChain { len: u32, available: u64 },
}

/// Errors of the device as a whole (setup, event loop, host sockets).
#[derive(Debug, Error)]
pub enum VsockError {
    #[error("guest cid {0} is reserved (cids 0-2 and u32::MAX are not guest cids)")]
    InvalidGuestCid(u64),
    #[error("cannot listen on host socket {path}: {reason}")]
    BindUds { path: PathBuf, reason: io::Error },
    #[error("epoll: {0}")]
    Epoll(io::Error),
    #[error("accepting a host connection on {path}: {reason}")]
    Accept { path: PathBuf, reason: io::Error },
    #[error("queue: {0}")]
    Queue(virtio_queue::Error),
    #[error("signalling the guest: {0}")]
    Interrupt(io::Error),
}
