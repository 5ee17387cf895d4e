//! The 8250 UART on COM1 (ports 0x3f8-0x3ff, IRQ 4), vm-superio's model, writing what the guest
//! prints to a log file or stdout.

use std::io::Write;

use vm_superio::Serial;
use vm_superio::serial::NoEvents;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// COM1 on the I/O bus.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART that raises `interrupt` and writes guest output to `out`.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(interrupt, out),
        }
    }

    /// Queues host input for the guest to read from the receive buffer (raising the receive
    /// interrupt if the guest enabled it); returns how many bytes fit in the 64-byte FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                tracing::warn!("serial: cannot deliver input to the guest: {e:?}");
                0
            }
        }
    }

    /// Flushes guest output that is still buffered (a line without its newline).
    pub fn flush(&mut self) {
        if let Err(e) = self.serial.writer_mut().flush() {
            tracing::warn!("serial: cannot flush guest output: {e}");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider accesses are a guest bug.
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.serial.read(offset),
            (_, data) => {
                tracing::debug!(offset, len = data.len(), "serial: ignored non-byte read");
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => {
                if let Err(e) = self.serial.write(offset, *byte) {
                    tracing::warn!("serial: cannot deliver guest output: {e:?}");
                }
            }
            _ => tracing::debug!(offset, len = data.len(), "serial: ignored non-byte write"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    /// A cloneable in-memory sink for what the guest printed.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_bytes_reach_the_sink_and_bad_widths_are_ignored() {
        let sink = Sink::default();
        let irq = EventFdTrigger(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut dev = SerialDevice::new(irq, Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        dev.write(0, &[1, 2]);
        dev.write(u64::MAX, &[1]);
        let mut wide = [0u8; 4];
        dev.read(5, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");
    }
}
