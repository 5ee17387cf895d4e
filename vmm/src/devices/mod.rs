//! Devices: the I/O and MMIO buses, legacy PC devices, and the virtio device models. Each
//! virtio device is driven through its queues by a transport (our own virtio-mmio, or
//! vhost-user for QEMU) and never trusts what the guest wrote in memory.

pub mod bus;
pub mod legacy;
pub mod net;
pub mod virtio;
pub mod vsock;
