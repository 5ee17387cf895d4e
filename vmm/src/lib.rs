//! The virtual machine monitor and its virtio devices.

pub mod devices;
pub mod vhost_user;
pub mod arch;
pub mod memory;
