//! Guest bridges: how the bus reaches into a VM (ARCHITECTURE.md, "Processes and actors").
//!
//! For each running VM, [`GuestBridges::start`] registers the VM's guest actors as bus addresses
//! (`maitred@<vm>`, `tremplin@<vm>`; cicerone adds `garcon@<vm>/<container>` the same way) and listens on the host ports the
//! guest's actors dial. Host actors then reach a guest actor only with
//! `bus.request(maitred@<vm>, …)`, so every host↔guest envelope is routed, deadlined and traced
//! like any other, and `crosmsg send maitred@termina …` works.
//!
//! * host → guest ([`outbound`]): a [`outbound::GuestActorBridge`] serves the guest actor's
//!   address. A request travels over a vsock stream to the guest's listener (`CONNECT <port>`
//!   through the VM's hybrid vsock socket, Hello, framed envelopes) and its reply comes back the
//!   same way, within the request's deadline. Streams are kept for the next request; one the guest
//!   closed (it restarted its listener) is replaced by a fresh one.
//! * guest → host ([`inbound`]): one listener per host port (`vsock.sock_<port>`). A connection
//!   must introduce itself, within a deadline and off the accept loop, as the one guest actor
//!   expected on that port; its envelopes are re-addressed from that actor whatever `from` they
//!   carry, and only the requests and events allowed for it reach the bus (requests go to the
//!   port's host actor, events are published). The guest is untrusted: the VM is known by the
//!   socket the connection arrived on, never by what it says.

pub mod inbound;
pub mod outbound;
pub mod vsock;

use std::path::Path;

use actix::Actor;
use cros_messages::cicerone::CiceroneRequest;
use cros_messages::maitred::MaitredEvent;
use cros_messages::vmlog::VmlogRequest;
use cros_messages::{Addr, Body, CrosError, ports};

use crate::bus::BusHandle;
use inbound::GuestPort;
use outbound::GuestActorBridge;

/// The guest actors of every VM that the host addresses, and the guest port each listens on.
/// (garcon, one per container, is registered by cicerone once the container's garcon reports.)
const GUEST_ACTORS: [(&str, u32); 2] = [("maitred", ports::MAITRED), ("tremplin", ports::TREMPLIN)];

/// Only VmReady may come in on concierge's StartupListener.
fn startup_allowed(body: &Body) -> bool {
    matches!(body, Body::MaitredEvent(MaitredEvent::VmReady {}))
}

/// Only log records may come from a guest's vm_syslog.
fn vm_syslog_allowed(body: &Body) -> bool {
    matches!(body, Body::VmlogForwarder(VmlogRequest::Records { .. }))
}

/// tremplin only reports: TremplinReady and container progress.
fn tremplin_allowed(body: &Body) -> bool {
    matches!(body, Body::TremplinEvent(_))
}

/// garcon says its container is up (a request: a wrong token is refused to its face).
fn garcon_allowed(body: &Body) -> bool {
    matches!(
        body,
        Body::Cicerone(CiceroneRequest::ContainerReady { .. }) | Body::GarconEvent(_)
    )
}

/// The host ports of every VM that its guest actors dial.
const HOST_PORTS: [GuestPort; 4] = [
    GuestPort {
        port: ports::CONCIERGE_STARTUP,
        guest_actor: "maitred",
        host_actor: "concierge",
        allowed: startup_allowed,
    },
    GuestPort {
        port: ports::VMLOG_FORWARDER,
        guest_actor: "vm_syslog",
        host_actor: "vmlog_forwarder",
        allowed: vm_syslog_allowed,
    },
    GuestPort {
        port: ports::CICERONE_TREMPLIN,
        guest_actor: "tremplin",
        host_actor: "cicerone",
        allowed: tremplin_allowed,
    },
    GuestPort {
        port: ports::CICERONE_CONTAINER,
        guest_actor: "garcon",
        host_actor: "cicerone",
        allowed: garcon_allowed,
    },
];

/// Whether a guest's Hello as `claimed` fits the actor `expected` that the socket leads to: the
/// same actor, and if it names a VM, this one. Where it lives is the socket's VM whatever it
/// says; garcon in a container does not know its VM's name and introduces itself as `garcon`.
pub fn hello_matches(claimed: &Addr, expected: &Addr) -> bool {
    claimed.actor == expected.actor && (claimed.vm.is_none() || claimed.vm == expected.vm)
}

/// One VM's bridges: its guest actors registered on the bus, its host ports listening. Dropping
/// it unregisters the actors and closes the listeners (the VM stopped).
pub struct GuestBridges {
    bus: BusHandle,
    registered: Vec<(Addr, actix::Addr<GuestActorBridge>)>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl GuestBridges {
    /// Bridges VM `vm`, whose hybrid vsock socket is `uds`. The host ports listen before this
    /// returns, so a guest started afterwards finds them. Must run on an actix arbiter (the
    /// listeners are tasks of the current one).
    pub fn start(bus: &BusHandle, vm: &str, uds: &Path) -> Result<Self, CrosError> {
        let mut bridges = Self {
            bus: bus.clone(),
            registered: Vec::new(),
            listeners: Vec::new(),
        };
        for port in HOST_PORTS {
            let listener = vsock::listen_guest_port(uds, port.port)?;
            bridges
                .listeners
                .push(tokio::task::spawn_local(inbound::serve(
                    listener,
                    bus.clone(),
                    vm.to_string(),
                    port,
                    inbound::Limits::default(),
                )));
        }
        for (actor, port) in GUEST_ACTORS {
            let addr = Addr::in_vm(actor, vm);
            let bridge = GuestActorBridge::new(addr.clone(), uds.to_path_buf(), port).start();
            bus.register(addr.clone(), bridge.clone().recipient());
            bridges.registered.push((addr, bridge));
        }
        Ok(bridges)
    }
}

impl Drop for GuestBridges {
    fn drop(&mut self) {
        for (addr, _) in self.registered.drain(..) {
            self.bus.unregister(&addr);
        }
        for listener in self.listeners.drain(..) {
            listener.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusConfig;
    use std::os::unix::fs::PermissionsExt;

    #[actix::test]
    async fn a_vms_guest_actors_are_on_the_bus_while_its_bridges_live() {
        let dir = tempfile::tempdir().unwrap();
        let bus = BusHandle::new(BusConfig::default()).unwrap();
        let uds = dir.path().join("vsock.sock");
        let maitred = Addr::in_vm("maitred", "termina");
        let bridges = GuestBridges::start(&bus, "termina", &uds).unwrap();
        assert!(bus.is_registered(&maitred));
        for port in HOST_PORTS {
            let path = dir.path().join(format!("vsock.sock_{}", port.port));
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        drop(bridges);
        assert!(!bus.is_registered(&maitred));
    }
}
