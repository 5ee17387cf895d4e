//! concierge: VMs and their disks (REFERENCE.md, "Concierge").
//!
//! StartVm allocates a cid and a runtime directory, boots the termina component through the
//! hypervisor backend, waits for maitred's VmReady on host port 7777 and runs StartTermina;
//! StopVm asks maitred to shut down, then stops the hypervisor. A VM whose hypervisor exits on
//! its own is reported stopped with the reason and its resources are freed.

mod backend;
mod bridge;
mod disk;
mod guest;
mod vm;

pub use backend::bin_dir;
pub use guest::connect_guest_port;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseActFuture, WrapFuture,
};
use cros_hypervisor::Hypervisor;
use cros_messages::addr::valid_name;
use cros_messages::concierge::{
    ConciergeEvent, ConciergeReply, ConciergeRequest, StopReason, VmInfo, VmStatus,
};
use cros_messages::{Addr, Body, CrosError};

use crate::bus::{BusHandle, Deliver};
use crate::host::{HostConfig, not_mine};
use vm::{BootPlan, VmExit, VmWatcher};

/// Bounds on what StartVm may ask for.
const MAX_CPUS: u32 = 64;
const MIN_MEMORY_MIB: u32 = 256;
const MAX_MEMORY_MIB: u32 = 1 << 20;
const MAX_START_TIMEOUT: u32 = 3600;

struct VmEntry {
    info: VmInfo,
    run_dir: PathBuf,
    /// Set once the VM is running; shared with a StopVm in progress.
    watcher: Option<Arc<VmWatcher>>,
    /// Tells this VM apart from an earlier one of the same name.
    generation: u64,
}

pub struct Concierge {
    bus: BusHandle,
    config: HostConfig,
    hypervisor: Result<Arc<dyn Hypervisor>, CrosError>,
    vms: BTreeMap<String, VmEntry>,
    next_generation: u64,
}

/// Sent by a VM's watcher thread when its hypervisor exits.
struct VmExited {
    name: String,
    generation: u64,
    exit: VmExit,
}

impl Message for VmExited {
    type Result = ();
}

type Reply = ResponseActFuture<Concierge, Body>;

fn ready(body: Body) -> Reply {
    Box::pin(actix::fut::ready(body))
}

fn reply(r: Result<ConciergeReply, CrosError>) -> Body {
    match r {
        Ok(r) => Body::ConciergeReply(r),
        Err(e) => Body::Error(e),
    }
}

impl Concierge {
    pub fn new(bus: BusHandle, config: HostConfig) -> Self {
        let hypervisor = backend::select(&config.hypervisor);
        Self {
            bus,
            config,
            hypervisor,
            vms: BTreeMap::new(),
            next_generation: 1,
        }
    }

    fn me() -> Addr {
        Addr::host("concierge")
    }

    fn publish(&self, event: ConciergeEvent) {
        self.bus.publish(&Self::me(), Body::ConciergeEvent(event));
    }

