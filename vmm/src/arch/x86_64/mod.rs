//! x86_64 boot: the 64-bit entry environment (GDT, identity page tables, registers), CPUID,
//! MSRs, the local APIC, and the Linux zero page.

pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod msr;
pub mod regs;
pub mod zero_page;
