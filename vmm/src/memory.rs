//! Guest physical memory: the RAM regions around the 32-bit MMIO hole, the e820 map that
//! describes them to the guest, and the fixed addresses of what the VMM places in low memory.
//!
//! The layout follows Firecracker's x86_64 layout: RAM from 0, a hole below 4 GiB for device
//! MMIO (virtio-mmio windows, IOAPIC, LAPIC), and the rest of RAM above 4 GiB.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Start of the 32-bit MMIO hole; RAM beyond this address continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xd000_0000;
/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Where RAM above the hole starts.
pub const HIGH_RAM_START: u64 = MMIO_HOLE_END;

/// The extended BIOS data area: from here to 1 MiB is reserved, as on a PC, which is where
/// Linux (and our payloads) scan for the ACPI RSDP.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of memory above the legacy area; kernels are loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;

/// GDT and IDT of the 64-bit boot environment.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`); `rsi` points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, and one page directory of 2 MiB pages per GiB.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// How much the boot page tables identity-map: the low 8 GiB, so that a payload can reach the
/// MMIO hole and the first pmem regions above 4 GiB before it builds its own tables. The
/// page directories take 0xb000-0x12fff.
pub const IDENTITY_MAPPED_GIB: u64 = 8;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// ACPI tables live in the reserved BIOS area, the RSDP first, as Linux searches 0xe0000-0xfffff.
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = 0x10_0000;

/// e820 entry types (Linux's arch/x86/include/uapi/asm/e820.h).
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// Smallest guest we accept: the boot structures and a payload above 1 MiB need room.
pub const MIN_MEM_SIZE: u64 = 2 << 20;

/// Errors building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} bytes is below the minimum of {MIN_MEM_SIZE} bytes")]
    TooSmall(u64),
    #[error("guest memory size {0} bytes does not fit this host's address space")]
    TooLarge(u64),
    #[error("cannot map {size} bytes of guest memory")]
    Mmap {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// One e820 entry as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// RAM ranges (start, length) for `mem_size` bytes of guest RAM, split around the MMIO hole.
pub fn ram_ranges(mem_size: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if mem_size < MIN_MEM_SIZE {
        return Err(MemoryError::TooSmall(mem_size));
    }
    let to_usize = |n: u64| usize::try_from(n).map_err(|_| MemoryError::TooLarge(mem_size));
    if mem_size <= MMIO_HOLE_START {
        return Ok(vec![(GuestAddress(0), to_usize(mem_size)?)]);
    }
    Ok(vec![
        (GuestAddress(0), to_usize(MMIO_HOLE_START)?),
        (
            GuestAddress(HIGH_RAM_START),
            to_usize(mem_size - MMIO_HOLE_START)?,
        ),
    ])
}

/// Anonymous, private guest memory of `mem_size` bytes laid out by [`ram_ranges`].
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(mem_size)?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Mmap {
        size: mem_size,
        source,
    })
}

/// The e820 map for `mem_size` bytes of RAM: low RAM up to the EBDA, the reserved legacy area
/// (which holds the ACPI tables), RAM from 1 MiB to the hole, and RAM above 4 GiB.
pub fn e820_map(mem_size: u64) -> Result<Vec<E820Entry>, MemoryError> {
    let ranges = ram_ranges(mem_size)?;
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ranges {
        // The first 1 MiB is described above; RAM entries start at HIMEM_START at the earliest.
        let end = start.0 + len as u64;
        let start = start.0.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_guest_is_one_region_below_the_hole() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let regions: Vec<_> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(regions, vec![(0, 64 << 20)]);
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_hole() {
        let ranges = ram_ranges(4 << 30).unwrap();
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), MMIO_HOLE_START as usize),
                (
                    GuestAddress(HIGH_RAM_START),
                    ((4u64 << 30) - MMIO_HOLE_START) as usize
                )
            ]
        );
    }

    #[test]
    fn too_small_guest_is_refused() {
        assert!(matches!(
            create_guest_memory(1 << 20),
            Err(MemoryError::TooSmall(_))
        ));
    }

    #[test]
    fn e820_small_guest() {
        let map = e820_map(128 << 20).unwrap();
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_large_guest_skips_the_hole_and_covers_all_ram() {
        let mem = 5u64 << 30;
        let map = e820_map(mem).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            E820Entry {
                addr: HIMEM_START,
                size: MMIO_HOLE_START - HIMEM_START,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[3],
            E820Entry {
                addr: HIGH_RAM_START,
                size: mem - MMIO_HOLE_START,
                kind: E820_RAM
            }
        );
        // No RAM entry overlaps the MMIO hole.
        for e in &map {
            assert!(
                e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END,
                "{e:?}"
            );
        }
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // All RAM except the reserved legacy area.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
    }
}