    fn handle_request(&mut self, req: ConciergeRequest, ctx: &mut Context<Self>) -> Reply {
        match req {
            ConciergeRequest::ListVms {} => ready(reply(Ok(ConciergeReply::Vms {
                vms: self.vms.values().map(|v| v.info.clone()).collect(),
            }))),
            ConciergeRequest::GetVmInfo { name, .. } => {
                ready(reply(self.vm(&name).map(|v| ConciergeReply::VmInfo {
                    vm_info: v.info.clone(),
                })))
            }
            ConciergeRequest::StartVm {
                name,
                cpus,
                memory_mib,
                kernel_params,
                start_termina,
                timeout_secs,
                component_version,
                disks,
                ..
            } => {
                if !disks.is_empty() {
                    return ready(Body::Error(CrosError::unsupported(
                        "extra disks are not supported yet: StartVm attaches the VM's own stateful disk",
                    )));
                }
                match self.plan_start(
                    &name,
                    cpus,
                    memory_mib,
                    kernel_params,
                    start_termina,
                    timeout_secs,
                    component_version,
                ) {
                    Ok((plan, hv)) => self.start_vm(plan, hv, ctx),
                    Err(e) => ready(Body::Error(e)),
                }
            }
            ConciergeRequest::StopVm { name, .. } => self.stop_vm(&name),
            ConciergeRequest::StopAllVms {} => self.stop_all(),
            ConciergeRequest::SuspendVm { name, .. } | ConciergeRequest::ResumeVm { name, .. } => {
                ready(reply(self.vm(&name).and_then(|_| {
                    Err(CrosError::unsupported(format!(
                        "cannot suspend or resume {name:?}: not supported by the qemu backend yet"
                    )))
                })))
            }
            ConciergeRequest::CreateDiskImage { name, size, .. } => {
                ready(reply(check_name(&name).and_then(|_| {
                    disk::create(&self.config.state_dir, &name, size)
                })))
            }
            ConciergeRequest::DestroyDiskImage { name, .. } => {
                ready(reply(self.destroy_disk(&name)))
            }
            ConciergeRequest::ListVmDisks {} => ready(reply(
                disk::list(&self.config.state_dir).map(|disks| ConciergeReply::Disks { disks }),
            )),
        }
    }

