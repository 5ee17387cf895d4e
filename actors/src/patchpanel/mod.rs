//! patchpanel: each VM's network on the host (issue 14). A VM gets a /30 from the address pool
//! ([`pool`]), a tap holding the host's end of it ([`tap`]), and forwarding plus NAT to the
//! host's uplinks in crosd's own nftables table ([`nft`]); ReleaseNetwork, and the next crosd's
//! start after one was killed, remove them again.
//!
//! Each VM also gets a /28 for its containers (lxdbr0 in the VM, from the container pool),
//! routed on the host through the VM's address, and the running containers' names go into
//! crosd's block of the hosts file ([`names`], [`hosts`]) as cicerone announces them
//! (ContainerStarted, ContainerShutdown); a VM's names go with its network.
//!
//! The work is a few short `ip`/`nft` runs and a hosts-file rewrite per VM or container start
//! and stop, done on the actor's thread.

pub mod hosts;
pub mod names;
pub mod nft;
pub mod pool;
pub mod resolv;
pub mod tap;

use crate::bus::{BusHandle, Deliver, Published, actor_sink, not_mine};
use crate::config::NetworkConfig;
use actix::{Actor, AsyncContext, Context, Handler, MessageResult};
use cros_messages::cicerone::CiceroneEvent;
use cros_messages::patchpanel::{PatchpanelReply, PatchpanelRequest, VmNetwork};
use cros_messages::{Addr, Body, CrosError};
use pool::{Allocations, ContainerSubnet, Pool, Subnet};
use std::sync::{Arc, Mutex, PoisonError};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What outlives one instance of the actor (a restart after a panic): the VMs' /30s, and
/// whether this process already cleared a killed crosd's leftovers.
#[derive(Clone, Default)]
pub struct SharedState(Arc<Mutex<Option<State>>>);

struct State {
    allocations: Allocations,
    names: names::Names,
}

pub struct Patchpanel {
    config: NetworkConfig,
    shared: SharedState,
    /// Where cicerone's container events come from; `None` for a patchpanel on its own (tests).
    bus: Option<BusHandle>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error("cannot enable IPv4 forwarding ({IP_FORWARD}): {0}")]
    Forwarding(std::io::Error),
    #[error(transparent)]
    Hosts(#[from] hosts::HostsError),
}

impl Patchpanel {
    pub fn new(config: NetworkConfig, shared: SharedState) -> Self {
        Self {
            config,
            shared,
            bus: None,
        }
    }

    /// Follows cicerone's container events on `bus` (for the containers' names).
    pub fn on_bus(mut self, bus: BusHandle) -> Self {
        self.bus = Some(bus);
        self
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        let state = guard.get_or_insert_with(|| {
            // First instance in this process: whatever crosdtap*/inet crosd exists, and any
            // name in the hosts file, is a killed crosd's.
            if self.config.enabled {
                if let Err(e) = clean_up_leftovers() {
                    tracing::warn!("patchpanel: cannot remove a previous crosd's network: {e}");
                }
                if let Err(e) = hosts::write(&self.config.hosts_file, &[]) {
                    tracing::warn!("patchpanel: cannot clear a previous crosd's names: {e}");
                }
            }
            State {
                allocations: Allocations::new(self.config.pool),
                names: names::Names::default(),
            }
        });
        f(state)
    }

    fn handle_request(&mut self, req: PatchpanelRequest) -> Result<PatchpanelReply, CrosError> {
        match req {
            PatchpanelRequest::AllocateNetwork { vm } => {
                if !self.config.enabled {
                    return Err(CrosError::unsupported(format!(
                        "cannot give VM {vm:?} a network: crosd runs without networking \
                         (--no-network, or it is not root, or there is no /dev/net/tun)"
                    )));
                }
                let (container_pool, dns) = (self.config.container_pool, self.dns());
                self.with_state(|s| allocate(s, container_pool, &vm))
                    .map(|(vm, subnet)| PatchpanelReply::NetworkAllocated {
                        network: Box::new(describe(&vm, &subnet, container_pool, dns)),
                    })
                    .map_err(|e| CrosError::unavailable(format!("network for VM {vm:?}: {e}")))
            }
            PatchpanelRequest::ReleaseNetwork { vm } => {
                let hosts_file = self.config.hosts_file.clone();
                match self.with_state(|s| release(s, &hosts_file, &vm)) {
                    Ok(true) => Ok(PatchpanelReply::NetworkReleased { vm }),
                    Ok(false) => Err(CrosError::not_found(format!("VM {vm:?} has no network"))),
                    Err(e) => Err(CrosError::internal(format!(
                        "removing VM {vm:?}'s network: {e}"
                    ))),
                }
            }
            PatchpanelRequest::ListNetworks {} => {
                let (container_pool, dns) = (self.config.container_pool, self.dns());
                let networks = self.with_state(|s| {
                    s.allocations
                        .iter()
                        .map(|(vm, subnet)| describe(vm, &subnet, container_pool, dns.clone()))
                        .collect()
                });
                Ok(PatchpanelReply::Networks { networks })
            }
        }
    }

