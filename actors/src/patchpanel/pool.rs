//! The address pool: crosd's range (100.115.92.0/24 by default, as Crostini's patchpanel) cut
//! into /30s, one per VM: the network, the host's tap (.1, the guest's gateway), the guest (.2)
//! and the broadcast address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Each VM's share of the pool: 4 addresses.
pub const SUBNET_PREFIX: u8 = 30;
const SUBNET_SIZE: u32 = 1 << (32 - SUBNET_PREFIX);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("address pool {0:?} is not ADDRESS/PREFIX (for example 100.115.92.0/24)")]
    Syntax(String),
    #[error("address pool {0}/{1}: the prefix must be 8..=30 to hold at least one /30")]
    Prefix(Ipv4Addr, u8),
    #[error("address pool {0}/{1} has host bits set (its network is {2}/{1})")]
    HostBits(Ipv4Addr, u8, Ipv4Addr),
    #[error("address pool {0} is exhausted: {1} VMs hold all its /30s")]
    Exhausted(Pool, usize),
    #[error(
        "container pool {0} has no /{CONTAINER_PREFIX} for the VM on /30 number {1}: give it a \
         shorter prefix"
    )]
    NoContainerSubnet(Pool, u32),
    #[error("container pool {0} overlaps the VM address pool {1}")]
    Overlap(Pool, Pool),
}

/// Each VM's containers' subnet (lxdbr0 in the VM): a /28, as Crostini's LXD subnets.
pub const CONTAINER_PREFIX: u8 = 28;

/// An IPv4 range, `base/prefix`, with `base` its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    base: Ipv4Addr,
    prefix: u8,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            base: Ipv4Addr::new(100, 115, 92, 0),
            prefix: 24,
        }
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Pool {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, PoolError> {
        let syntax = || PoolError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let base: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if !(8..=SUBNET_PREFIX).contains(&prefix) {
            return Err(PoolError::Prefix(base, prefix));
        }
        let network = Ipv4Addr::from(u32::from(base) & mask(prefix));
        if network != base {
            return Err(PoolError::HostBits(base, prefix, network));
        }
        Ok(Self { base, prefix })
    }
}

/// The default range of the containers' subnets: the /24 after the VMs' default pool.
pub fn default_container_pool() -> Pool {
    Pool {
        base: Ipv4Addr::new(100, 115, 93, 0),
        prefix: 24,
    }
}

impl Pool {
    /// The `index`th /`prefix` of the pool, when it holds one.
    fn slice(&self, index: u32, prefix: u8) -> Option<Ipv4Addr> {
        let count = 1u64 << (prefix.checked_sub(self.prefix)?);
        (u64::from(index) < count)
            .then(|| Ipv4Addr::from(u32::from(self.base) + (index << (32 - prefix))))
    }

    /// The containers' /28 of the VM on /30 number `index`, from this (container) pool.
    pub fn container_subnet(&self, index: u32) -> Result<ContainerSubnet, PoolError> {
        self.slice(index, CONTAINER_PREFIX)
            .map(|network| ContainerSubnet { network })
            .ok_or(PoolError::NoContainerSubnet(*self, index))
    }

    pub fn overlaps(&self, other: &Pool) -> bool {
        let prefix = self.prefix.min(other.prefix);
        u32::from(self.base) & mask(prefix) == u32::from(other.base) & mask(prefix)
    }

    /// How many /30s the pool holds.
    pub fn subnets(&self) -> u32 {
        1 << (SUBNET_PREFIX - self.prefix)
    }

    pub fn subnet(&self, index: u32) -> Option<Subnet> {
        (index < self.subnets()).then(|| Subnet {
            index,
            network: Ipv4Addr::from(u32::from(self.base) + index * SUBNET_SIZE),
        })
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// One VM's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Its place in the pool; also names the tap (`crosdtap<index>`).
    pub index: u32,
    pub network: Ipv4Addr,
}

impl Subnet {
    /// The host's tap address and the guest's gateway.
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn guest(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(SUBNET_PREFIX))
    }
}

/// One VM's containers' subnet: lxdbr0 in the VM holds .1, LXD's dnsmasq leases the rest;
/// the host routes it through the VM's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerSubnet {
    pub network: Ipv4Addr,
}

impl ContainerSubnet {
    /// lxdbr0's address with the prefix, as LXD's `ipv4.address` takes it.
    pub fn bridge_address(&self) -> String {
        format!(
            "{}/{CONTAINER_PREFIX}",
            Ipv4Addr::from(u32::from(self.network) + 1)
        )
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(CONTAINER_PREFIX) == u32::from(self.network)
    }
}

impl std::fmt::Display for ContainerSubnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{CONTAINER_PREFIX}", self.network)
    }
}

