//! The virtual machine monitor and its virtio devices.

pub mod acpi;
pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod devices;
pub mod error;
pub mod event_channel;
pub mod loader;
pub mod memory;
pub mod probe;
pub mod run;
pub mod seccomp;
pub mod signals;
pub mod thread;
pub mod vcpu;
pub mod vhost_user;
pub mod vm;