    /// The guests' name servers: the configured ones, else the host's.
    fn dns(&self) -> Vec<String> {
        self.config
            .dns
            .clone()
            .unwrap_or_else(resolv::host_nameservers)
    }

    /// A container event from cicerone: its name comes or goes.
    fn container_event(&mut self, event: CiceroneEvent) {
        let (container_pool, hosts_file) =
            (self.config.container_pool, self.config.hosts_file.clone());
        let result = self.with_state(|s| {
            let changed = match &event {
                CiceroneEvent::ContainerStarted {
                    vm,
                    container,
                    ipv4,
                    ..
                } => {
                    // A VM without a network from us has no routed container subnet to name.
                    let Some(subnet) = s.allocations.get(vm) else {
                        return Ok(());
                    };
                    let containers = container_pool.container_subnet(subnet.index)?;
                    if ipv4.is_empty() {
                        tracing::info!(vm, container, "container has no address yet: no name");
                        return Ok(());
                    }
                    match s.names.add(vm, container, ipv4, containers) {
                        Ok(changed) => changed,
                        Err(e) => {
                            tracing::warn!("patchpanel: no name for a container: {e}");
                            return Ok(());
                        }
                    }
                }
                CiceroneEvent::ContainerShutdown { vm, container }
                | CiceroneEvent::LxdContainerDeleted { vm, container } => {
                    s.names.remove(vm, container)
                }
                _ => false,
            };
            if changed {
                hosts::write(&hosts_file, &s.names.entries())?;
            }
            Ok::<(), NetError>(())
        });
        if let Err(e) = result {
            tracing::warn!("patchpanel: container names: {e}");
        }
    }
}

/// Makes `vm`'s tap (unless it has one), the route to its containers and rewrites the rules;
/// undoes its part on failure.
fn allocate(
    state: &mut State,
    container_pool: Pool,
    vm: &str,
) -> Result<(String, Subnet), NetError> {
    if let Some(subnet) = state.allocations.get(vm)
        && tap::exists(&tap::tap_name(&subnet))
    {
        return Ok((vm.to_string(), subnet));
    }
    let subnet = state.allocations.allocate(vm)?;
    let name = tap::tap_name(&subnet);
    let made = container_pool
        .container_subnet(subnet.index)
        .map_err(NetError::from)
        .and_then(|containers| {
            tap::create(&name, &subnet)?;
            tap::route_containers(&name, &subnet, &containers)?;
            Ok(())
        })
        .and_then(|()| std::fs::write(IP_FORWARD, "1").map_err(NetError::Forwarding))
        .and_then(|()| apply_rules(state));
    if let Err(e) = made {
        state.allocations.release(vm);
        if tap::exists(&name) {
            let _ = tap::remove(&name);
        }
        // The rules as they were before this VM (best effort: the error above is the news).
        let _ = apply_rules(state);
        return Err(e);
    }
    Ok((vm.to_string(), subnet))
}

/// Removes `vm`'s tap (and with it the route to its containers), its rules and its containers'
/// names; `false` when it had none. Forwarding stays on: other users of the host may rely on
/// it, and it forwards nothing crosd's table does not allow.
fn release(state: &mut State, hosts_file: &std::path::Path, vm: &str) -> Result<bool, NetError> {
    let Some(subnet) = state.allocations.release(vm) else {
        return Ok(false);
    };
    // The names first go from the table, so a later write cannot bring them back; a hosts file
    // that cannot be written must not keep the tap and rules, so it only gets a warning.
    if state.names.remove_vm(vm)
        && let Err(e) = hosts::write(hosts_file, &state.names.entries())
    {
        tracing::warn!("patchpanel: VM {vm:?}'s container names stay: {e}");
    }
    let name = tap::tap_name(&subnet);
    let removed = if tap::exists(&name) {
        tap::remove(&name).map_err(NetError::from)
    } else {
        Ok(())
    };
    apply_rules(state)?;
    removed.map(|()| true)
}