/// Which VM holds which /30.
#[derive(Debug, Default)]
pub struct Allocations {
    pool: Pool,
    by_vm: BTreeMap<String, Subnet>,
}

impl Allocations {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            by_vm: BTreeMap::new(),
        }
    }

    /// `vm`'s /30: the one it holds, else the lowest free one.
    pub fn allocate(&mut self, vm: &str) -> Result<Subnet, PoolError> {
        if let Some(s) = self.by_vm.get(vm) {
            return Ok(*s);
        }
        let taken: std::collections::BTreeSet<u32> = self.by_vm.values().map(|s| s.index).collect();
        let subnet = (0..self.pool.subnets())
            .find(|i| !taken.contains(i))
            .and_then(|i| self.pool.subnet(i))
            .ok_or(PoolError::Exhausted(self.pool, self.by_vm.len()))?;
        self.by_vm.insert(vm.to_string(), subnet);
        Ok(subnet)
    }

    /// Returns `vm`'s /30 to the pool; `None` when it held none.
    pub fn release(&mut self, vm: &str) -> Option<Subnet> {
        self.by_vm.remove(vm)
    }

    pub fn get(&self, vm: &str) -> Option<Subnet> {
        self.by_vm.get(vm).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Subnet)> {
        self.by_vm.iter().map(|(vm, s)| (vm.as_str(), *s))
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_hands_out_crostini_slash30s() {
        let mut a = Allocations::new(Pool::default());
        let t = a.allocate("termina").unwrap();
        assert_eq!(t.network, Ipv4Addr::new(100, 115, 92, 0));
        assert_eq!(t.host(), Ipv4Addr::new(100, 115, 92, 1));
        assert_eq!(t.guest(), Ipv4Addr::new(100, 115, 92, 2));
        assert_eq!(t.netmask(), Ipv4Addr::new(255, 255, 255, 252));
        let b = a.allocate("other").unwrap();
        assert_eq!(b.index, 1);
        assert_eq!(b.guest(), Ipv4Addr::new(100, 115, 92, 6));
        // The same VM asking again gets the same /30.
        assert_eq!(a.allocate("termina").unwrap(), t);
    }

    #[test]
    fn released_subnets_are_reused_lowest_first() {
        let mut a = Allocations::new(Pool::default());
        for vm in ["a", "b", "c"] {
            a.allocate(vm).unwrap();
        }
        assert_eq!(a.release("a").map(|s| s.index), Some(0));
        assert_eq!(a.release("a"), None);
        assert_eq!(a.allocate("d").unwrap().index, 0);
        assert_eq!(a.allocate("e").unwrap().index, 3);
    }

    #[test]
    fn a_full_pool_says_so() {
        let mut a = Allocations::new("10.1.0.0/29".parse().unwrap());
        a.allocate("a").unwrap();
        a.allocate("b").unwrap();
        let err = a.allocate("c").unwrap_err();
        assert_eq!(
            err.to_string(),
            "address pool 10.1.0.0/29 is exhausted: 2 VMs hold all its /30s"
        );
    }

    #[test]
    fn each_vm_s_containers_get_a_slash28_of_the_container_pool() {
        let pool = default_container_pool();
        let c0 = pool.container_subnet(0).unwrap();
        assert_eq!(c0.to_string(), "100.115.93.0/28");
        assert_eq!(c0.bridge_address(), "100.115.93.1/28");
        assert!(c0.contains(Ipv4Addr::new(100, 115, 93, 14)));
        assert!(!c0.contains(Ipv4Addr::new(100, 115, 93, 16)));
        assert!(!c0.contains(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            pool.container_subnet(15).unwrap().to_string(),
            "100.115.93.240/28"
        );
        assert_eq!(
            pool.container_subnet(16).unwrap_err().to_string(),
            "container pool 100.115.93.0/24 has no /28 for the VM on /30 number 16: give it a \
             shorter prefix"
        );
        let small: Pool = "10.0.0.0/30".parse().unwrap();
        assert!(small.container_subnet(0).is_err());
        assert!(!pool.overlaps(&Pool::default()));
        assert!(pool.overlaps(&"100.115.0.0/16".parse().unwrap()));
    }

    #[test]
    fn bad_pools_are_refused_naming_the_input() {
        assert_eq!(
            "10.0.0.0".parse::<Pool>(),
            Err(PoolError::Syntax("10.0.0.0".into()))
        );
        assert_eq!(
            "10.0.0.0/31".parse::<Pool>(),
            Err(PoolError::Prefix(Ipv4Addr::new(10, 0, 0, 0), 31))
        );
        let err = "10.0.0.5/24".parse::<Pool>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "address pool 10.0.0.5/24 has host bits set (its network is 10.0.0.0/24)"
        );
        assert_eq!("10.9.0.0/16".parse::<Pool>().unwrap().subnets(), 16384);
    }
}
