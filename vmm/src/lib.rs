//! The virtual machine monitor and its virtio devices.