fn apply_rules(state: &State) -> Result<(), NetError> {
    let taps: Vec<nft::TapRule> = state
        .allocations
        .iter()
        .map(|(_, subnet)| nft::TapRule {
            tap: tap::tap_name(&subnet),
            subnet,
        })
        .collect();
    nft::apply(&nft::table_script(state.allocations.pool(), &taps))?;
    Ok(())
}

/// Removes every `crosdtap*` and the `inet crosd` table in this network namespace.
pub fn clean_up_leftovers() -> Result<Vec<String>, NetError> {
    let taps = tap::leftovers()?;
    for name in &taps {
        tap::remove(name)?;
    }
    if nft::table_exists()? {
        nft::apply(&nft::table_script(pool::Pool::default(), &[]))?;
    }
    if !taps.is_empty() {
        tracing::info!("patchpanel: removed a previous crosd's taps {taps:?}");
    }
    Ok(taps)
}

fn describe(vm: &str, subnet: &Subnet, container_pool: Pool, dns: Vec<String>) -> VmNetwork {
    // allocate() refused a VM whose /30 has no /28 in the container pool, so this is Some.
    let containers: Option<ContainerSubnet> = container_pool.container_subnet(subnet.index).ok();
    VmNetwork {
        vm: vm.to_string(),
        tap: tap::tap_name(subnet),
        host_addr: subnet.host().to_string(),
        guest_addr: subnet.guest().to_string(),
        netmask: subnet.netmask().to_string(),
        prefix_len: pool::SUBNET_PREFIX,
        gateway: subnet.host().to_string(),
        mac: {
            let [a, b, c, d] = subnet.guest().octets();
            format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
        },
        dns,
        container_subnet: containers.map(|c| c.to_string()).unwrap_or_default(),
        lxd_ipv4_subnet: containers.map(|c| c.bridge_address()).unwrap_or_default(),
    }
}

impl Actor for Patchpanel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // crosd's start: a killed crosd's taps, rules and names go now, not at the first VM.
        if self.config.enabled {
            self.with_state(|_| ());
        }
        if let Some(bus) = &self.bus {
            let prefixes = [
                "CiceroneEvent::ContainerStarted",
                "CiceroneEvent::ContainerShutdown",
                "CiceroneEvent::LxdContainerDeleted",
            ];
            bus.subscribe(
                Addr::host("patchpanel"),
                prefixes.map(String::from).to_vec(),
                actor_sink(ctx.address().downgrade()),
            );
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(bus) = &self.bus {
            bus.unsubscribe(&Addr::host("patchpanel"));
        }
    }
}

/// A container event cicerone published (see [`Actor::started`]).
impl Handler<Published> for Patchpanel {
    type Result = ();

    fn handle(&mut self, Published(env): Published, _ctx: &mut Context<Self>) {
        // Only cicerone speaks for containers; the bus sets `from`, so a guest cannot pose.
        if env.from != Addr::host("cicerone") {
            tracing::debug!(from = %env.from, "patchpanel: event from an unexpected sender");
            return;
        }
        if let Body::CiceroneEvent(event) = env.body {
            self.container_event(event);
        }
    }
}

impl Handler<Deliver> for Patchpanel {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(match msg.env.body {
            Body::Patchpanel(req) => match self.handle_request(req) {
                Ok(reply) => Body::PatchpanelReply(reply),
                Err(e) => Body::Error(e),
            },
            other => not_mine("patchpanel", &other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::ErrorKind;

    #[test]
    fn without_networking_allocation_is_refused_and_nothing_is_touched() {
        let mut p = Patchpanel::new(NetworkConfig::default(), SharedState::default());
        let err = p
            .handle_request(PatchpanelRequest::AllocateNetwork {
                vm: "termina".into(),
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.message.contains("\"termina\""), "{err:?}");
        assert_eq!(
            p.handle_request(PatchpanelRequest::ListNetworks {}),
            Ok(PatchpanelReply::Networks { networks: vec![] })
        );
        let err = p
            .handle_request(PatchpanelRequest::ReleaseNetwork {
                vm: "termina".into(),
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
    }
}
