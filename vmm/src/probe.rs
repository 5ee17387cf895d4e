//! Can this host's /dev/kvm boot a stock Linux kernel? Some cannot: a nested /dev/kvm that
//! emulates guest code (as on the project's build machines) fails on instructions a kernel runs
//! early in boot (cmpxchg16b, SSE, XSAVE state). The probe runs exactly those instructions in a
//! tiny VM (vmm/tests/payloads/kernel_probe.S, embedded below as bytes) and reports the first
//! one that fails, so `auto` can pick another backend and `--hypervisor crosvm` can say why.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::run::{SerialOutput, VmConfig, VmmError, run};

/// Where the probe code is loaded and entered.
const LOAD_ADDR: u64 = 0x20_0000;

/// Machine code of vmm/tests/payloads/kernel_probe.S (`as --64` then `objcopy -O binary -j
/// .text`); the test `probe_code_matches_its_source` keeps the two in step.
#[rustfmt::skip]
pub const PROBE_CODE: [u8; 128] = [
    0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
    0xb0, 0x31, 0xee,                   // mov al, '1'; out dx, al
    0x48, 0x8d, 0x3d, 0x62, 0, 0, 0,    // lea rdi, [rip + buf]
    0x31, 0xc0, 0x31, 0xd2,             // xor eax, eax; xor edx, edx
    0x31, 0xdb, 0x31, 0xc9,             // xor ebx, ebx; xor ecx, ecx
    0xf0, 0x48, 0x0f, 0xc7, 0x0f,       // lock cmpxchg16b [rdi]
    0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
    0xb0, 0x32, 0xee,                   // mov al, '2'; out dx, al
    0x0f, 0x20, 0xe0,                   // mov rax, cr4
    0x48, 0x0d, 0x00, 0x06, 0, 0,       // or rax, 0x600
    0x0f, 0x22, 0xe0,                   // mov cr4, rax
    0x0f, 0x20, 0xc0,                   // mov rax, cr0
    0x48, 0x83, 0xe0, 0xfb,             // and rax, -5
    0x48, 0x83, 0xc8, 0x02,             // or rax, 2
    0x0f, 0x22, 0xc0,                   // mov cr0, rax
    0x66, 0x0f, 0xef, 0xc0,             // pxor xmm0, xmm0
    0xb0, 0x33, 0xee,                   // mov al, '3'; out dx, al
    0xb8, 0x01, 0, 0, 0,                // mov eax, 1
    0x0f, 0xa2,                         // cpuid
    0x0f, 0xba, 0xe1, 0x1a,             // bt ecx, 26
    0x73, 0x10,                         // jnc 1f
    0x0f, 0x20, 0xe0,                   // mov rax, cr4
    0x48, 0x0f, 0xba, 0xe8, 0x12,       // bts rax, 18
    0x0f, 0x22, 0xe0,                   // mov cr4, rax
    0x31, 0xc9,                         // xor ecx, ecx
    0x0f, 0x01, 0xd0,                   // xgetbv
    0x66, 0xba, 0xf8, 0x03,             // 1: mov dx, 0x3f8
    0xb0, 0x4b, 0xee,                   // mov al, 'K'; out dx, al
    0xb0, 0xfe, 0xe6, 0x64,             // mov al, 0xfe; out 0x64, al
    0xf4, 0xeb, 0xfd,                   // 2: hlt; jmp 2b
    0x66, 0x90,                         // padding
    0, 0, 0, 0, 0, 0, 0, 0,             // buf: 16 bytes for cmpxchg16b
    0, 0, 0, 0, 0, 0, 0, 0,
];

/// The stages of the probe, by the digit printed before each.
const STAGES: [(u8, &str); 3] = [
    (b'1', "cmpxchg16b"),
    (b'2', "SSE instructions"),
    (b'3', "XSAVE state instructions (xgetbv)"),
];