    fn vm(&self, name: &str) -> Result<&VmEntry, CrosError> {
        check_name(name)?;
        self.vms
            .get(name)
            .ok_or_else(|| CrosError::not_found(format!("no VM named {name:?} is running")))
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_start(
        &self,
        name: &str,
        cpus: u32,
        memory_mib: u32,
        kernel_params: Vec<String>,
        start_termina: bool,
        timeout_secs: u32,
        component_version: Option<String>,
    ) -> Result<(BootPlan, Arc<dyn Hypervisor>), CrosError> {
        check_name(name)?;
        if self.vms.contains_key(name) {
            return Err(vm::already_running(name));
        }
        if cpus == 0 || cpus > MAX_CPUS {
            return Err(CrosError::invalid(format!(
                "cpus {cpus} is outside 1..={MAX_CPUS}"
            )));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(CrosError::invalid(format!(
                "memory_mib {memory_mib} is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}"
            )));
        }
        if timeout_secs == 0 || timeout_secs > MAX_START_TIMEOUT {
            return Err(CrosError::invalid(format!(
                "timeout_secs {timeout_secs} is outside 1..={MAX_START_TIMEOUT}"
            )));
        }
        vm::check_kernel_params(&kernel_params)?;
        let hv = self.hypervisor.clone()?;
        let cid = vm::allocate_cid(self.vms.values().map(|v| v.info.cid));
        let plan = BootPlan {
            name: name.to_string(),
            cid,
            run_dir: self.config.run_dir.join(format!("vm.{cid}")),
            stateful: disk::disk_path(&self.config.state_dir, name),
            cpus,
            memory_mib,
            kernel_params,
            start_termina,
            timeout: Duration::from_secs(u64::from(timeout_secs)),
            component_version,
        };
        Ok((plan, hv))
    }

    fn start_vm(
        &mut self,
        plan: BootPlan,
        hv: Arc<dyn Hypervisor>,
        ctx: &mut Context<Self>,
    ) -> Reply {
        let name = plan.name.clone();
        let generation = self.next_generation;
        self.next_generation += 1;
        let info = VmInfo {
            name: name.clone(),
            owner_id: String::new(),
            cid: plan.cid,
            pid: 0,
            ipv4: String::new(),
            seneschal_handle: 0,
            status: VmStatus::Starting,
            hypervisor: hv.name().to_string(),
            vsock_socket: plan.vsock_uds().display().to_string(),
        };
        self.vms.insert(
            name.clone(),
            VmEntry {
                info,
                run_dir: plan.run_dir.clone(),
                watcher: None,
                generation,
            },
        );
        self.publish(ConciergeEvent::VmStartingUp { name: name.clone() });
        tracing::info!(vm = %name, cid = plan.cid, hypervisor = hv.name(), "starting VM");

        let addr = ctx.address();
        let exited_name = name.clone();
        let on_exit = move |exit| {
            addr.do_send(VmExited {
                name: exited_name,
                generation,
                exit,
            })
        };
        let boot = vm::boot(plan, self.bus.clone(), hv, on_exit);
        Box::pin(
            boot.into_actor(self)
                .map(move |result, act, _ctx| match result {
                    Ok(watcher) => {
                        let Some(entry) = act
                            .vms
                            .get_mut(&name)
                            .filter(|e| e.generation == generation)
                        else {
                            return Body::Error(CrosError::internal(format!(
                                "VM {name:?} vanished while starting"
                            )));
                        };
                        entry.info.status = VmStatus::Running;
                        entry.info.pid = watcher.pid;
                        entry.watcher = Some(Arc::new(watcher));
                        let vm_info = entry.info.clone();
                        tracing::info!(vm = %name, pid = vm_info.pid, "VM running");
                        act.publish(ConciergeEvent::VmStarted {
                            vm_info: vm_info.clone(),
                        });
                        Body::ConciergeReply(ConciergeReply::VmStarted { vm_info })
                    }
                    Err(e) => {
                        tracing::warn!(vm = %name, error = %e, "VM failed to start");
                        act.finish(
                            &name,
                            generation,
                            StopReason::HypervisorExited,
                            e.message.clone(),
                        );
                        Body::Error(e)
                    }
                }),
        )
    }

    fn stop_vm(&mut self, name: &str) -> Reply {
        let entry = match self.vm(name) {
            Ok(e) => e,
            Err(e) => return ready(Body::Error(e)),
        };
        let (Some(watcher), VmStatus::Running) = (entry.watcher.clone(), entry.info.status) else {
            return ready(Body::Error(CrosError::precondition(format!(
                "VM {name:?} is {}, not running",
                entry.info.status
            ))));
        };
        let (generation, uds) = (entry.generation, PathBuf::from(&entry.info.vsock_socket));
        if let Some(e) = self.vms.get_mut(name) {
            e.info.status = VmStatus::Stopping;
        }
        self.publish(ConciergeEvent::VmStopping {
            name: name.to_string(),
        });
        let name = name.to_string();
        let stop_name = name.clone();
        let fut = async move { vm::stop(&stop_name, &uds, &watcher).await };
        Box::pin(fut.into_actor(self).map(move |exit, act, _| {
            act.finish(&name, generation, StopReason::Requested, exit.detail);
            Body::ConciergeReply(ConciergeReply::VmStopped { name })
        }))
    }

    fn stop_all(&mut self) -> Reply {
        let mut running = Vec::new();
        for (name, e) in self.vms.iter_mut() {
            if let (Some(w), VmStatus::Running) = (e.watcher.clone(), e.info.status) {
                e.info.status = VmStatus::Stopping;
                running.push((
                    name.clone(),
                    e.generation,
                    PathBuf::from(&e.info.vsock_socket),
                    w,
                ));
            }
        }
        for (name, ..) in &running {
            self.publish(ConciergeEvent::VmStopping { name: name.clone() });
        }
        let fut = async move {
            let mut done = Vec::new();
            for (name, generation, uds, watcher) in running {
                let exit = vm::stop(&name, &uds, &watcher).await;
                done.push((name, generation, exit));
            }
            done
        };
        Box::pin(fut.into_actor(self).map(|done, act, _| {
            let count = done.len() as u32;
            for (name, generation, exit) in done {
                act.finish(&name, generation, StopReason::Requested, exit.detail);
            }
            Body::ConciergeReply(ConciergeReply::AllVmsStopped { count })
        }))
    }

    fn destroy_disk(&mut self, name: &str) -> Result<ConciergeReply, CrosError> {
        check_name(name)?;
        if self.vms.contains_key(name) {
            return Err(CrosError::precondition(format!(
                "VM {name:?} is running: stop it before destroying its disk"
            )));
        }
        let path = disk::disk_path(&self.config.state_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(ConciergeReply::DiskImageDestroyed {
                name: name.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CrosError::not_found(
                format!("VM {name:?} has no disk image"),
            )),
            Err(e) => Err(CrosError::internal(format!(
                "remove {}: {e}",
                path.display()
            ))),
        }
    }

    /// Forgets a VM that is gone: keeps its console log under STATE/logs, removes its runtime
    /// directory, and says so. Does nothing for an entry of another generation.
    fn finish(&mut self, name: &str, generation: u64, reason: StopReason, detail: String) {
        if self
            .vms
            .get(name)
            .is_none_or(|e| e.generation != generation)
        {
            return;
        }
        let Some(entry) = self.vms.remove(name) else {
            return;
        };
        let logs = self.config.state_dir.join("logs");
        if std::fs::create_dir_all(&logs).is_ok() {
            let _ = std::fs::copy(
                entry.run_dir.join("console.log"),
                logs.join(format!("{name}.console.log")),
            );
        }
        if let Err(e) = std::fs::remove_dir_all(&entry.run_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(vm = name, error = %e, "cannot remove the runtime directory");
        }
        tracing::info!(vm = name, %reason, detail = %detail, "VM stopped");
        self.publish(ConciergeEvent::VmStopped {
            name: name.to_string(),
            reason,
            detail,
        });
    }
}

fn check_name(name: &str) -> Result<(), CrosError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(CrosError::invalid(format!(
            "bad VM name {name:?}: use 1-64 characters of [A-Za-z0-9._-]"
        )))
    }
}

