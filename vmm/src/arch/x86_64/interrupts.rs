//! The local APIC of each vCPU: LINT0 receives the legacy PIC's interrupts (ExtINT) and LINT1
//! is the NMI line, as on a PC and as Linux expects for virtual wire mode.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors programming the local APIC.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("KVM_{ioctl} failed")]
    Kvm {
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = lapic.regs[offset + i] as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = b as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in `lapic`.
pub fn configure_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Reads, configures and writes back the in-kernel local APIC of `vcpu`.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), InterruptError> {
    let mut lapic = vcpu.get_lapic().map_err(|source| InterruptError::Kvm {
        ioctl: "GET_LAPIC",
        source,
    })?;
    configure_lint(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(|source| InterruptError::Kvm {
            ioctl: "SET_LAPIC",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        // A masked LVT0 with a stale delivery mode keeps its other bits.
        set_reg(&mut lapic, APIC_LVT0, 0x0001_0500);
        configure_lint(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&lapic, APIC_LVT1), 0x0000_0400);
    }
}
