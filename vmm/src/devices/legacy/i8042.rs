//! The i8042 keyboard controller (ports 0x60-0x64): enough of it for Linux's probe and for its
//! pulse-reset command (0xfe on port 0x64), which we treat as the guest ending the VM.

use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

/// The i8042 on the I/O bus; a reset command writes to `reset_event`.
pub struct I8042 {
    device: I8042Device<EventFdTrigger>,
}

impl I8042 {
    pub fn new(reset_event: EventFdTrigger) -> Self {
        Self {
            device: I8042Device::new(reset_event),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.device.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => {
                if let Err(e) = self.device.write(offset, *byte) {
                    tracing::error!("i8042: cannot signal the guest's reset request: {e}");
                }
            }
            _ => tracing::debug!(offset, len = data.len(), "i8042: ignored non-byte write"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    #[test]
    fn reset_command_signals_the_event() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        // Some other command does not reset.
        dev.write(4, &[0x20]);
        assert!(evt.read().is_err());
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
