//! The register of the ACPI Generic Event Device (GED, `ACPI0013`): how the VMM tells the guest
//! that a platform event happened. A hardware-reduced ACPI machine has no fixed power button,
//! so the VMM sets the event's bit here and raises the GED interrupt; the guest's ACPI
//! interpreter runs the DSDT's `_EVT` method, which reads this register and, for the power
//! button, notifies the `PNP0C0C` device (Linux's `button` driver turns that into KEY_POWER).
//!
//! Reading the register returns the pending events and clears them, so each event is seen
//! once. Cloud Hypervisor's `AcpiGedDevice` works the same way.

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// I/O port of the event register (one byte), beside the ACPI PM registers at 0x600.
pub const GED_PORT: u64 = 0x610;
pub const GED_PORT_LEN: u64 = 1;
/// IOAPIC pin of the GED interrupt: the last one, so it never collides with the virtio-mmio
/// devices, which are numbered up from [`crate::config::VIRTIO_IRQ_BASE`].
pub const GED_IRQ: u32 = 23;

/// An event the VMM can signal through the GED, as its bit in the event register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GedEvent {
    /// The power button was pressed: the guest should power off in an orderly way.
    PowerButton = 1 << 0,
}

/// Errors raising a GED event.
#[derive(Debug, thiserror::Error)]
pub enum GedError {
    #[error("cannot raise the GED interrupt for {event:?}")]
    Interrupt {
        event: GedEvent,
        #[source]
        source: std::io::Error,
    },
}

/// The GED event register on the I/O bus, and the interrupt that announces new events.
pub struct Ged {
    pending: u8,
    interrupt: EventFdTrigger,
}

impl Ged {
    /// `interrupt` is the irqfd of [`GED_IRQ`].
    pub fn new(interrupt: EventFdTrigger) -> Self {
        Self {
            pending: 0,
            interrupt,
        }
    }

    /// Marks `event` pending and interrupts the guest.
    pub fn notify(&mut self, event: GedEvent) -> Result<(), GedError> {
        self.pending |= event as u8;
        self.interrupt
            .trigger()
            .map_err(|source| GedError::Interrupt { event, source })
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [byte]) => *byte = std::mem::take(&mut self.pending),
            (_, data) => {
                tracing::debug!(offset, len = data.len(), "GED: ignored read");
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // The register is read-only; the guest acknowledges an event by reading it.
        tracing::debug!(offset, len = data.len(), "GED: ignored write");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    fn ged() -> (Ged, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (Ged::new(EventFdTrigger(irq.try_clone().unwrap())), irq)
    }

    fn read_byte(ged: &mut Ged) -> u8 {
        let mut b = [0xaa];
        ged.read(0, &mut b);
        b[0]
    }

    #[test]
    fn no_event_reads_zero_and_raises_nothing() {
        let (mut ged, irq) = ged();
        assert_eq!(read_byte(&mut ged), 0);
        assert!(irq.read().is_err(), "no interrupt without an event");
    }

    #[test]
    fn power_button_interrupts_and_reads_once() {
        let (mut ged, irq) = ged();
        ged.notify(GedEvent::PowerButton).unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read_byte(&mut ged), GedEvent::PowerButton as u8);
        // Reading acknowledged it.
        assert_eq!(read_byte(&mut ged), 0);
    }

    #[test]
    fn presses_before_the_guest_reads_coalesce() {
        let (mut ged, irq) = ged();
        ged.notify(GedEvent::PowerButton).unwrap();
        ged.notify(GedEvent::PowerButton).unwrap();
        assert_eq!(irq.read().unwrap(), 2);
        assert_eq!(read_byte(&mut ged), GedEvent::PowerButton as u8);
        assert_eq!(read_byte(&mut ged), 0);
    }

    #[test]
    fn writes_and_odd_accesses_change_nothing() {
        let (mut ged, _irq) = ged();
        ged.notify(GedEvent::PowerButton).unwrap();
        ged.write(0, &[0]);
        let mut wide = [0xaa; 2];
        ged.read(0, &mut wide);
        assert_eq!(wide, [0, 0], "a two-byte read is not the register");
        let mut past = [0xaa];
        ged.read(1, &mut past);
        assert_eq!(past, [0]);
        // The event is still pending for a proper one-byte read.
        assert_eq!(read_byte(&mut ged), GedEvent::PowerButton as u8);
    }
}
