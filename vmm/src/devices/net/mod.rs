//! virtio-net (virtio 1.2, 5.1) with a tap host side. The device model lives here, beside
//! vsock's, because two transports run it: our virtio-mmio (`devices::virtio::net_mmio`, on the
//! device thread every virtio device uses) and the vhost-user backend QEMU talks to
//! (`vhost_user::net`).
//!
//! * `tap`: /dev/net/tun with vnet headers, offloads;
//! * `header`: `virtio_net_hdr_v1` and which offloads a frame needs;
//! * `chain`: descriptor chains validated before guest memory is touched;
//! * `device`: features, config space, rx and tx queue work;
//! * `error`: what drops a frame and what stops the device.

pub mod chain;
pub mod device;
pub mod error;
pub mod header;
pub mod tap;

pub use device::{
    MAX_BUFFER_SIZE, MacAddr, NUM_QUEUES, NetConfig, NetDevice, NetEvent, NetStats, QUEUE_SIZE,
    RX_QUEUE, TX_QUEUE, VIRTIO_ID_NET, tap_offload,
};
pub use error::{FrameError, NetError};
pub use header::HEADER_SIZE;
pub use tap::Tap;
