//! The registry: which actor address is served by which mailbox.
//!
//! A route is an actix [`Recipient`] of [`Deliver`], so a host actor on its own arbiter and a
//! bridge actor that forwards to a guest (`maitred@termina`) register the same way: the bus never
//! knows which kind it is talking to.

use super::Deliver;
use actix::Recipient;
use cros_messages::Addr;
use cros_messages::bus::ActorInfo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

/// How many times the supervisor restarted an actor; shared between the registry (which reports
/// it) and the supervisor (which bumps it).
#[derive(Debug, Default, Clone)]
pub struct RestartCounter(Arc<AtomicU32>);

impl RestartCounter {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn bump(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[derive(Clone)]
pub(crate) struct Route {
    /// Shared so a lookup costs a reference count, not a boxed clone of the recipient.
    pub recipient: Arc<Recipient<Deliver>>,
    pub restarts: RestartCounter,
}

/// Named routes. Reads (every routed message) take a shared lock only.
#[derive(Default)]
pub(crate) struct Registry {
    routes: RwLock<HashMap<Addr, Entry>>,
}

/// A registered route; `pinned` routes stay whatever else registers or unregisters the address
/// (isolated replay keeps its trace responders where the replayed actor registers bridges).
#[derive(Clone)]
pub(crate) struct Entry {
    route: Route,
    pinned: bool,
}

impl Registry {
    /// Adds or replaces the route for `addr` (a restarted actor replaces its dead mailbox).
    /// Returns false, changing nothing, when `addr` is pinned.
    pub fn insert(&self, addr: Addr, route: Route) -> bool {
        self.set(addr, route, false)
    }

    /// Adds the route for `addr` for good: later inserts and removes leave it.
    pub fn pin(&self, addr: Addr, route: Route) {
        self.set(addr, route, true);
    }

    fn set(&self, addr: Addr, route: Route, pinned: bool) -> bool {
        let mut routes = self.write();
        if !pinned && routes.get(&addr).is_some_and(|e| e.pinned) {
            return false;
        }
        routes.insert(addr, Entry { route, pinned });
        true
    }

    pub fn remove(&self, addr: &Addr) -> Option<Route> {
        let mut routes = self.write();
        if routes.get(addr).is_some_and(|e| e.pinned) {
            return None;
        }
        routes.remove(addr).map(|e| e.route)
    }

    pub fn get(&self, addr: &Addr) -> Option<Arc<Recipient<Deliver>>> {
        self.read().get(addr).map(|e| e.route.recipient.clone())
    }

    pub fn contains(&self, addr: &Addr) -> bool {
        self.read().contains_key(addr)
    }

    /// Every registered actor, sorted by address.
    pub fn list(&self) -> Vec<ActorInfo> {
        let mut actors: Vec<ActorInfo> = self
            .read()
            .iter()
            .map(|(addr, e)| ActorInfo {
                addr: addr.clone(),
                restarts: e.route.restarts.get(),
            })
            .collect();
        actors.sort_by(|a, b| a.addr.cmp(&b.addr));
        actors
    }

    // A poisoned lock only means a panic happened while it was held; the map itself is always
    // consistent (every mutation is a single insert/remove), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Addr, Entry>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Addr, Entry>> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }
}
