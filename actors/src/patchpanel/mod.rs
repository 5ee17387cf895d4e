//! patchpanel: each VM's network on the host (issue 14). A VM gets a /30 from the address pool
//! ([`pool`]), a tap holding the host's end of it ([`tap`]), and forwarding plus NAT to the
//! host's uplinks in crosd's own nftables table ([`nft`]); ReleaseNetwork, and the next crosd's
//! start after one was killed, remove them again.
//!
//! The work is a few short `ip`/`nft` runs per VM start and stop, done on the actor's thread.

pub mod hosts;
pub mod nft;
pub mod pool;
pub mod resolv;
pub mod tap;

use crate::bus::{Deliver, not_mine};
use crate::config::NetworkConfig;
use actix::{Actor, Context, Handler, MessageResult};
use cros_messages::patchpanel::{PatchpanelReply, PatchpanelRequest, VmNetwork};
use cros_messages::{Body, CrosError};
use pool::{Allocations, Subnet};
use std::sync::{Arc, Mutex, PoisonError};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What outlives one instance of the actor (a restart after a panic): the VMs' /30s, and
/// whether this process already cleared a killed crosd's leftovers.
#[derive(Clone, Default)]
pub struct SharedState(Arc<Mutex<Option<State>>>);

struct State {
    allocations: Allocations,
}

pub struct Patchpanel {
    config: NetworkConfig,
    shared: SharedState,
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
}

impl Patchpanel {
    pub fn new(config: NetworkConfig, shared: SharedState) -> Self {
        Self { config, shared }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        let state = guard.get_or_insert_with(|| {
            // First instance in this process: whatever crosdtap*/inet crosd exists is a
            // killed crosd's.
            if self.config.enabled
                && let Err(e) = clean_up_leftovers()
            {
                tracing::warn!("patchpanel: cannot remove a previous crosd's network: {e}");
            }
            State {
                allocations: Allocations::new(self.config.pool),
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
                self.with_state(|s| allocate(s, &vm))
                    .map(|(vm, subnet)| PatchpanelReply::NetworkAllocated {
                        network: describe(&vm, &subnet),
                    })
                    .map_err(|e| CrosError::unavailable(format!("network for VM {vm:?}: {e}")))
            }
            PatchpanelRequest::ReleaseNetwork { vm } => {
                match self.with_state(|s| release(s, &vm)) {
                    Ok(true) => Ok(PatchpanelReply::NetworkReleased { vm }),
                    Ok(false) => Err(CrosError::not_found(format!("VM {vm:?} has no network"))),
                    Err(e) => Err(CrosError::internal(format!(
                        "removing VM {vm:?}'s network: {e}"
                    ))),
                }
            }
            PatchpanelRequest::ListNetworks {} => {
                let networks = self.with_state(|s| {
                    s.allocations
                        .iter()
                        .map(|(vm, subnet)| describe(vm, &subnet))
                        .collect()
                });
                Ok(PatchpanelReply::Networks { networks })
            }
        }
    }
}

/// Makes `vm`'s tap (unless it has one) and rewrites the rules; undoes its part on failure.
fn allocate(state: &mut State, vm: &str) -> Result<(String, Subnet), NetError> {
    if let Some(subnet) = state.allocations.get(vm)
        && tap::exists(&tap::tap_name(&subnet))
    {
        return Ok((vm.to_string(), subnet));
    }
    let subnet = state.allocations.allocate(vm)?;
    let name = tap::tap_name(&subnet);
    let made = tap::create(&name, &subnet)
        .map_err(NetError::from)
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

/// Removes `vm`'s tap and rules; `false` when it had none. Forwarding stays on: other users of
/// the host may rely on it, and it forwards nothing crosd's table does not allow.
fn release(state: &mut State, vm: &str) -> Result<bool, NetError> {
    let Some(subnet) = state.allocations.release(vm) else {
        return Ok(false);
    };
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

fn describe(vm: &str, subnet: &Subnet) -> VmNetwork {
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
        dns: resolv::host_nameservers(),
    }
}

impl Actor for Patchpanel {
    type Context = Context<Self>;
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
