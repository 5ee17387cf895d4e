//! The virtual machine monitor and its virtio devices. `crosvm run` is
//! [`builder::build_vm`] (a [`vm::Vm`] from a [`config::VmConfig`]: memory, boot state,
//! legacy devices, one `attach_*` per virtio device, ACPI from what was attached) followed by
//! [`vm::Vm::run`] (one epoll loop over every source that can end or change the VM). Every
//! thread starts through [`thread::spawn`]; every virtio device runs on the one device thread
//! kind, `devices::virtio::worker`. Imports go one way: the builder and the VM use the
//! devices and the arch code, the probe uses the builder, nothing uses the probe.

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
