//! The Linux zero page (`struct boot_params`): boot protocol header, command line, initrd,
//! e820 map and the ACPI RSDP address, written with linux-loader's boot configurator.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::memory::{CMDLINE_START, E820Entry, ZERO_PAGE_START};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader id: we are not one of the registered ones.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const E820_MAX_ENTRIES: usize = 128;

/// Errors building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    #[error("the e820 map has {0} entries; the zero page holds at most {E820_MAX_ENTRIES}")]
    TooManyE820Entries(usize),
    #[error("cannot write the zero page")]
    Write(#[source] linux_loader::configurator::Error),
}

/// What goes into the zero page besides the e820 map.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroPageConfig {
    /// The bzImage's own setup header, when the kernel is a bzImage.
    pub setup_header: Option<setup_header>,
    /// Length of the command line without its NUL.
    pub cmdline_len: u32,
    /// Guest address and size of the initrd.
    pub initrd: Option<(u64, u32)>,
    /// Guest address of the ACPI RSDP.
    pub rsdp_addr: u64,
}

/// Builds `struct boot_params` for `config` and `e820`.
pub fn build_boot_params(
    config: &ZeroPageConfig,
    e820: &[E820Entry],
) -> Result<boot_params, ZeroPageError> {
    if e820.len() > E820_MAX_ENTRIES {
        return Err(ZeroPageError::TooManyE820Entries(e820.len()));
    }
    let mut params = boot_params::default();
    if let Some(hdr) = config.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = config.cmdline_len;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = config.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size;
    }
    params.acpi_rsdp_addr = config.rsdp_addr;
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes `params` at [`ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), ZeroPageError> {
    let boot = BootParams::new(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(ZeroPageError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, e820_map};
    use vm_memory::Bytes;

    #[test]
    fn zero_page_carries_header_cmdline_initrd_rsdp_and_e820() {
        let e820 = e820_map(64 << 20).unwrap();
        let config = ZeroPageConfig {
            setup_header: None,
            cmdline_len: 42,
            initrd: Some((0x300_0000, 0x1000)),
            rsdp_addr: 0xe_0000,
        };
        let params = build_boot_params(&config, &e820).unwrap();
        let mem = create_guest_memory(64 << 20).unwrap();
        write_zero_page(&mem, &params).unwrap();
        let read: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ read.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ read.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ read.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ read.hdr.cmdline_size }, 42);
        assert_eq!({ read.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ read.hdr.ramdisk_size }, 0x1000);
        assert_eq!({ read.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(usize::from(read.e820_entries), e820.len());
        for (got, want) in read.e820_table.iter().zip(&e820) {
            assert_eq!(
                ({ got.addr }, { got.size }, { got.r#type }),
                (want.addr, want.size, want.kind)
            );
        }
    }

    #[test]
    fn too_many_e820_entries_is_an_error() {
        let e820 = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            129
        ];
        assert!(matches!(
            build_boot_params(&ZeroPageConfig::default(), &e820),
            Err(ZeroPageError::TooManyE820Entries(129))
        ));
    }
}
