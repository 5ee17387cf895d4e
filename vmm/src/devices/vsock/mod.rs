//! virtio-vsock (virtio 1.2, 5.10) with a Unix-socket host side (Firecracker's hybrid vsock).
//! The device model lives here rather than beside the other virtio devices because two
//! transports run it: our virtio-mmio (`devices::virtio::vsock_mmio`, on the same device
//! thread as every virtio device) and the vhost-user backend (`vhost_user::vsock`).
//!
//! * `packet`: the header and descriptor-chain parsing (all guest input validated here);
//! * `connection`: one stream's state machine and credit-based flow control;
//! * `muxer`: guest connections ↔ host Unix sockets, one non-blocking epoll set;
//! * `device`: queues, features, config space, the event entry point transports call.

pub mod connection;
pub mod device;
pub mod error;
pub mod muxer;
pub mod packet;

pub use device::{
    DeviceEvent, EVENT_QUEUE, NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, UsedQueues,
    VIRTIO_ID_VSOCK, VsockConfig, VsockDevice,
};
pub use error::{PacketError, VsockError};
pub use muxer::{CONNECT_TIMEOUT, MAX_CONNECTIONS, port_path};
