//! Telling cicerone which VMs run (REFERENCE.md's StartVm sequence: NotifyVmStarted once the VM
//! is up, NotifyVmStopped once it is gone), so it can reach their tremplin and garcons.

use std::time::Duration;

use cros_messages::cicerone::CiceroneRequest;
use cros_messages::concierge::VmInfo;
use cros_messages::{Addr, Body};

use crate::bus::BusHandle;

/// cicerone answers from its own table: a short wait is plenty.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// A random token per VM run: a late NotifyVmStopped about an earlier run of the same name
/// cannot make cicerone forget the current one.
pub fn new_vm_token() -> String {
    super::disk_op::new_uuid().unwrap_or_default()
}

fn cicerone() -> Addr {
    Addr::host(cros_messages::ActorKind::Cicerone.name())
}

/// NotifyVmStarted for a VM that now runs. A cicerone that does not answer leaves the VM
/// running without containers; that is logged, not a failed start.
pub async fn started(bus: &BusHandle, info: &VmInfo, owner_uid: u32, token: &str) {
    let req = CiceroneRequest::NotifyVmStarted {
        vm: info.name.clone(),
        cid: info.cid,
        token: token.to_string(),
        pid: info.pid,
        owner_uid,
        vsock_socket: info.vsock_socket.clone(),
    };
    let asked = bus
        .request_with_deadline(
            &Addr::host("concierge"),
            &cicerone(),
            Body::Cicerone(req),
            NOTIFY_TIMEOUT,
        )
        .await;
    if let Err(e) = asked {
        tracing::warn!(vm = %info.name, error = %e, "NotifyVmStarted failed: the VM's containers are unreachable");
    }
}

/// NotifyVmStopped, in the background (concierge forgets the VM at once either way).
pub fn stopped(bus: &BusHandle, vm: &str, token: &str) {
    let req = CiceroneRequest::NotifyVmStopped {
        vm: vm.to_string(),
        token: token.to_string(),
    };
    let asked = bus.request_with_deadline(
        &Addr::host("concierge"),
        &cicerone(),
        Body::Cicerone(req),
        NOTIFY_TIMEOUT,
    );
    let vm = vm.to_string();
    actix::spawn(async move {
        if let Err(e) = asked.await {
            tracing::debug!(vm = %vm, error = %e, "NotifyVmStopped not taken");
        }
    });
}
