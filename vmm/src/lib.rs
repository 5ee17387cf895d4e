//! The virtual machine monitor and its virtio devices.

pub mod acpi;
pub mod arch;
pub mod config;
pub mod control;
pub mod devices;
pub mod error;
pub mod loader;
pub mod memory;
pub mod probe;
pub mod run;
pub mod seccomp;
pub mod vcpu;
pub mod vhost_user;