impl Actor for Concierge {
    type Context = Context<Self>;

    /// crosd is going away (or this actor is being replaced): stop every VM's processes so no
    /// hypervisor outlives its daemon.
    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let watchers: Vec<(String, u64, Arc<VmWatcher>)> = self
            .vms
            .iter()
            .filter_map(|(n, e)| e.watcher.clone().map(|w| (n.clone(), e.generation, w)))
            .collect();
        for (_, _, w) in &watchers {
            w.stop(Duration::from_secs(2));
        }
        for (name, generation, w) in watchers {
            let exited = w.wait_exit_blocking(Duration::from_secs(5));
            self.finish(
                &name,
                generation,
                StopReason::DaemonShutdown,
                exited.map(|e| e.detail).unwrap_or_default(),
            );
        }
    }
}

impl Handler<Deliver> for Concierge {
    type Result = ResponseActFuture<Self, Body>;

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) -> Self::Result {
        match msg.env.body {
            Body::Concierge(req) => self.handle_request(req, ctx),
            other => ready(not_mine("concierge", &other)),
        }
    }
}

impl Handler<VmExited> for Concierge {
    type Result = ();

    fn handle(&mut self, msg: VmExited, _ctx: &mut Context<Self>) {
        // Starting and stopping VMs are finished by the request that started or stops them.
        let running = self
            .vms
            .get(&msg.name)
            .is_some_and(|e| e.generation == msg.generation && e.info.status == VmStatus::Running);
        if running {
            let reason = if msg.exit.success {
                StopReason::GuestShutdown
            } else {
                StopReason::HypervisorExited
            };
            tracing::warn!(vm = %msg.name, %reason, detail = %msg.exit.detail, "VM stopped on its own");
            self.finish(&msg.name, msg.generation, reason, msg.exit.detail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusConfig;
    use cros_messages::ErrorKind;

    fn concierge(dir: &std::path::Path) -> Concierge {
        Concierge::new(
            BusHandle::new(BusConfig::default()).unwrap(),
            HostConfig::new(dir, dir.join("run")),
        )
    }

    async fn ask(c: Concierge, req: ConciergeRequest) -> Body {
        let addr = c.start();
        let env = cros_messages::Envelope::new(
            1,
            1,
            Addr::client(1),
            Concierge::me(),
            Body::Concierge(req),
        );
        addr.send(Deliver { env }).await.unwrap()
    }

    #[actix::test]
    async fn list_vms_is_empty_table() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ask(concierge(dir.path()), ConciergeRequest::ListVms {}).await,
            Body::ConciergeReply(ConciergeReply::Vms { vms: vec![] })
        );
    }

    #[actix::test]
    async fn unknown_vm_is_not_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for req in [
            ConciergeRequest::GetVmInfo {
                name: "termina".into(),
                owner_id: String::new(),
            },
            ConciergeRequest::StopVm {
                name: "termina".into(),
                owner_id: String::new(),
            },
        ] {
            let Body::Error(err) = ask(concierge(dir.path()), req).await else {
                panic!("expected an error")
            };
            assert_eq!(err.kind, ErrorKind::NotFound);
            assert!(err.message.contains("termina"), "{err}");
        }
    }

