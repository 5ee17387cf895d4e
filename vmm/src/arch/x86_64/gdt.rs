//! The boot GDT: a flat 64-bit code segment, a flat data segment and a TSS, as Firecracker and
//! the Linux 64-bit boot protocol expect.

use kvm_bindings::kvm_segment;

/// Builds one GDT descriptor from access `flags` (type, S, DPL, P in the low byte; AVL, L, D/B,
/// G in the high nibble), a base and a 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << (56 - 24))
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << (48 - 16))
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

/// The boot GDT: null, code (64-bit, present, execute/read), data (read/write), TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
pub const CODE_SEGMENT_INDEX: u8 = 1;
pub const DATA_SEGMENT_INDEX: u8 = 2;
pub const TSS_SEGMENT_INDEX: u8 = 3;

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

fn limit(entry: u64) -> u32 {
    let limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    // With the granularity bit the limit counts 4 KiB pages.
    if bit(entry, 55) == 0 {
        limit
    } else {
        (limit << 12) | 0xfff
    }
}

/// The KVM segment register state that loading GDT entry `index` would produce.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_flat_64_bit() {
        let seg = kvm_segment_from_gdt(BOOT_GDT[1], CODE_SEGMENT_INDEX);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.selector, 8);
        assert_eq!((seg.l, seg.db, seg.g, seg.present, seg.s), (1, 0, 1, 1, 1));
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let data = kvm_segment_from_gdt(BOOT_GDT[2], DATA_SEGMENT_INDEX);
        assert_eq!((data.type_, data.db, data.l, data.selector), (3, 1, 0, 16));
        let tss = kvm_segment_from_gdt(BOOT_GDT[3], TSS_SEGMENT_INDEX);
        assert_eq!((tss.type_, tss.s, tss.g, tss.selector), (0xb, 0, 1, 24));
        assert_eq!(tss.limit, 0xffff_ffff);
        let null = kvm_segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        assert_eq!(base(e), 0x1234_5678);
        assert_eq!(limit(e), 0xabcde);
    }
}
