//! concierge's side of a VM's network: patchpanel's tap and /30 before the VM starts, maitred's
//! ConfigureNetwork once it is up, and the release when it is gone. A crosd without networking
//! (patchpanel answers Unsupported) starts VMs without a network device, as before.

use crate::bus::BusHandle;
use cros_hypervisor::NetSpec;
use cros_messages::maitred::{MaitredReply, MaitredRequest};
use cros_messages::patchpanel::{PatchpanelReply, PatchpanelRequest, VmNetwork};
use cros_messages::{Addr, Body, CrosError, ErrorKind};
use std::time::Duration;

fn patchpanel() -> Addr {
    Addr::host("patchpanel")
}

/// `vm`'s network, or `None` when crosd runs without networking.
pub async fn allocate(bus: &BusHandle, vm: &str) -> Result<Option<VmNetwork>, CrosError> {
    let req = Body::Patchpanel(PatchpanelRequest::AllocateNetwork { vm: vm.to_string() });
    match bus
        .request(&Addr::host("concierge"), &patchpanel(), req)
        .await
    {
        Ok(Body::PatchpanelReply(PatchpanelReply::NetworkAllocated { network })) => {
            tracing::info!(vm, tap = %network.tap, guest = %network.guest_addr, "network allocated");
            Ok(Some(*network))
        }
        // Unsupported: crosd runs without networking. NotFound: no patchpanel on this bus (a
        // bus with only some of the host actors, as in concierge's tests and isolated
        // replays); AllocateNetwork itself never answers NotFound.
        Ok(Body::Error(e)) | Err(e)
            if matches!(e.kind, ErrorKind::Unsupported | ErrorKind::NotFound) =>
        {
            Ok(None)
        }
        Ok(Body::Error(e)) | Err(e) => Err(e),
        Ok(other) => Err(CrosError::internal(format!(
            "patchpanel answered AllocateNetwork with {}",
            other.type_name()
        ))),
    }
}

pub fn net_spec(network: &VmNetwork) -> NetSpec {
    NetSpec {
        tap: network.tap.clone(),
        mac: Some(network.mac.clone()),
    }
}

/// Sets the guest's side (maitred ConfigureNetwork).
pub async fn configure_guest(
    bus: &BusHandle,
    vm: &str,
    network: &VmNetwork,
    deadline: Duration,
) -> Result<(), CrosError> {
    let req = MaitredRequest::ConfigureNetwork {
        address: network.guest_addr.clone(),
        netmask: network.netmask.clone(),
        gateway: network.gateway.clone(),
        dns: network.dns.clone(),
    };
    match super::vm::ask_maitred(bus, vm, req, deadline).await? {
        MaitredReply::Ack {} => Ok(()),
        other => Err(CrosError::internal(format!(
            "maitred answered ConfigureNetwork with {}",
            Body::MaitredReply(other).type_name()
        ))),
    }
}

/// Removes `vm`'s tap and rules, in the background (the VM is gone; nothing waits on this).
pub fn release(bus: &BusHandle, vm: &str) {
    let (bus, vm) = (bus.clone(), vm.to_string());
    actix::spawn(async move {
        let req = Body::Patchpanel(PatchpanelRequest::ReleaseNetwork { vm: vm.clone() });
        match bus
            .request(&Addr::host("concierge"), &patchpanel(), req)
            .await
        {
            Ok(Body::PatchpanelReply(_)) => {}
            // No network (none was allocated, or crosd runs without): nothing to remove.
            Ok(Body::Error(e)) | Err(e)
                if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Unsupported) => {}
            Ok(Body::Error(e)) | Err(e) => {
                tracing::warn!(vm, error = %e, "cannot remove the VM's network")
            }
            Ok(other) => tracing::warn!(
                vm,
                "patchpanel answered ReleaseNetwork with {}",
                other.type_name()
            ),
        }
    });
}
