//! patchpanel: the host side of every VM's network (a tap with its own /30 from crosd's address
//! pool, forwarding and NAT), issue 14.

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum PatchpanelRequest {
    /// A tap and a /30 for `vm` (the same ones again when `vm` already has them).
    AllocateNetwork {
        vm: String,
    },
    /// Removes `vm`'s tap and its rules and returns its /30 to the pool.
    ReleaseNetwork {
        vm: String,
    },
    ListNetworks {},
}

/// One VM's network, everything the VMM (the tap) and maitred (ConfigureNetwork) need.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetwork {
    pub vm: String,
    /// The host's tap device, e.g. `crosdtap0`.
    pub tap: String,
    /// The host end of the /30, set on the tap; the guest's gateway.
    pub host_addr: String,
    /// The guest's address (eth0).
    pub guest_addr: String,
    /// Dotted, e.g. `255.255.255.252`.
    pub netmask: String,
    pub prefix_len: u8,
    pub gateway: String,
    /// The guest NIC's MAC: locally administered, `02:00:` and the guest address's bytes.
    pub mac: String,
    /// Name servers for the guest's resolv.conf.
    pub dns: Vec<String>,
    /// The VM's containers' subnet (lxdbr0 in the VM), e.g. `100.115.93.0/28`; the host
    /// routes it through `guest_addr`.
    #[serde(default)]
    pub container_subnet: String,
    /// lxdbr0's address with its prefix, as LXD's `ipv4.address` takes it (`100.115.93.1/28`).
    #[serde(default)]
    pub lxd_ipv4_subnet: String,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum PatchpanelReply {
    /// Boxed: a VmNetwork is ten times the size of the other replies.
    NetworkAllocated {
        network: Box<VmNetwork>,
    },
    NetworkReleased {
        vm: String,
    },
    Networks {
        networks: Vec<VmNetwork>,
    },
}
