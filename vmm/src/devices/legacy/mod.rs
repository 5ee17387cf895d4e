//! Legacy PC devices on the port I/O bus: the 8250 UART on COM1, the i8042 controller,
//! whose CPU-reset command is how a guest (Linux `reboot=k`, our payloads) ends the VM, the
//! ACPI PM registers, and the ACPI GED event register (the power button).

pub mod acpi_pm;
pub mod console;
pub mod ged;
pub mod i8042;
pub mod serial;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// A vm-superio trigger backed by an eventfd: an irqfd for interrupts, or the VMM's exit event.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl EventFdTrigger {
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }
}
