//! Loading the guest kernel (ELF or bzImage, with linux-loader), its command line and initrd.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{KernelLoader, bzimage::BzImage, elf::Elf, load_cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::memory::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_HOLE_START};

/// Offset of the 64-bit entry point in a loaded bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Errors loading the guest's boot files.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load kernel {path} as {format}")]
    Kernel {
        path: PathBuf,
        format: &'static str,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel command line {cmdline:?} is invalid: {reason}")]
    Cmdline { cmdline: String, reason: String },
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest RAM below the MMIO hole after the kernel"
    )]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("cannot write {what} to guest memory")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the kernel landed.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage's setup header, for the zero page; None for ELF kernels.
    pub setup_header: Option<setup_header>,
}

fn open(what: &'static str, path: &Path) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| LoaderError::Open {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Whether `path` is an ELF file (as opposed to a bzImage).
pub fn is_elf(path: &Path) -> Result<bool, LoaderError> {
    let mut magic = [0u8; 4];
    Ok(open("kernel", path)?.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

/// Loads `path`, an ELF (vmlinux, or a freestanding payload) or a bzImage, above 1 MiB.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = open("kernel", path)?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    let himem = Some(GuestAddress(HIMEM_START));
    let kernel_err = |format| {
        move |source| LoaderError::Kernel {
            path: path.to_owned(),
            format,
            source,
        }
    };
    if is_elf {
        let r = Elf::load(mem, None, &mut file, himem).map_err(kernel_err("ELF"))?;
        Ok(LoadedKernel {
            entry: r.kernel_load.0,
            end: r.kernel_end,
            setup_header: None,
        })
    } else {
        let r = BzImage::load(mem, None, &mut file, himem).map_err(kernel_err("bzImage"))?;
        Ok(LoadedKernel {
            entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            end: r.kernel_end,
            setup_header: r.setup_header,
        })
    }
}

/// Writes `params` at [`CMDLINE_START`]; returns its length without the NUL.
pub fn load_command_line(mem: &GuestMemoryMmap, params: &str) -> Result<u32, LoaderError> {
    let invalid = |reason: String| LoaderError::Cmdline {
        cmdline: params.to_owned(),
        reason,
    };
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| invalid(e.to_string()))?;
    if !params.is_empty() {
        cmdline
            .insert_str(params)
            .map_err(|e| invalid(e.to_string()))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(|e| invalid(e.to_string()))?;
    Ok(params.len() as u32)
}

/// Loads the initrd at the highest page-aligned address of low RAM that holds it, as
/// Firecracker does, and returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u32), LoaderError> {
    let mut data = Vec::new();
    open("initrd", path)?
        .read_to_end(&mut data)
        .map_err(|source| LoaderError::Open {
            what: "initrd",
            path: path.to_owned(),
            source,
        })?;
    let size = data.len() as u64;
    let too_large = || LoaderError::InitrdTooLarge {
        path: path.to_owned(),
        size,
    };
    let low_ram_end = mem.last_addr().0.saturating_add(1).min(MMIO_HOLE_START);
    let addr = low_ram_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or_else(too_large)?;
    let size32 = u32::try_from(size).map_err(|_| too_large())?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|source| LoaderError::Write {
            what: "initrd",
            source,
        })?;
    Ok((addr, size32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn initrd_goes_to_the_top_of_low_ram_page_aligned() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![0x5a; 10_000]).unwrap();
        let (addr, size) = load_initrd(&mem, &path, 0x20_0000).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + 10_000 <= 16 << 20 && addr + 10_000 + 4096 > 16 << 20);
        let mut back = vec![0u8; 10_000];
        mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert!(back.iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        let mem = create_guest_memory(4 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![0; 3 << 20]).unwrap();
        let err = load_initrd(&mem, &path, 0x20_0000).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("initrd"));
    }

    #[test]
    fn command_line_is_written_nul_terminated() {
        let mem = create_guest_memory(4 << 20).unwrap();
        let len = load_command_line(&mem, "console=ttyS0 reboot=k").unwrap();
        assert_eq!(len, 22);
        let mut back = [0u8; 23];
        mem.read_slice(&mut back, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&back, b"console=ttyS0 reboot=k\0");
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            load_command_line(&mem, &long),
            Err(LoaderError::Cmdline { .. })
        ));
    }
}