/// Why a stock kernel cannot boot with our VMM here.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "/dev/kvm on this host cannot run {instruction}, which a stock Linux kernel executes \
         early in boot ({detail}); a nested KVM that emulates guest code does this"
    )]
    Instruction {
        instruction: &'static str,
        detail: String,
    },
    #[error("the KVM probe VM did not run")]
    Vmm(#[from] VmmError),
    #[error("the KVM probe ended without finishing (serial output {output:?})")]
    Incomplete { output: String },
    #[error("cannot prepare the KVM probe")]
    Io(#[from] std::io::Error),
}

/// A minimal ELF64 executable with one PT_LOAD segment holding `code` at `addr`, entered at
/// its first byte: what our loader (linux-loader's ELF loader) takes.
pub fn flat_elf(code: &[u8], addr: u64) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let mut elf = Vec::with_capacity((EHDR + PHDR) as usize + code.len());
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&addr.to_le_bytes()); // e_entry
    elf.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&7u32.to_le_bytes()); // RWX
    elf.extend_from_slice(&(EHDR + PHDR).to_le_bytes()); // p_offset
    elf.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    elf.extend_from_slice(&16u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    elf
}

/// An anonymous in-memory file holding `bytes`, and a path that opens it.
fn memfd_with(bytes: &[u8]) -> std::io::Result<(OwnedFd, PathBuf)> {
    // SAFETY: the name is a NUL-terminated literal; the result is checked before use.
    let fd = unsafe { libc::memfd_create(c"crosvm-kvm-probe".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(fd.try_clone()?).write_all(bytes)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    Ok((fd, path))
}

/// Runs the probe VM. Ok: this /dev/kvm ran every instruction a stock kernel needs early on.
pub fn probe_stock_kernel_boot() -> Result<(), ProbeError> {
    let (_fd, kernel) = memfd_with(&flat_elf(&PROBE_CODE, LOAD_ADDR))?;
    let serial = Arc::new(Mutex::new(Vec::new()));
    let config = VmConfig::new(kernel, 16, SerialOutput::Capture(serial.clone()));
    let result = run(&config);
    let output = serial.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let last = output.last().copied();
    match result {
        Ok(_) if last == Some(b'K') => Ok(()),
        Ok(_) => Err(ProbeError::Incomplete {
            output: String::from_utf8_lossy(&output).into_owned(),
        }),
        Err(VmmError::VcpuFatal { reason, .. }) => {
            match STAGES.iter().find(|(digit, _)| Some(*digit) == last) {
                Some((_, instruction)) => Err(ProbeError::Instruction {
                    instruction,
                    detail: reason,
                }),
                None => Err(ProbeError::Incomplete {
                    output: String::from_utf8_lossy(&output).into_owned(),
                }),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn probe_code_matches_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/payloads/kernel_probe.S");
        let obj = dir.path().join("p.o");
        let bin = dir.path().join("p.bin");
        let status = Command::new("as")
            .arg("--64")
            .arg("-o")
            .arg(&obj)
            .arg(src)
            .status()
            .expect("cannot run as (binutils)");
        assert!(status.success());
        let status = Command::new("objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin)
            .status()
            .expect("cannot run objcopy (binutils)");
        assert!(status.success());
        assert_eq!(std::fs::read(&bin).unwrap(), PROBE_CODE.to_vec());
    }

    #[test]
    fn flat_elf_is_loaded_by_our_loader() {
        let mem = crate::memory::create_guest_memory(8 << 20).unwrap();
        let (_fd, path) = memfd_with(&flat_elf(&PROBE_CODE, LOAD_ADDR)).unwrap();
        let loaded = crate::loader::load_kernel(&mem, &path).unwrap();
        assert_eq!(loaded.entry, LOAD_ADDR);
        let mut back = [0u8; 128];
        vm_memory::Bytes::read_slice(&mem, &mut back, vm_memory::GuestAddress(LOAD_ADDR)).unwrap();
        assert_eq!(back, PROBE_CODE);
    }
}
