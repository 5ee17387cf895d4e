//! CPUID for each vCPU: what KVM supports on this host, with the topology of this VM (APIC id,
//! logical processor count) and the hypervisor leaves that tell the guest it runs on KVM.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: hyper-threading / multi-core package (the logical count in EBX is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Errors building a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    Supported(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2 failed")]
    Set(#[source] kvm_ioctls::Error),
}

/// The CPUID KVM supports on this host, before per-vCPU changes.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)
}

/// Adjusts `cpuid` for vCPU `cpu_id` of a VM with `cpu_count` vCPUs.
pub fn adjust_for_vcpu(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8) {
    let mut has_hypervisor_leaf = false;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(cpu_id) << 24)
                    | (u32::from(cpu_count) << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if cpu_count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0xb => {
                // Extended topology: EDX is the x2APIC id on every sub-leaf.
                entry.edx = u32::from(cpu_id);
            }
            HYPERVISOR_LEAF => {
                has_hypervisor_leaf = true;
                entry.ebx = KVM_SIGNATURE[0];
                entry.ecx = KVM_SIGNATURE[1];
                entry.edx = KVM_SIGNATURE[2];
            }
            _ => {}
        }
    }
    if !has_hypervisor_leaf {
        // KVM normally reports its own leaves; add the signature leaf when it did not.
        let _ = cpuid.push(kvm_bindings::kvm_cpuid_entry2 {
            function: HYPERVISOR_LEAF,
            eax: HYPERVISOR_LEAF + 1,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
}

/// Sets the CPUID of `vcpu` from the host's supported set.
pub fn setup_cpuid(
    vcpu: &VcpuFd,
    supported: &CpuId,
    cpu_id: u8,
    cpu_count: u8,
) -> Result<(), CpuidError> {
    let mut cpuid = supported.clone();
    adjust_for_vcpu(&mut cpuid, cpu_id, cpu_count);
    vcpu.set_cpuid2(&cpuid).map_err(CpuidError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn leaf1_and_hypervisor_signature() {
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xff00_0800,
            ..Default::default()
        }])
        .unwrap();
        adjust_for_vcpu(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, 0x0304_0800);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        let hv = e.iter().find(|e| e.function == HYPERVISOR_LEAF).unwrap();
        let mut sig = Vec::new();
        for r in [hv.ebx, hv.ecx, hv.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
    }
}
