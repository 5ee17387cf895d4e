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
    routes: RwLock<HashMap<Addr, Route>>,
}

impl Registry {
    /// Adds or replaces the route for `addr` (a restarted actor replaces its dead mailbox).
    pub fn insert(&self, addr: Addr, route: Route) {
        self.write().insert(addr, route);
    }

    pub fn remove(&self, addr: &Addr) -> Option<Route> {
        self.write().remove(addr)
    }

    pub fn get(&self, addr: &Addr) -> Option<Arc<Recipient<Deliver>>> {
        self.read().get(addr).map(|r| r.recipient.clone())
    }

    pub fn contains(&self, addr: &Addr) -> bool {
        self.read().contains_key(addr)
    }

    /// Every registered actor, sorted by address.
    pub fn list(&self) -> Vec<ActorInfo> {
        let mut actors: Vec<ActorInfo> = self
            .read()
            .iter()
            .map(|(addr, r)| ActorInfo {
                addr: addr.clone(),
                restarts: r.restarts.get(),
            })
            .collect();
        actors.sort_by(|a, b| a.addr.cmp(&b.addr));
        actors
    }

    // A poisoned lock only means a panic happened while it was held; the map itself is always
    // consistent (every mutation is a single insert/remove), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Addr, Route>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Addr, Route>> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }
}
