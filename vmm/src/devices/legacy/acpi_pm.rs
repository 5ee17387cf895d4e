//! The hardware-reduced ACPI power-management registers the FADT points to: the sleep
//! control register (a guest entering S5 — Linux `poweroff` — ends the VM), the sleep status
//! register, and the reset register (Linux `reboot` through ACPI). Without them a Linux guest
//! that powers off would halt forever.

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// Port of the sleep control register; status at +1, reset at +2.
pub const ACPI_PM_PORT: u64 = 0x600;
pub const ACPI_PM_PORT_LEN: u64 = 3;
pub const SLEEP_CONTROL_PORT: u64 = ACPI_PM_PORT;
pub const SLEEP_STATUS_PORT: u64 = ACPI_PM_PORT + 1;
pub const RESET_PORT: u64 = ACPI_PM_PORT + 2;
/// What the guest writes to the reset register to reset (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = 1;
/// The S5 (soft off) sleep type the DSDT's \_S5 package announces.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control register: SLP_EN (bit 5) and SLP_TYP (bits 2-4), ACPI 6.5 section 4.8.3.7.
const SLP_EN: u8 = 1 << 5;

/// The PM registers; power-off and reset write to their events.
pub struct AcpiPm {
    power_off: EventFdTrigger,
    reset: EventFdTrigger,
}

impl AcpiPm {
    pub fn new(power_off: EventFdTrigger, reset: EventFdTrigger) -> Self {
        Self { power_off, reset }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing to report: we never wake from a sleep state.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            tracing::debug!(offset, len = data.len(), "ACPI PM: ignored non-byte write");
            return;
        };
        let result = match offset + ACPI_PM_PORT {
            SLEEP_CONTROL_PORT if value & SLP_EN != 0 && (value >> 2) & 7 == S5_SLEEP_TYPE => {
                self.power_off.trigger()
            }
            RESET_PORT if *value == RESET_VALUE => self.reset.trigger(),
            _ => {
                tracing::debug!(offset, value, "ACPI PM: ignored write");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!("ACPI PM: cannot signal the guest's power-off or reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    #[test]
    fn s5_powers_off_reset_value_resets_anything_else_is_ignored() {
        let off = EventFd::new(EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut pm = AcpiPm::new(
            EventFdTrigger(off.try_clone().unwrap()),
            EventFdTrigger(reset.try_clone().unwrap()),
        );
        pm.write(0, &[S5_SLEEP_TYPE << 2]); // no SLP_EN
        pm.write(0, &[(3 << 2) | SLP_EN]); // S3: not supported, ignored
        pm.write(2, &[2]);
        pm.write(0, &[0x34, 0]);
        assert!(off.read().is_err() && reset.read().is_err());
        pm.write(0, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(off.read().unwrap(), 1);
        pm.write(2, &[RESET_VALUE]);
        assert_eq!(reset.read().unwrap(), 1);
    }
}
