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
}

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

impl Pool {
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
