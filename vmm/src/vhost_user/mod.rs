//! vhost-user backends: our devices served to another VMM (QEMU) over the vhost-user protocol.

pub mod vsock;
