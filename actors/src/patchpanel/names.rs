//! The running containers' names on the host (issue 14, item 5): `<container>.<vm>.linux.test`
//! for every container with an address, and `penguin.linux.test` for Crostini's default
//! container (penguin in termina), kept in crosd's block of the hosts file ([`super::hosts`]).
//!
//! A name maps to the container's own address on its VM's lxdbr0, not to a forwarded port on
//! 127.0.0.1: the host routes each VM's container subnet through the VM's /30 (patchpanel adds
//! the route on the tap), so `penguin.linux.test:PORT` reaches every port the container serves,
//! as on ChromeOS, with no forwarder per port; and a name cannot name a port anyway.
//! Port forwarding (chunneld) is what works without the route.
//!
//! The address comes from the guest (tremplin's view of LXD's lease), so it is untrusted: it is
//! taken only inside the subnet that VM's containers were given, and the names only when they
//! are DNS labels (a newline or a space would write lines of the guest's choosing).

use super::hosts::HostEntry;
use super::pool::ContainerSubnet;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub const DOMAIN: &str = "linux.test";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} name {name:?} is not a DNS label (1-63 of a-z, 0-9 and '-', not at the ends)")]
    NotALabel { what: &'static str, name: String },
    #[error("container {container} of VM {vm} reports address {addr:?}, not an IPv4 address")]
    BadAddress {
        vm: String,
        container: String,
        addr: String,
    },
    #[error("container {container} of VM {vm} reports address {addr}, outside its subnet {subnet}")]
    OutsideSubnet {
        vm: String,
        container: String,
        addr: Ipv4Addr,
        subnet: ContainerSubnet,
    },
}

fn label(what: &'static str, name: &str) -> Result<(), NameError> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    ok.then_some(()).ok_or_else(|| NameError::NotALabel {
        what,
        name: name.to_string(),
    })
}

/// The names of `container` in `vm`, longest first.
pub fn names_of(vm: &str, container: &str) -> Result<Vec<String>, NameError> {
    label("VM", vm)?;
    label("container", container)?;
    let (vm, container) = (vm.to_ascii_lowercase(), container.to_ascii_lowercase());
    let mut names = vec![format!("{container}.{vm}.{DOMAIN}")];
    if (vm.as_str(), container.as_str()) == ("termina", "penguin") {
        names.push(format!("penguin.{DOMAIN}"));
    }
    Ok(names)
}

/// The containers with a name, by (VM, container).
#[derive(Debug, Default)]
pub struct Names {
    by_container: BTreeMap<(String, String), Ipv4Addr>,
}

impl Names {
    /// Names `container` of `vm` at `addr`, which must lie in `subnet`. Whether anything changed.
    pub fn add(
        &mut self,
        vm: &str,
        container: &str,
        addr: &str,
        subnet: ContainerSubnet,
    ) -> Result<bool, NameError> {
        names_of(vm, container)?;
        let parsed: Ipv4Addr = addr.parse().map_err(|_| NameError::BadAddress {
            vm: vm.to_string(),
            container: container.to_string(),
            addr: addr.to_string(),
        })?;
        if !subnet.contains(parsed) {
            return Err(NameError::OutsideSubnet {
                vm: vm.to_string(),
                container: container.to_string(),
                addr: parsed,
                subnet,
            });
        }
        let old = self
            .by_container
            .insert((vm.to_string(), container.to_string()), parsed);
        Ok(old != Some(parsed))
    }

    /// Forgets `container` of `vm`; whether it had a name.
    pub fn remove(&mut self, vm: &str, container: &str) -> bool {
        self.by_container
            .remove(&(vm.to_string(), container.to_string()))
            .is_some()
    }

    /// Forgets every container of `vm`; whether any had a name.
    pub fn remove_vm(&mut self, vm: &str) -> bool {
        let before = self.by_container.len();
        self.by_container.retain(|(v, _), _| v != vm);
        self.by_container.len() != before
    }

    /// The hosts-file lines, in a stable order.
    pub fn entries(&self) -> Vec<HostEntry> {
        self.by_container
            .iter()
            .filter_map(|((vm, container), addr)| {
                Some(HostEntry {
                    addr: *addr,
                    names: names_of(vm, container).ok()?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patchpanel::pool::default_container_pool;

    fn subnet() -> ContainerSubnet {
        default_container_pool().container_subnet(0).unwrap()
    }

    #[test]
    fn penguin_in_termina_gets_the_short_name_too() {
        assert_eq!(
            names_of("termina", "penguin").unwrap(),
            ["penguin.termina.linux.test", "penguin.linux.test"]
        );
        assert_eq!(
            names_of("termina", "c1").unwrap(),
            ["c1.termina.linux.test"]
        );
        assert_eq!(
            names_of("dev", "penguin").unwrap(),
            ["penguin.dev.linux.test"]
        );
    }

    #[test]
    fn names_and_addresses_from_the_guest_are_checked() {
        let mut n = Names::default();
        for bad in ["a b", "x\n1.2.3.4 evil", "", "-x", "a.b"] {
            assert!(matches!(
                n.add("termina", bad, "100.115.93.5", subnet()),
                Err(NameError::NotALabel { .. })
            ));
        }
        assert_eq!(
            n.add("termina", "penguin", "127.0.0.1", subnet())
                .unwrap_err()
                .to_string(),
            "container penguin of VM termina reports address 127.0.0.1, outside its subnet \
             100.115.93.0/28"
        );
        assert!(matches!(
            n.add("termina", "penguin", "", subnet()),
            Err(NameError::BadAddress { .. })
        ));
        assert!(n.entries().is_empty());
    }

    #[test]
    fn containers_come_and_go() {
        let mut n = Names::default();
        assert!(
            n.add("termina", "penguin", "100.115.93.5", subnet())
                .unwrap()
        );
        assert!(
            !n.add("termina", "penguin", "100.115.93.5", subnet())
                .unwrap()
        );
        assert!(n.add("termina", "c1", "100.115.93.6", subnet()).unwrap());
        assert_eq!(n.entries().len(), 2);
        assert!(n.remove("termina", "c1"));
        assert!(!n.remove("termina", "c1"));
        assert_eq!(
            n.entries(),
            [HostEntry {
                addr: Ipv4Addr::new(100, 115, 93, 5),
                names: vec![
                    "penguin.termina.linux.test".into(),
                    "penguin.linux.test".into()
                ],
            }]
        );
        assert!(n.remove_vm("termina"));
        assert!(!n.remove_vm("termina"));
        assert!(n.entries().is_empty());
    }
}
