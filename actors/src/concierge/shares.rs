//! concierge's part in folder sharing (REFERENCE.md's StartVm sequence): seneschal starts the
//! VM's 9P server before the VMM does (StartServer, for the VM's cid, listening in its runtime
//! directory), maitred mounts it at /mnt/shared once the VM is up (Mount9P), and the server
//! stops with the VM (StopServer). Sharing is never a reason for a VM not to run: a server
//! that cannot start or mount is logged and the VM boots without shares.

use std::time::Duration;

use cros_messages::maitred::MaitredRequest;
use cros_messages::seneschal::{IdMapEntry, SeneschalReply, SeneschalRequest};
use cros_messages::{Addr, Body};

use crate::bus::BusHandle;

use super::vm::{BootPlan, ask_maitred};

/// Where the shares appear in the VM (and, through LXD's profile, at /mnt/chromeos in its
/// containers).
pub const SHARED_MOUNT: &str = "/mnt/shared";
/// The guest user that owns the shared files (termina's and the containers' first user).
const GUEST_USER: u32 = 1000;
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// A VM's 9P server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareServer {
    pub handle: u64,
    pub port: u32,
}

fn seneschal() -> Addr {
    Addr::host("seneschal")
}

/// StartServer for the VM of `plan`, owned by `owner`; None (logged) when it cannot start.
pub async fn start_server(bus: &BusHandle, plan: &BootPlan, owner: u32) -> Option<ShareServer> {
    // The server listens in the runtime directory before the VMM starts (boot makes it too).
    if let Err(e) = cros_hypervisor::fsutil::ensure_private_dir(&plan.run_dir) {
        tracing::warn!(vm = plan.name(), error = %e, "no 9P server: cannot create the runtime directory");
        return None;
    }
    let (uid, gid) = crate::seneschal::server_ids(owner);
    let map = |outside| {
        vec![IdMapEntry {
            inside: GUEST_USER,
            outside,
            count: 1,
        }]
    };
    let req = SeneschalRequest::StartServer {
        port: 0,
        accept_cid: plan.cid,
        uid_map: map(uid),
        gid_map: map(gid),
        vm: plan.name().to_string(),
        owner_uid: owner,
        run_dir: plan.run_dir.display().to_string(),
    };
    match bus
        .request(&Addr::host("concierge"), &seneschal(), Body::Seneschal(req))
        .await
    {
        Ok(Body::SeneschalReply(SeneschalReply::ServerStarted { handle, port })) => {
            Some(ShareServer { handle, port })
        }
        Ok(other) => {
            tracing::warn!(
                vm = plan.name(),
                reply = other.type_name(),
                "seneschal answered StartServer oddly; no shares"
            );
            None
        }
        Err(e) => {
            tracing::warn!(vm = plan.name(), error = %e, "no 9P server: the VM runs without shared folders");
            None
        }
    }
}

/// Mount9P of the VM's server at /mnt/shared (logged when it fails).
pub async fn mount(bus: &BusHandle, vm: &str, server: ShareServer) {
    let req = MaitredRequest::Mount9P {
        port: server.port,
        target: SHARED_MOUNT.into(),
    };
    match ask_maitred(bus, vm, req, MOUNT_TIMEOUT).await {
        Ok(_) => tracing::info!(
            vm,
            port = server.port,
            "shared folders mounted at {SHARED_MOUNT}"
        ),
        Err(e) => {
            tracing::warn!(vm, error = %e, "Mount9P failed: the VM runs without shared folders")
        }
    }
}

/// StopServer, without waiting (the VM is gone; the server exits when told or when crosd does).
pub fn stop_server(bus: &BusHandle, handle: u64) {
    if handle == 0 {
        return;
    }
    let fut = bus.request(
        &Addr::host("concierge"),
        &seneschal(),
        Body::Seneschal(SeneschalRequest::StopServer { handle }),
    );
    actix::spawn(async move {
        if let Err(e) = fut.await {
            tracing::warn!(handle, error = %e, "StopServer failed");
        }
    });
}

/// Runs `boot` (the VM's boot, [`super::vm::boot`]) between StartServer and Mount9P; a boot
/// that fails stops the server again. Answers the boot's result and the server.
pub async fn boot_with_shares<F, T>(
    bus: BusHandle,
    plan: BootPlan,
    owner: u32,
    boot: impl FnOnce(BootPlan) -> F,
) -> Result<(T, Option<ShareServer>), cros_messages::CrosError>
where
    F: std::future::Future<Output = Result<T, cros_messages::CrosError>>,
{
    let server = start_server(&bus, &plan, owner).await;
    let vm = plan.name().to_string();
    match boot(plan).await {
        Ok(booted) => {
            if let Some(s) = server {
                mount(&bus, &vm, s).await;
            }
            Ok((booted, server))
        }
        Err(e) => {
            if let Some(s) = server {
                stop_server(&bus, s.handle);
            }
            Err(e)
        }
    }
}
