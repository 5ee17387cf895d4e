//! The address buses that vCPU exits are dispatched on: one for port I/O, one for MMIO. A
//! device claims a range; an access outside every range is the guest's mistake, logged and
//! answered with all ones (a floating bus), never a VMM error.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. `offset` is relative to the start of its range;
/// `data` has the access width (1, 2, 4 or 8 bytes for CPU accesses).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors inserting a device into a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

/// A shared handle to a bus device.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Ranges of addresses mapped to devices.
#[derive(Default, Clone)]
pub struct Bus {
    /// Keyed by range start; the value holds the length and the device.
    devices: BTreeMap<u64, (u64, SharedBusDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((&other, &(other_len, _))) = self.devices.range(..end).next_back()
            && other + other_len > base
        {
            return Err(BusError::Overlap { base, len, other });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device whose range holds the whole access `[addr, addr + size)` and the offset of
    /// `addr` in that range.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&SharedBusDevice, u64)> {
        let (&base, (len, device)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= *len).then_some((device, offset))
    }

    /// Reads from the device at `addr`; returns false (and fills `data` with ones) when no
    /// device holds the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((device, offset)) = self.resolve(addr, data.len()) else {
            data.fill(0xff);
            return unclaimed("read", addr, data.len());
        };
        lock(device).read(offset, data);
        true
    }

    /// Writes to the device at `addr`; returns false when no device holds the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((device, offset)) = self.resolve(addr, data.len()) else {
            return unclaimed("write", addr, data.len());
        };
        lock(device).write(offset, data);
        true
    }
}

/// Logs a guest access no device claims (probing drivers make them; not an error); false.
fn unclaimed(what: &str, addr: u64, len: usize) -> bool {
    tracing::debug!(addr, len, "guest {what} of an address no device claims");
    false
}

/// Locks a device even if a previous holder panicked: device state stays usable for the
/// guest's next access rather than taking the whole VMM down.
fn lock(device: &SharedBusDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses; stands in for a real device to test only the address decoding.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fb, &mut data));
        assert_eq!(data, [3]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(a.lock().unwrap().last_write, Some((7, vec![7])));
    }

    #[test]
    fn misses_and_straddling_accesses_are_refused() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10)
            .unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert_eq!(data, [0xff; 4]);
        // Starts inside, ends outside.
        assert!(!bus.read(0x100e, &mut data));
        assert!(!bus.write(0x1010, &[1]));
        assert!(!bus.read(u64::MAX, &mut data));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(d(), 0x10ff, 1),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1,
                other: 0x1000
            })
        );
        assert!(bus.insert(d(), 0xf00, 0x101).is_err());
        bus.insert(d(), 0x1100, 0x10).unwrap();
        assert_eq!(
            bus.insert(d(), 5, 0),
            Err(BusError::InvalidRange { base: 5, len: 0 })
        );
    }
}
