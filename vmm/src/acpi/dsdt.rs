//! The DSDT: COM1, the i8042, the power button and the Generic Event Device that presses it,
//! and one `LNRO0005` (virtio-mmio) device per window, under \_SB.

use acpi_tables::Aml;
use acpi_tables::aml::{
    And, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, IO,
    If, Interrupt, Local, Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Package,
    Path, ResourceTemplate, Scope, Store, ZERO,
};
use acpi_tables::sdt::Sdt;

use super::{MmioDeviceInfo, OEM_ID};
use crate::devices::legacy::acpi_pm::S5_SLEEP_TYPE;
use crate::devices::legacy::ged::{GED_IRQ, GED_PORT, GED_PORT_LEN, GedEvent};
use crate::devices::legacy::i8042::I8042_PORT;
use crate::devices::legacy::serial::{COM1_IRQ, COM1_PORT, COM1_PORT_LEN};

/// The ACPI id Linux's virtio-mmio driver binds to.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// The ACPI id of a Generic Event Device (ACPI 6.5, 5.6.9).
pub const GED_HID: &str = "ACPI0013";
/// The PNP id of a control-method power button, which Linux's `button` driver binds to.
pub const POWER_BUTTON_HID: &str = "PNP0C0C";
/// Notify value of a power button press (ACPI 6.5, 4.8.3.1.1.2).
const NOTIFY_POWER_BUTTON_PRESSED: u8 = 0x80;
const I8042_IRQ: u32 = 1;

/// AML already serialized, to put beside other objects in a scope.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// A virtio-mmio device: `_HID` "LNRO0005", `_UID` its index, `_CRS` its window and its
/// edge-triggered, active-high interrupt.
struct VirtioMmioDevice {
    index: usize,
    info: MmioDeviceInfo,
}

