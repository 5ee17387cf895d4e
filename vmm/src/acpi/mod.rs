//! ACPI tables in the reserved BIOS area: RSDP, XSDT, FADT (hardware-reduced), MADT (one
//! local APIC per vCPU, the IOAPIC) and a DSDT that names each virtio-mmio window as an
//! `LNRO0005` device with its MMIO range and interrupt — the only way the Debian kernels,
//! which have no virtio-mmio command-line devices, find them.

pub mod dsdt;

use acpi_tables::Aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::legacy::acpi_pm::{
    RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};
use crate::memory::{ACPI_END, ACPI_START};

pub const OEM_ID: [u8; 6] = *b"CROSVM";
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// IA-PC boot architecture flags: no VGA, no MSI (we have no PCI).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_MSI_NOT_PRESENT: u16 = 1 << 3;

/// A virtio-mmio window as the guest must be told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub len: u64,
    pub irq: u32,
}

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    pub cpus: u8,
    pub virtio_mmio: Vec<MmioDeviceInfo>,
}

/// Errors building or placing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need {need} bytes but only {have} are reserved for them")]
    TooLarge { need: u64, have: u64 },
    #[error("cannot write ACPI table {table} to guest memory")]
    Write {
        table: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// One table and where it goes.
#[derive(Debug, Clone)]
pub struct PlacedTable {
    pub name: &'static str,
    pub addr: u64,
    pub bytes: Vec<u8>,
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(16)
}

/// Lays the tables out from `start`, RSDP first, and returns them with their addresses.
pub fn build_tables(config: &AcpiConfig, start: u64) -> Vec<PlacedTable> {
    let rsdp_addr = start;
    let dsdt = dsdt::build_dsdt(&config.virtio_mmio);
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);

    let mut fadt = FADTBuilder::new(OEM_ID, *b"CROSFACP", 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::ResetRegSup);
    // Hardware-reduced ACPI: power-off and reset go through these I/O registers.
    let io_byte = |port: u64| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port);
    fadt.sleep_control_reg = io_byte(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_byte(SLEEP_STATUS_PORT);
    fadt.reset_reg = io_byte(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_MSI_NOT_PRESENT).into();
    let fadt = aml_bytes(&fadt.finalize());
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);

    let mut madt = MADT::new(
        OEM_ID,
        *b"CROSAPIC",
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..config.cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt = aml_bytes(&madt);
    let madt_addr = align(fadt_addr + fadt.len() as u64);

    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, *b"CROSXSDT", 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = aml_bytes(&xsdt);

    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    vec![
        PlacedTable {
            name: "RSDP",
            addr: rsdp_addr,
            bytes: rsdp,
        },
        PlacedTable {
            name: "DSDT",
            addr: dsdt_addr,
            bytes: dsdt,
        },
        PlacedTable {
            name: "FACP",
            addr: fadt_addr,
            bytes: fadt,
        },
        PlacedTable {
            name: "APIC",
            addr: madt_addr,
            bytes: madt,
        },
        PlacedTable {
            name: "XSDT",
            addr: xsdt_addr,
            bytes: xsdt,
        },
    ]
}

