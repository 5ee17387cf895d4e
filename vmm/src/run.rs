//! `crosvm run` in one call: build the VM from its [`VmConfig`] ([`crate::builder`]) and run
//! it ([`crate::vm`]) until it ends.

pub use crate::config::{BlockConfig, MAX_VCPUS, SerialOutput, VIRTIO_IRQ_BASE, VmConfig};
pub use crate::devices::net::NetConfig;
pub use crate::error::VmmError;
pub use crate::vm::VmExit;

/// Builds and runs the VM `config` describes; returns how it ended. The calling thread is
/// not confined: it may go on after the VM (see [`crate::vm::Vm::confine_event_loop`]).
pub fn run(config: &VmConfig) -> Result<VmExit, VmmError> {
    crate::builder::build_vm(config)?.run()
}
