//! Errors of the virtio-net device. A [`FrameError`] is about one frame or one descriptor
//! chain the guest (or the tap) handed us: the frame is dropped and counted, the device serves
//! on. A [`NetError`] stops the device: the transport asks the driver to reset it
//! (DEVICE_NEEDS_RESET) or, over vhost-user, the backend logs it.

use std::io;

use thiserror::Error;

/// One frame or chain we could not pass on.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes is shorter than the 12-byte virtio-net header")]
    ShortFrame { len: usize },
    #[error("frame of {len} bytes (header included) exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("descriptor {index} of a tx chain is device-writable; tx buffers must be read-only")]
    WriteOnlyInTx { index: usize },
    #[error("descriptor {index} of an rx chain is device-readable; rx buffers must be write-only")]
    ReadOnlyInRx { index: usize },
    #[error("descriptor points outside guest memory: addr {addr:#x} len {len}")]
    InvalidAddress { addr: u64, len: u32 },
    #[error("descriptor chain is cut short (a loop, or a next index outside the queue)")]
    BrokenChain,
    #[error("descriptor chain longer than {max} descriptors")]
    ChainTooLong { max: usize },
    #[error("rx buffer of {len} bytes cannot hold the 12-byte header")]
    ShortRxBuffer { len: u32 },
    #[error("frame of {len} bytes does not fit the guest's rx buffer of {capacity} bytes")]
    FrameExceedsBuffer { len: usize, capacity: u64 },
    #[error("frame asks for {what}, which was not negotiated")]
    OffloadNotNegotiated { what: &'static str },
    #[error("unknown GSO type {gso_type}")]
    UnknownGsoType { gso_type: u8 },
    #[error("the tap refused the frame: {reason}")]
    TapRefused { reason: String },
}

/// Errors of the device as a whole.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot open tap {name}: {reason}")]
    OpenTap { name: String, reason: String },
    #[error("tap {name}: TUNSETOFFLOAD {flags:#x}: {reason}")]
    SetOffload {
        name: String,
        flags: u32,
        reason: io::Error,
    },
    #[error("tap {name} is gone: {reason}")]
    TapVanished { name: String, reason: io::Error },
    #[error("tap {name}: {reason}")]
    TapIo { name: String, reason: io::Error },
    #[error("queue: {0}")]
    Queue(virtio_queue::Error),
    #[error("invalid MAC address {0:?} (expected six hex bytes, aa:bb:cc:dd:ee:ff)")]
    InvalidMac(String),
}