/// Writes the tables to guest memory at [`ACPI_START`]; returns the RSDP address.
pub fn create_acpi_tables(mem: &GuestMemoryMmap, config: &AcpiConfig) -> Result<u64, AcpiError> {
    let tables = build_tables(config, ACPI_START);
    let end = tables
        .iter()
        .map(|t| t.addr + t.bytes.len() as u64)
        .max()
        .unwrap_or(ACPI_START);
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            need: end - ACPI_START,
            have: ACPI_END - ACPI_START,
        });
    }
    for t in &tables {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(|source| AcpiError::Write {
                table: t.name,
                source,
            })?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    fn checksum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn config() -> AcpiConfig {
        AcpiConfig {
            cpus: 2,
            virtio_mmio: vec![
                MmioDeviceInfo {
                    base: 0xd000_0000,
                    len: 0x1000,
                    irq: 5,
                },
                MmioDeviceInfo {
                    base: 0xd000_1000,
                    len: 0x1000,
                    irq: 6,
                },
            ],
        }
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        for t in build_tables(&config(), ACPI_START) {
            if t.name == "RSDP" {
                assert_eq!(checksum(&t.bytes[..20]), 0, "RSDP v1 checksum");
                assert_eq!(checksum(&t.bytes), 0, "RSDP extended checksum");
                assert_eq!(&t.bytes[..8], b"RSD PTR ");
                assert_eq!(u32_at(&t.bytes, 20) as usize, t.bytes.len());
            } else {
                assert_eq!(checksum(&t.bytes), 0, "{} checksum", t.name);
                assert_eq!(&t.bytes[..4], t.name.as_bytes());
                assert_eq!(
                    u32_at(&t.bytes, 4) as usize,
                    t.bytes.len(),
                    "{} length",
                    t.name
                );
            }
        }
    }

    #[test]
    fn tables_point_at_each_other() {
        let tables = build_tables(&config(), ACPI_START);
        let find = |name| tables.iter().find(|t| t.name == name).unwrap();
        let (rsdp, xsdt, fadt, madt, dsdt) = (
            find("RSDP"),
            find("XSDT"),
            find("FACP"),
            find("APIC"),
            find("DSDT"),
        );
        assert_eq!(u64_at(&rsdp.bytes, 24), xsdt.addr);
        let entries: Vec<u64> = xsdt.bytes[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries, vec![fadt.addr, madt.addr]);
        // FADT X_DSDT at offset 140; HW_REDUCED_ACPI in flags at offset 112.
        assert_eq!(u64_at(&fadt.bytes, 140), dsdt.addr);
        assert_ne!(u32_at(&fadt.bytes, 112) & (1 << 20), 0);
        // RESET_REG_SUP, the reset register (GAS at 116: system I/O, port) and its value (128),
        // the sleep control and status registers (GAS at 244 and 256).
        assert_ne!(u32_at(&fadt.bytes, 112) & (1 << 10), 0);
        assert_eq!((fadt.bytes[116], u64_at(&fadt.bytes, 120)), (1, RESET_PORT));
        assert_eq!(fadt.bytes[128], RESET_VALUE);
        assert_eq!(
            (fadt.bytes[244], u64_at(&fadt.bytes, 248)),
            (1, SLEEP_CONTROL_PORT)
        );
        assert_eq!(
            (fadt.bytes[256], u64_at(&fadt.bytes, 260)),
            (1, SLEEP_STATUS_PORT)
        );
        // No table overlaps the next.
        let mut spans: Vec<_> = tables
            .iter()
            .map(|t| (t.addr, t.addr + t.bytes.len() as u64))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?}");
        }
    }

    #[test]
    fn madt_has_one_local_apic_per_cpu_and_the_ioapic() {
        let tables = build_tables(&config(), ACPI_START);
        let madt = &tables.iter().find(|t| t.name == "APIC").unwrap().bytes;
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        let mut off = 44;
        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        while off + 2 <= madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            match kind {
                0 => lapics.push(madt[off + 3]),
                1 => ioapics.push(u32_at(madt, off + 4)),
                _ => {}
            }
            off += len;
        }
        assert_eq!(lapics, vec![0, 1]);
        assert_eq!(ioapics, vec![IOAPIC_ADDR]);
    }

    #[test]
    fn tables_are_written_to_guest_memory() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let rsdp = create_acpi_tables(&mem, &config()).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }

    #[test]
    fn too_many_devices_do_not_fit() {
        let many = AcpiConfig {
            cpus: 1,
            virtio_mmio: (0..4000)
                .map(|i| MmioDeviceInfo {
                    base: 0xd000_0000 + i * 0x1000,
                    len: 0x1000,
                    irq: 5,
                })
                .collect(),
        };
        let mem = create_guest_memory(16 << 20).unwrap();
        assert!(matches!(
            create_acpi_tables(&mem, &many),
            Err(AcpiError::TooLarge { .. })
        ));
    }
}