impl Aml for VirtioMmioDevice {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        // Device names are four characters: V000..VFFF covers more windows than fit the hole.
        let name = format!("V{:03X}", self.index & 0xfff);
        let memory = Memory32Fixed::new(true, self.info.base as u32, self.info.len as u32);
        let irq = Interrupt::new(true, true, false, false, self.info.irq);
        let crs = ResourceTemplate::new(vec![&memory, &irq]);
        let hid: String = VIRTIO_MMIO_HID.to_string();
        let uid = self.index as u64;
        Device::new(
            Path::new(&name),
            vec![
                &Name::new("_HID".into(), &hid),
                &Name::new("_UID".into(), &uid),
                &Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB.PWRB`, the control-method power button (hardware-reduced ACPI has no fixed one:
/// the FADT's PWR_BUTTON flag says so).
struct PowerButton;

impl Aml for PowerButton {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        Device::new(
            "PWRB".into(),
            vec![
                &Name::new("_HID".into(), &EISAName::new(POWER_BUTTON_HID)),
                &Name::new("_UID".into(), &0u64),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB.GED_`: its interrupt in `_CRS`, its event register as an I/O operation region, and
/// `_EVT`, which the guest runs on the interrupt: it reads the register (which clears it) and
/// notifies the power button when that event's bit is set.
struct GenericEventDevice;

impl Aml for GenericEventDevice {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let irq = Interrupt::new(true, true, false, false, GED_IRQ);
        let crs = ResourceTemplate::new(vec![&irq]);
        let hid: String = GED_HID.to_string();
        let port = GED_PORT as u16;
        let len = GED_PORT_LEN as u8;
        let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemIO, &port, &len);
        let field = Field::new(
            "GDST".into(),
            FieldAccessType::Byte,
            FieldLockRule::NoLock,
            FieldUpdateRule::WriteAsZeroes,
            vec![FieldEntry::Named(*b"GDAT", 8)],
        );
        let gdat: Path = "GDAT".into();
        let read_events = Store::new(&Local(0), &gdat);
        let power_button = GedEvent::PowerButton as u8;
        let is_power_button = And::new(&ZERO, &Local(0), &power_button);
        let pwrb: Path = "\\_SB_.PWRB".into();
        let notify = Notify::new(&pwrb, &NOTIFY_POWER_BUTTON_PRESSED);
        let on_power_button = If::new(&is_power_button, vec![&notify]);
        let evt = Method::new("_EVT".into(), 1, true, vec![&read_events, &on_power_button]);
        Device::new(
            "GED_".into(),
            vec![
                &Name::new("_HID".into(), &hid),
                &Name::new("_UID".into(), &0u64),
                &Name::new("_CRS".into(), &crs),
                &region,
                &field,
                &evt,
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// The DSDT bytes, header and checksum included.
pub fn build_dsdt(virtio_mmio: &[MmioDeviceInfo]) -> Vec<u8> {
    let com1_io = IO::new(COM1_PORT as u16, COM1_PORT as u16, 1, COM1_PORT_LEN as u8);
    let com1_irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let mut com1 = RawAml(Vec::new());
    Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &0u64),
            &Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut com1.0);
    let kbd_data = IO::new(I8042_PORT as u16, I8042_PORT as u16, 1, 1);
    let kbd_cmd = IO::new(I8042_PORT as u16 + 4, I8042_PORT as u16 + 4, 1, 1);
    let kbd_irq = Interrupt::new(true, true, false, false, I8042_IRQ);
    let kbd_crs = ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    let mut ps2 = RawAml(Vec::new());
    Device::new(
        "PS2_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new("_CRS".into(), &kbd_crs),
        ],
    )
    .to_aml_bytes(&mut ps2.0);
    let virtio: Vec<VirtioMmioDevice> = virtio_mmio
        .iter()
        .enumerate()
        .map(|(index, &info)| VirtioMmioDevice { index, info })
        .collect();
    let mut children: Vec<&dyn Aml> = vec![&com1, &ps2, &PowerButton, &GenericEventDevice];
    children.extend(virtio.iter().map(|d| d as &dyn Aml));
    let sb = Scope::new("\\_SB_".into(), children);
    // \_S5: the sleep type a guest writes to the sleep control register to power off.
    let mut s5 = RawAml(Vec::new());
    Name::new("_S5_".into(), &Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut s5.0);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"CROSDSDT", 1);
    let mut aml = Vec::new();
    sb.to_aml_bytes(&mut aml);
    s5.to_aml_bytes(&mut aml);
    dsdt.append_slice(&aml);
    dsdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    /// The bytes of a Memory32Fixed descriptor (ACPI 6.5, 6.4.3.4) for `base`/`len`.
    fn memory32_fixed(base: u32, len: u32) -> Vec<u8> {
        let mut v = vec![0x86, 9, 0, 1];
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    /// An Extended Interrupt descriptor: consumer, edge, active high, exclusive, one irq.
    fn ext_irq(irq: u32) -> Vec<u8> {
        let mut v = vec![0x89, 6, 0, 0x03, 1];
        v.extend_from_slice(&irq.to_le_bytes());
        v
    }

    #[test]
    fn dsdt_names_each_virtio_window_with_its_range_and_irq() {
        let devices: Vec<_> = (0..3)
            .map(|i| MmioDeviceInfo {
                base: 0xd000_0000 + i * 0x1000,
                len: 0x1000,
                irq: 5 + i as u32,
            })
            .collect();
        let dsdt = build_dsdt(&devices);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(dsdt.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(count(&dsdt, b"LNRO0005\0"), 3);
        for (i, d) in devices.iter().enumerate() {
            assert_eq!(count(&dsdt, format!("V{i:03X}").as_bytes()), 1);
            assert_eq!(
                count(&dsdt, &memory32_fixed(d.base as u32, 0x1000)),
                1,
                "window {i}"
            );
            assert_eq!(count(&dsdt, &ext_irq(d.irq)), 1, "irq of window {i}");
        }
        // \_S5 = Package { 5 }: NameOp "_S5_" PackageOp PkgLength NumElements BytePrefix 5.
        assert_eq!(count(&dsdt, b"\x08_S5_\x12\x04\x01\x0a\x05"), 1);
        // COM1 is there too, with its legacy interrupt.
        assert_eq!(count(&dsdt, b"COM1"), 1);
        assert_eq!(count(&dsdt, &ext_irq(COM1_IRQ)), 1);
    }

    /// The power button and the GED that presses it: their ids, the GED's interrupt, its
    /// event register as a one-byte SystemIO region, and the `_EVT` body that reads it and
    /// notifies `\_SB.PWRB` with 0x80.
    #[test]
    fn dsdt_has_the_power_button_and_its_generic_event_device() {
        let dsdt = build_dsdt(&[]);
        assert_eq!(dsdt.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // EISAID("PNP0C0C") after `Name(_HID, ...)` in device PWRB.
        assert_eq!(count(&dsdt, b"PWRB"), 2, "the device and the Notify target");
        assert_eq!(count(&dsdt, b"\x08_HID\x0c\x41\xd0\x0c\x0c"), 1);
        assert_eq!(count(&dsdt, b"\x08_HID\x0dACPI0013\0"), 1);
        assert_eq!(count(&dsdt, &ext_irq(GED_IRQ)), 1);
        // OperationRegion(GDST, SystemIO, 0x610, 1): ExtOp RegionOp name space WordPrefix
        // 0x0610 One.
        assert_eq!(count(&dsdt, b"\x5b\x80GDST\x01\x0b\x10\x06\x01"), 1);
        // Field(GDST, ByteAcc, NoLock, WriteAsZeros) { GDAT, 8 }.
        assert_eq!(count(&dsdt, b"GDST\x41GDAT\x08"), 1);
        // Method(_EVT, 1, Serialized) { Local0 = GDAT; If (Local0 & 1) { Notify(\_SB.PWRB,
        // 0x80) } }: the store, the test and the notify, in that order inside the method.
        let evt = b"_EVT\x09\x70GDAT\x60\xa0";
        let start = dsdt
            .windows(evt.len())
            .position(|w| w == evt)
            .expect("_EVT reads GDAT into Local0, then tests it");
        let rest = &dsdt[start + evt.len()..];
        assert_eq!(
            count(rest, b"\x7b\x60\x01\x00\x86\\\x2e_SB_PWRB\x0a\x80"),
            1,
            "If (And(Local0, One)) {{ Notify(\\_SB_.PWRB, 0x80) }}"
        );
    }

    #[test]
    fn dsdt_without_virtio_devices_is_valid() {
        let dsdt = build_dsdt(&[]);
        assert_eq!(dsdt.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(count(&dsdt, b"LNRO0005"), 0);
        assert_eq!(
            u32::from_le_bytes(dsdt[4..8].try_into().unwrap()) as usize,
            dsdt.len()
        );
    }
}
