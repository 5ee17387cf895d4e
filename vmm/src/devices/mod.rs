//! Virtio device models. Each one is driven through its queues by a transport (our own
//! virtio-mmio, or vhost-user for QEMU) and never trusts what the guest wrote in memory.

pub mod vsock;