    #[actix::test]
    async fn start_vm_checks_its_arguments_before_booting() {
        let dir = tempfile::tempdir().unwrap();
        for (json, needle) in [
            (r#"{"StartVm":{"name":"../x"}}"#, "bad VM name"),
            (r#"{"StartVm":{"name":"t","cpus":0}}"#, "cpus"),
            (r#"{"StartVm":{"name":"t","memory_mib":1}}"#, "memory_mib"),
            (
                r#"{"StartVm":{"name":"t","kernel_params":["init=/bin/sh"]}}"#,
                "init=/bin/sh",
            ),
        ] {
            let req: ConciergeRequest = serde_json::from_str(json).unwrap();
            let Body::Error(err) = ask(concierge(dir.path()), req).await else {
                panic!("{json} should fail")
            };
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{json}: {err}");
            assert!(err.message.contains(needle), "{json}: {err}");
        }
    }

    #[actix::test]
    async fn start_vm_without_a_component_says_so() {
        // No imageloader is registered on this bare bus and no component exists: StartVm
        // fails with the reason and leaves no VM behind.
        let dir = tempfile::tempdir().unwrap();
        let c = concierge(dir.path());
        let addr = c.start();
        let req = |r| Deliver {
            env: cros_messages::Envelope::new(
                1,
                1,
                Addr::client(1),
                Concierge::me(),
                Body::Concierge(r),
            ),
        };
        let start: ConciergeRequest =
            serde_json::from_str(r#"{"StartVm":{"name":"termina"}}"#).unwrap();
        let Body::Error(err) = addr.send(req(start)).await.unwrap() else {
            panic!("must fail")
        };
        assert!(err.message.contains("imageloader"), "{err}");
        assert_eq!(
            addr.send(req(ConciergeRequest::ListVms {})).await.unwrap(),
            Body::ConciergeReply(ConciergeReply::Vms { vms: vec![] })
        );
    }

    #[actix::test]
    async fn stop_all_with_no_vms_stops_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ask(concierge(dir.path()), ConciergeRequest::StopAllVms {}).await,
            Body::ConciergeReply(ConciergeReply::AllVmsStopped { count: 0 })
        );
    }

    #[actix::test]
    async fn disks_are_created_listed_and_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let c = concierge(dir.path()).start();
        let req = |r| Deliver {
            env: cros_messages::Envelope::new(
                1,
                1,
                Addr::client(1),
                Concierge::me(),
                Body::Concierge(r),
            ),
        };
        let created = c
            .send(req(ConciergeRequest::CreateDiskImage {
                name: "termina".into(),
                owner_id: String::new(),
                size: 0,
            }))
            .await
            .unwrap();
        assert!(
            matches!(
                created,
                Body::ConciergeReply(ConciergeReply::DiskImage { .. })
            ),
            "{created:?}"
        );
        let Body::ConciergeReply(ConciergeReply::Disks { disks }) =
            c.send(req(ConciergeRequest::ListVmDisks {})).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(disks.len(), 1);
        let destroyed = c
            .send(req(ConciergeRequest::DestroyDiskImage {
                name: "termina".into(),
                owner_id: String::new(),
            }))
            .await
            .unwrap();
        assert_eq!(
            destroyed,
            Body::ConciergeReply(ConciergeReply::DiskImageDestroyed {
                name: "termina".into()
            })
        );
        assert!(!disk::disk_path(dir.path(), "termina").exists());
    }
}
