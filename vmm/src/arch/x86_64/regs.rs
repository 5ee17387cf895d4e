//! The register state of the boot vCPU at a 64-bit entry point, as Firecracker sets it up:
//! long mode with paging on, a flat GDT, identity page tables for the low 4 GiB, `rsi` at the
//! zero page. Application processors are left to the in-kernel LAPIC (INIT/SIPI).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{
    BOOT_GDT, CODE_SEGMENT_INDEX, DATA_SEGMENT_INDEX, TSS_SEGMENT_INDEX, kvm_segment_from_gdt,
};
use crate::memory::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, IDENTITY_MAPPED_GIB, PDE_START,
    PDPTE_START, PML4_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// Present, writable; with PS it maps a 2 MiB page.
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Errors setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot {what} to guest memory")]
    GuestMemory {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM_{ioctl} failed")]
    Kvm {
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { ioctl, source }
}

fn mem(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> RegsError {
    move |source| RegsError::GuestMemory { what, source }
}

/// General purpose registers at the entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        // Bit 1 of RFLAGS is reserved and always set.
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        // The Linux 64-bit boot protocol: rsi holds the address of `struct boot_params`.
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Writes the GDT, an empty IDT and the identity page tables to guest memory and returns the
/// special registers that use them, starting from the vCPU's current `sregs`.
pub fn boot_sregs(mem_: &GuestMemoryMmap, mut sregs: kvm_sregs) -> Result<kvm_sregs, RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem_.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(mem("GDT"))?;
    }
    mem_.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(mem("IDT"))?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    let code = kvm_segment_from_gdt(
        BOOT_GDT[usize::from(CODE_SEGMENT_INDEX)],
        CODE_SEGMENT_INDEX,
    );
    let data = kvm_segment_from_gdt(
        BOOT_GDT[usize::from(DATA_SEGMENT_INDEX)],
        DATA_SEGMENT_INDEX,
    );
    let tss = kvm_segment_from_gdt(BOOT_GDT[usize::from(TSS_SEGMENT_INDEX)], TSS_SEGMENT_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    write_identity_page_tables(mem_)?;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// Identity-maps the low [`IDENTITY_MAPPED_GIB`] GiB with 2 MiB pages: one PML4 entry, one
/// PDPT entry per GiB, one page directory per GiB.
pub fn write_identity_page_tables(mem_: &GuestMemoryMmap) -> Result<(), RegsError> {
    mem_.write_obj(PDPTE_START | PAGE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(mem("PML4"))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem_.write_obj(pd | PAGE_PRESENT_RW, GuestAddress(PDPTE_START + gib * 8))
            .map_err(mem("PDPT"))?;
        for i in 0..512u64 {
            let phys = ((gib * 512 + i) << 21) | PAGE_PRESENT_RW | PAGE_SIZE_2M;
            mem_.write_obj(phys, GuestAddress(pd + i * 8))
                .map_err(mem("page directory"))?;
        }
    }
    Ok(())
}

/// The x87/SSE control state Linux expects at entry.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Puts the boot vCPU at `entry` in 64-bit mode.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem_: &GuestMemoryMmap, entry: u64) -> Result<(), RegsError> {
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("SET_FPU"))?;
    let sregs = boot_sregs(mem_, vcpu.get_sregs().map_err(kvm("GET_SREGS"))?)?;
    vcpu.set_sregs(&sregs).map_err(kvm("SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(entry)).map_err(kvm("SET_REGS"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn sregs_enter_long_mode_with_paging() {
        let mem_ = create_guest_memory(16 << 20).unwrap();
        let sregs = boot_sregs(&mem_, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.gdt.limit, 31);
        let gdt1: u64 = mem_.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn page_tables_identity_map_low_8gib() {
        let mem_ = create_guest_memory(16 << 20).unwrap();
        write_identity_page_tables(&mem_).unwrap();
        // Walk the tables for a few addresses, including one in the MMIO hole.
        for addr in [
            0u64,
            0x20_0000,
            0x1234_5678,
            0xd000_0000,
            0xffff_ffff,
            0x1_2345_6789,
            0x1_ffff_ffff,
        ] {
            let pml4e: u64 = mem_.read_obj(GuestAddress(PML4_START)).unwrap();
            let pdpt = pml4e & !0xfff;
            let pdpte: u64 = mem_
                .read_obj(GuestAddress(pdpt + ((addr >> 30) & 511) * 8))
                .unwrap();
            let pd = pdpte & !0xfff;
            let pde: u64 = mem_
                .read_obj(GuestAddress(pd + ((addr >> 21) & 511) * 8))
                .unwrap();
            assert_eq!(pde & 0x83, 0x83);
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr, "{addr:#x}");
        }
    }
}
