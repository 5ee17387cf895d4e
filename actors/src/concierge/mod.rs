//! concierge: VMs and their disks (REFERENCE.md, "Concierge").
//!
//! StartVm allocates a cid and a runtime directory, bridges the VM onto the bus (`maitred@<vm>`,
//! see [`crate::bridge`]), boots the termina component through the hypervisor backend, waits for
//! maitred's VmReady (an event the bridge on host port 7777 publishes) and asks maitred@<vm> for
//! StartTermina; StopVm asks maitred@<vm> to shut down, then stops the hypervisor. concierge never
//! opens a connection to a guest itself. A VM whose hypervisor exits on its own is reported
//! stopped with the reason and its resources (bridges included) are freed.
//!
//! This file holds the VM table and the dispatch of requests; the disk requests are in
//! [`disk_requests`]. Every request acts for a [`Caller`] (the client's uid, see [`owner`]): a
//! client sees and controls only the VMs, disks and operations it owns; root sees all.

mod backend;
mod cicerone_notify;
mod client_files;
mod disk;
pub(crate) mod disk_op;
mod disk_requests;
mod extra_disks;
mod handover;
mod network;
pub(crate) mod owner;
mod resize;
mod shares;
mod vm;
mod vm_record;

pub use backend::bin_dir;
#[doc(hidden)]
pub use disk_op::{OpRecord, fuzz_import, parse_op_record};
pub use handover::Handover;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseActFuture, WrapFuture,
};
use cros_hypervisor::Hypervisor;
use cros_messages::addr::valid_name;
use cros_messages::concierge::{
    ConciergeEvent, ConciergeReply, ConciergeRequest, StartVm, StopReason, VmInfo, VmStatus,
};
use cros_messages::maitred::MaitredEvent;
use cros_messages::{Addr, Body, CrosError, Envelope};

use crate::bridge::GuestBridges;
use crate::bus::not_mine;
use crate::bus::{BusHandle, Deliver, Published, actor_sink};
use crate::config::HostConfig;
use disk_requests::DiskOp;
use owner::Caller;
use vm::{BootPlan, VmExit, VmWatcher};

/// Bounds on what StartVm may ask for.
const MAX_CPUS: u32 = 64;
const MIN_MEMORY_MIB: u32 = 256;
const MAX_MEMORY_MIB: u32 = 1 << 20;
const MAX_START_TIMEOUT: u32 = 3600;
/// How long ListVmDisks waits for a running VM's filesystem minimum.
const MIN_SIZE_QUERY: Duration = Duration::from_secs(5);

struct VmEntry {
    info: VmInfo,
    /// The uid that owns the VM (the owner of its stateful disk).
    owner: u32,
    /// Extra disk images the client passed, open for as long as the VM may use them (the
    /// hypervisor opens them through crosd's /proc/<pid>/fd); only ever dropped.
    #[allow(dead_code)]
    held_files: Vec<OwnedFd>,
    run_dir: PathBuf,
    /// Set once the VM is running; shared with a StopVm in progress.
    watcher: Option<Arc<VmWatcher>>,
    /// The VM's guest actors on the bus; dropped (unregistered) when the VM is forgotten.
    bridges: Option<GuestBridges>,
    /// Fired by maitred's VmReady while the VM boots.
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// Tells this VM apart from an earlier one of the same name.
    generation: u64,
    /// This run's token in cicerone's table.
    cicerone_token: String,
}

pub struct Concierge {
    bus: BusHandle,
    config: HostConfig,
    hypervisor: Result<Arc<dyn Hypervisor>, CrosError>,
    vms: BTreeMap<String, VmEntry>,
    next_generation: u64,
    /// VMs found dead at start (crosd was killed while they ran), until they start again.
    stopped: BTreeMap<String, VmInfo>,
    /// Where this instance's VMs go if it dies, and where the next one finds them.
    handover: Arc<Handover>,
    /// Disk exports and imports by uuid: running ones and those of earlier runs.
    disk_ops: BTreeMap<String, DiskOp>,
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
    /// A concierge of its own (tests, isolated replay).
    pub fn new(bus: BusHandle, config: HostConfig) -> Self {
        Self::with_handover(bus, config, Arc::default())
    }

    /// A concierge that takes over the VMs of an earlier instance that died, if `handover` holds
    /// them; otherwise it looks for VMs a killed crosd left behind.
    pub fn with_handover(bus: BusHandle, config: HostConfig, handover: Arc<Handover>) -> Self {
        let hypervisor = backend::select(&config.hypervisor);
        let disk_ops = disk_op::recover(&config.state_dir)
            .into_iter()
            .map(|info| {
                let op = match disk_op::live_op(&info.uuid) {
                    Some(live) => DiskOp::Live(live),
                    None => DiskOp::Past(info),
                };
                (op.info().uuid, op)
            })
            .collect();
        let table = handover.take().unwrap_or_else(|| handover::VmTable {
            vms: BTreeMap::new(),
            next_generation: 1,
            stopped: vm_record::recover(&config.run_dir, &config.state_dir.join("logs"))
                .into_iter()
                .map(|info| {
                    // A VM is its disk owner's.
                    let uid =
                        owner::disk_owner(&config.state_dir, &info.name).unwrap_or(owner::ROOT);
                    let info = VmInfo {
                        owner_id: owner::owner_id(uid),
                        ..info
                    };
                    (info.name.clone(), info)
                })
                .collect(),
        });
        Self {
            bus,
            config,
            hypervisor,
            vms: table.vms,
            next_generation: table.next_generation,
            stopped: table.stopped,
            handover,
            disk_ops,
        }
    }

    fn me() -> Addr {
        Addr::host("concierge")
    }

    fn publish(&self, event: ConciergeEvent) {
        self.bus.publish(&Self::me(), Body::ConciergeEvent(event));
    }

    /// `files`: what the client passed with the request (export and import targets, extra
    /// disks); dropped, so closed, unless the request keeps them. `deadline`: when the asker
    /// stops waiting (stopping VMs fits its steps into it).
    fn handle_request(
        &mut self,
        req: ConciergeRequest,
        caller: Caller,
        files: Vec<OwnedFd>,
        deadline: Instant,
    ) -> Reply {
        match req {
            ConciergeRequest::ListVms {} => ready(reply(Ok(ConciergeReply::Vms {
                vms: self
                    .vms
                    .values()
                    .filter(|v| caller.may_use(v.owner))
                    .map(|v| &v.info)
                    .chain(
                        self.stopped
                            .values()
                            .filter(|i| caller.may_use(owner::parse_owner_id(&i.owner_id))),
                    )
                    .cloned()
                    .collect(),
            }))),
            ConciergeRequest::GetVmInfo { name, .. } => {
                ready(reply(self.vm(&caller, &name).map(|v| {
                    ConciergeReply::VmInfo {
                        vm_info: v.info.clone(),
                    }
                })))
            }
            ConciergeRequest::StartVm(start) => match self.plan_start(&caller, start, files) {
                Ok(planned) => self.start_vm(planned),
                Err(e) => ready(Body::Error(e)),
            },
            ConciergeRequest::StopVm { name, .. } => self.stop_vm(&caller, &name, deadline),
            ConciergeRequest::StopAllVms {} => self.stop_all(&caller, deadline),
            ConciergeRequest::SuspendVm { name, .. } | ConciergeRequest::ResumeVm { name, .. } => {
                ready(reply(self.vm(&caller, &name).and_then(|_| {
                    Err(CrosError::unsupported(format!(
                        "cannot suspend or resume {name:?}: not supported by the qemu backend yet"
                    )))
                })))
            }
            ConciergeRequest::CreateDiskImage { name, size, .. } => {
                ready(reply(self.create_disk(&caller, &name, size)))
            }
            ConciergeRequest::DestroyDiskImage { name, .. } => {
                self.destroy_disk(&caller, &name, deadline)
            }
            ConciergeRequest::ListVmDisks {} => self.list_disks(&caller),
            ConciergeRequest::ExportDiskImage {
                name,
                path,
                digest_path,
                force,
                ..
            } => ready(reply(self.export_disk(
                &caller,
                files,
                &name,
                &path,
                digest_path.as_deref(),
                force,
            ))),
            ConciergeRequest::ImportDiskImage {
                name,
                path,
                digest_path,
                ..
            } => ready(reply(self.import_disk(
                &caller,
                files,
                &name,
                &path,
                digest_path.as_deref(),
            ))),
            ConciergeRequest::ResizeDiskImage { name, size, .. } => {
                self.resize_disk(&caller, &name, size)
            }
            ConciergeRequest::DiskImageStatus { uuid } => ready(reply(
                self.disk_op(&caller, &uuid)
                    .map(|op| ConciergeReply::DiskOperation { op: op.info() }),
            )),
            ConciergeRequest::CancelDiskImageOperation { uuid } => {
                ready(reply(self.cancel_disk_op(&caller, &uuid)))
            }
        }
    }

    /// VM `name` when `caller` may see it; the same error as for no VM otherwise.
    fn vm(&self, caller: &Caller, name: &str) -> Result<&VmEntry, CrosError> {
        check_name(name)?;
        self.vms
            .get(name)
            .filter(|v| caller.may_use(v.owner))
            .ok_or_else(|| CrosError::not_found(format!("no VM named {name:?} is running")))
    }

    /// Checks a StartVm request and turns it into the boot plan, with the backend to boot on.
    fn plan_start(
        &self,
        caller: &Caller,
        start: StartVm,
        files: Vec<OwnedFd>,
    ) -> Result<PlannedStart, CrosError> {
        let name = start.name.as_str();
        check_name(name)?;
        self.check_no_disk_op(name)?;
        if self.vms.contains_key(name) {
            return Err(vm::already_running(name));
        }
        // The VM is its disk's owner's; a caller who may not use the disk may not boot it.
        let owner = match owner::disk_owner(&self.config.state_dir, name) {
            Some(o) if caller.may_use(o) => o,
            Some(_) => return Err(owner::no_disk(name)),
            None => caller.uid,
        };
        if start.cpus == 0 || start.cpus > MAX_CPUS {
            return Err(CrosError::invalid(format!(
                "cpus {} is outside 1..={MAX_CPUS}",
                start.cpus
            )));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&start.memory_mib) {
            return Err(CrosError::invalid(format!(
                "memory_mib {} is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                start.memory_mib
            )));
        }
        if start.timeout_secs == 0 || start.timeout_secs > MAX_START_TIMEOUT {
            return Err(CrosError::invalid(format!(
                "timeout_secs {} is outside 1..={MAX_START_TIMEOUT}",
                start.timeout_secs
            )));
        }
        vm::check_kernel_params(&start.kernel_params)?;
        let hv = self.hypervisor.clone()?;
        let cid = vm::allocate_cid(self.vms.values().map(|v| v.info.cid));
        let stateful = disk::disk_path(&self.config.state_dir, name);
        let extra =
            extra_disks::plan(caller, &start.disks, files, std::slice::from_ref(&stateful))?;
        let plan = BootPlan {
            cid,
            run_dir: self.config.run_dir.join(format!("vm.{cid}")),
            stateful,
            timeout: Duration::from_secs(u64::from(start.timeout_secs)),
            extra_disks: extra.disks,
            request: start,
        };
        Ok(PlannedStart {
            plan,
            hypervisor: hv,
            owner,
            held_files: extra.held_files,
        })
    }

    fn start_vm(&mut self, planned: PlannedStart) -> Reply {
        let PlannedStart {
            plan,
            hypervisor: hv,
            owner,
            held_files,
        } = planned;
        let name = plan.request.name.clone();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let generation = self.next_generation;
        self.next_generation += 1;
        let info = VmInfo {
            name: name.clone(),
            owner_id: owner::owner_id(owner),
            cid: plan.cid,
            pid: 0,
            ipv4: String::new(),
            seneschal_handle: 0,
            status: VmStatus::Starting,
            hypervisor: hv.name().to_string(),
            vsock_socket: plan.vsock_uds().display().to_string(),
            detail: String::new(),
        };
        self.stopped.remove(&name);
        self.vms.insert(
            name.clone(),
            VmEntry {
                info,
                owner,
                held_files,
                run_dir: plan.run_dir.clone(),
                watcher: None,
                bridges: None,
                ready: Some(ready_tx),
                generation,
                cicerone_token: cicerone_notify::new_vm_token(),
            },
        );
        self.publish(ConciergeEvent::VmStartingUp { name: name.clone() });
        tracing::info!(vm = %name, cid = plan.cid, hypervisor = hv.name(), "starting VM");

        // To whichever concierge instance is current when it happens (see handover.rs).
        let handover = self.handover.clone();
        let exited_name = name.clone();
        let on_exit = move |exit| {
            handover.vm_exited(VmExited {
                name: exited_name,
                generation,
                exit,
            })
        };
        let bus = self.bus.clone();
        let boot = shares::boot_with_shares(self.bus.clone(), plan, owner, move |plan| {
            vm::boot(plan, bus, hv, ready, on_exit)
        });
        Box::pin(
            boot.into_actor(self)
                .map(move |result, act, _ctx| match result {
                    Ok((vm::Booted { watcher, bridges }, server)) => {
                        let Some(entry) = act
                            .vms
                            .get_mut(&name)
                            .filter(|e| e.generation == generation)
                        else {
                            if let Some(s) = server {
                                shares::stop_server(&act.bus, s.handle);
                            }
                            return Err(CrosError::internal(format!(
                                "VM {name:?} vanished while starting"
                            )));
                        };
                        entry.info.seneschal_handle = server.map_or(0, |s| s.handle);
                        entry.info.status = VmStatus::Running;
                        entry.info.pid = watcher.pid;
                        entry.watcher = Some(Arc::new(watcher));
                        entry.bridges = Some(bridges);
                        if let Err(e) = vm_record::write(&entry.run_dir, &entry.info) {
                            tracing::warn!(vm = %name, error = %e, "cannot record the running VM");
                        }
                        let vm_info = entry.info.clone();
                        let (owner, token) = (entry.owner, entry.cicerone_token.clone());
                        tracing::info!(vm = %name, pid = vm_info.pid, "VM running");
                        act.publish(ConciergeEvent::VmStarted {
                            vm_info: vm_info.clone(),
                        });
                        Ok((vm_info, owner, token))
                    }
                    Err(e) => {
                        tracing::warn!(vm = %name, error = %e, "VM failed to start");
                        act.finish(
                            &name,
                            generation,
                            StopReason::HypervisorExited,
                            e.message.clone(),
                        );
                        Err(e)
                    }
                })
                // The reply waits for cicerone to know the VM, so a client's next request
                // (StartLxd) finds it there.
                .then(move |started, act, _ctx| {
                    let bus = act.bus.clone();
                    async move {
                        let (vm_info, owner, token) = match started {
                            Ok(s) => s,
                            Err(e) => return Body::Error(e),
                        };
                        cicerone_notify::started(&bus, &vm_info, owner, &token).await;
                        Body::ConciergeReply(ConciergeReply::VmStarted { vm_info })
                    }
                    .into_actor(act)
                }),
        )
    }

    fn stop_vm(&mut self, caller: &Caller, name: &str, deadline: Instant) -> Reply {
        let entry = match self.vm(caller, name) {
            Ok(e) => e,
            Err(e) => return ready(Body::Error(e)),
        };
        let (Some(watcher), VmStatus::Running) = (entry.watcher.clone(), entry.info.status) else {
            return ready(Body::Error(CrosError::precondition(format!(
                "VM {name:?} is {}, not running",
                entry.info.status
            ))));
        };
        let generation = entry.generation;
        if let Some(e) = self.vms.get_mut(name) {
            e.info.status = VmStatus::Stopping;
        }
        self.publish(ConciergeEvent::VmStopping {
            name: name.to_string(),
        });
        let name = name.to_string();
        let (stop_name, bus) = (name.clone(), self.bus.clone());
        let fut = async move { vm::stop(&bus, &stop_name, &watcher, deadline).await };
        Box::pin(fut.into_actor(self).map(move |exit, act, _| {
            act.finish(&name, generation, StopReason::Requested, exit.detail);
            Body::ConciergeReply(ConciergeReply::VmStopped { name })
        }))
    }

    /// Stops every running VM `caller` may control.
    fn stop_all(&mut self, caller: &Caller, deadline: Instant) -> Reply {
        let mut running = Vec::new();
        for (name, e) in self.vms.iter_mut() {
            if !caller.may_use(e.owner) {
                continue;
            }
            if let (Some(w), VmStatus::Running) = (e.watcher.clone(), e.info.status) {
                e.info.status = VmStatus::Stopping;
                running.push((name.clone(), e.generation, w));
            }
        }
        for (name, ..) in &running {
            self.publish(ConciergeEvent::VmStopping { name: name.clone() });
        }
        // In parallel: one VM that takes its full shutdown timeout holds up none of the others.
        let bus = self.bus.clone();
        let fut = futures_util::future::join_all(running.into_iter().map(
            move |(name, generation, watcher)| {
                let bus = bus.clone();
                async move {
                    let exit = vm::stop(&bus, &name, &watcher, deadline).await;
                    (name, generation, exit)
                }
            },
        ));
        Box::pin(fut.into_actor(self).map(|done, act, _| {
            let count = done.len() as u32;
            for (name, generation, exit) in done {
                act.finish(&name, generation, StopReason::Requested, exit.detail);
            }
            Body::ConciergeReply(ConciergeReply::AllVmsStopped { count })
        }))
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
        cicerone_notify::stopped(&self.bus, name, &entry.cicerone_token);
        shares::stop_server(&self.bus, entry.info.seneschal_handle);
        network::release(&self.bus, name);
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

/// A checked StartVm: the boot plan, the backend to boot on, and what the VM entry keeps.
struct PlannedStart {
    plan: BootPlan,
    hypervisor: Arc<dyn Hypervisor>,
    owner: u32,
    held_files: Vec<OwnedFd>,
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

    /// Guest actors' events reach concierge through the bus: the bridge on a VM's port 7777
    /// publishes maitred's VmReady from `maitred@<vm>`.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.handover.set_current(ctx.address().downgrade());
        for info in self.stopped.values() {
            self.bus.publish(
                &Self::me(),
                Body::ConciergeEvent(ConciergeEvent::VmStopped {
                    name: info.name.clone(),
                    reason: StopReason::DaemonKilled,
                    detail: vm_record::exit_of(info).detail,
                }),
            );
        }
        let sink = actor_sink(ctx.address().downgrade());
        self.bus
            .subscribe(Self::me(), vec!["MaitredEvent".into()], sink);
    }

    /// crosd is going away: stop every VM's processes so no hypervisor outlives its daemon (the
    /// daemon has asked for StopAllVms first; this is for what did not stop in time). An
    /// instance that stops while crosd runs hands its VMs over instead (see [`Drop`]).
    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if !self.bus.is_shutting_down() {
            return;
        }
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

/// A concierge that dies while crosd runs (a panic: the supervisor builds the next one) hands its
/// VMs over instead of stopping them; at crosd's shutdown, [`Actor::stopped`] has stopped them.
impl Drop for Concierge {
    fn drop(&mut self) {
        if self.bus.is_shutting_down() || self.vms.is_empty() && self.stopped.is_empty() {
            return;
        }
        self.handover.put(handover::VmTable {
            vms: std::mem::take(&mut self.vms),
            next_generation: self.next_generation,
            stopped: std::mem::take(&mut self.stopped),
        });
    }
}

impl Handler<Deliver> for Concierge {
    type Result = ResponseActFuture<Self, Body>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let Envelope { id, from, body, .. } = msg.env;
        match body {
            Body::Concierge(req) => {
                let files = if from.is_client() {
                    self.bus.clients().take_files(&from, id)
                } else {
                    Vec::new()
                };
                match Caller::of(&self.bus, &from, &req) {
                    Ok(caller) => self.handle_request(req, caller, files, msg.deadline),
                    Err(e) => ready(Body::Error(e)),
                }
            }
            other => ready(not_mine("concierge", &other)),
        }
    }
}

/// An event a guest actor published (see [`Actor::started`]).
impl Handler<Published> for Concierge {
    type Result = ();

    fn handle(&mut self, Published(env): Published, _ctx: &mut Context<Self>) {
        let Body::MaitredEvent(MaitredEvent::VmReady {}) = env.body else {
            return;
        };
        // The bridge set `from` to the VM the connection came from; a VM can only ready itself.
        let ready = env
            .from
            .vm
            .as_deref()
            .filter(|_| env.from.actor == "maitred" && env.from.container.is_none())
            .and_then(|vm| self.vms.get_mut(vm))
            .and_then(|entry| entry.ready.take());
        match ready {
            Some(tx) => {
                let _ = tx.send(());
            }
            None => tracing::debug!(from = %env.from, "VmReady from a VM that is not booting"),
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
    use cros_messages::concierge::VmStatus;

    pub(super) fn concierge(dir: &std::path::Path) -> Concierge {
        Concierge::new(
            BusHandle::new(BusConfig::default()).unwrap(),
            HostConfig::new(dir, dir.join("run")),
        )
    }

    /// A request of crosd itself (a host actor, so an administrator's) to the concierge.
    pub(super) fn deliver(r: ConciergeRequest) -> Deliver {
        deliver_from(Addr::host("tester"), 1, r)
    }

    /// A request as the bus delivers it from `from` (a client connection: register its peer on
    /// the concierge's bus first).
    pub(super) fn deliver_from(from: Addr, id: u64, r: ConciergeRequest) -> Deliver {
        Deliver::new(
            cros_messages::Envelope::new(id, id, from, Concierge::me(), Body::Concierge(r)),
            Duration::from_secs(60),
        )
    }

    async fn ask(c: Concierge, req: ConciergeRequest) -> Body {
        c.start().send(deliver(req)).await.unwrap()
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
        let req = deliver;
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

    /// Answers LoadComponent with a component whose files nobody reads (the stand-in
    /// hypervisor boots nothing).
    struct FakeImageloader;

    impl Actor for FakeImageloader {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for FakeImageloader {
        type Result = actix::MessageResult<Deliver>;
        fn handle(&mut self, _: Deliver, _: &mut Context<Self>) -> Self::Result {
            let component = cros_messages::imageloader::LoadedComponent {
                name: vm::TERMINA_COMPONENT.into(),
                version: "1".into(),
                kernel: "/nonexistent/vm_kernel".into(),
                rootfs: "/nonexistent/vm_rootfs.img".into(),
                tools: "/nonexistent/vm_tools.img".into(),
                initrd: None,
            };
            actix::MessageResult(Body::ImageloaderReply(
                cros_messages::imageloader::ImageloaderReply::Loaded { component },
            ))
        }
    }

    async fn vms(c: &actix::Addr<Concierge>) -> Vec<VmInfo> {
        match c.send(deliver(ConciergeRequest::ListVms {})).await.unwrap() {
            Body::ConciergeReply(ConciergeReply::Vms { vms }) => vms,
            other => panic!("{other:?}"),
        }
    }

    async fn until<F: std::future::Future<Output = bool>>(
        what: &str,
        mut probe: impl FnMut() -> F,
    ) {
        let start = Instant::now();
        while !probe().await {
            assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What a supervisor restart does (a fresh instance on the same handover), with the VM
    /// process a stand-in: the new instance runs the old one's VM and hears of its exit.
    #[actix::test]
    async fn a_concierge_that_died_hands_its_running_vms_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let bus = BusHandle::new(BusConfig::default()).unwrap();
        bus.register(
            Addr::host("imageloader"),
            FakeImageloader.start().recipient(),
        );
        let stand_in = Arc::new(cros_hypervisor::StandInBackend::new("qemu"));
        let config = HostConfig {
            hypervisor: crate::config::HypervisorConfig {
                backend: Some(stand_in.clone()),
                ..Default::default()
            },
            ..HostConfig::new(dir.path(), dir.path().join("run"))
        };
        let handover = Arc::new(Handover::default());
        let first = Concierge::with_handover(bus.clone(), config.clone(), handover.clone()).start();
        first
            .send(deliver(ConciergeRequest::CreateDiskImage {
                name: "termina".into(),
                owner_id: String::new(),
                size: 1 << 30,
            }))
            .await
            .unwrap();
        let start = StartVm {
            start_termina: false,
            ..StartVm::named("termina")
        };
        let started = first.send(deliver(ConciergeRequest::StartVm(start)));
        let booting = tokio::spawn(started);
        until("the VM is starting", || async {
            !vms(&first).await.is_empty()
        })
        .await;
        bus.publish(
            &Addr::in_vm("maitred", "termina"),
            Body::MaitredEvent(MaitredEvent::VmReady {}),
        );
        let reply = booting.await.unwrap().unwrap();
        assert!(
            matches!(
                reply,
                Body::ConciergeReply(ConciergeReply::VmStarted { .. })
            ),
            "{reply:?}"
        );

        drop(first);
        until("the dead instance handed its table over", || async {
            handover.holds_table()
        })
        .await;
        let second = Concierge::with_handover(bus.clone(), config, handover.clone()).start();
        let adopted = vms(&second).await;
        assert_eq!(adopted.len(), 1);
        assert_eq!(
            (adopted[0].name.as_str(), adopted[0].status),
            ("termina", VmStatus::Running)
        );
        // The VM's exit reaches the instance that runs it now.
        assert!(stand_in.power_off("termina"));
        until("the new instance saw the VM exit", || async {
            vms(&second).await.is_empty()
        })
        .await;
    }

    /// A VM entry as StartVm makes it, still starting (no process: none is needed here).
    fn starting_vm(dir: &std::path::Path, name: &str, owner: u32) -> VmEntry {
        VmEntry {
            info: VmInfo {
                name: name.into(),
                owner_id: owner::owner_id(owner),
                cid: 3,
                pid: 0,
                ipv4: String::new(),
                seneschal_handle: 0,
                status: VmStatus::Starting,
                hypervisor: "qemu".into(),
                vsock_socket: String::new(),
                detail: String::new(),
            },
            owner,
            held_files: Vec::new(),
            run_dir: dir.join(name),
            watcher: None,
            bridges: None,
            ready: None,
            generation: 1,
            cicerone_token: String::new(),
        }
    }

    #[actix::test]
    async fn a_user_sees_and_stops_only_its_own_vms() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = concierge(dir.path());
        let root = owner::ROOT;
        for (name, owner) in [("rootvm", root), ("uservm", 4321)] {
            c.vms
                .insert(name.into(), starting_vm(dir.path(), name, owner));
        }
        let user = Addr::client(7);
        let peer = crate::bus::clients::Peer {
            uid: 4321,
            gid: 4321,
            pid: None,
        };
        c.bus.clients().add_peer(user.clone(), peer);
        let c = c.start();
        let ask = |from: &Addr, r| c.send(deliver_from(from.clone(), 1, r));
        let names = |body: Body| match body {
            Body::ConciergeReply(ConciergeReply::Vms { vms }) => vms
                .into_iter()
                .map(|v| (v.name, v.owner_id))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let err = |body: Body| match body {
            Body::Error(e) => e,
            other => panic!("must fail: {other:?}"),
        };
        assert_eq!(
            names(ask(&user, ConciergeRequest::ListVms {}).await.unwrap()),
            [("uservm".into(), "4321".into())]
        );
        assert_eq!(
            names(c.send(deliver(ConciergeRequest::ListVms {})).await.unwrap()).len(),
            2,
            "root sees all"
        );
        for req in [
            ConciergeRequest::GetVmInfo {
                name: "rootvm".into(),
                owner_id: "0".into(),
            },
            ConciergeRequest::StopVm {
                name: "rootvm".into(),
                owner_id: "0".into(),
            },
        ] {
            let e = err(ask(&user, req).await.unwrap());
            assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
            assert!(e.message.contains("no VM named \"rootvm\""), "{e}");
        }
        // Its own VM it may stop (once it runs: this one is still starting).
        let stop = ConciergeRequest::StopVm {
            name: "uservm".into(),
            owner_id: String::new(),
        };
        let e = err(ask(&user, stop).await.unwrap());
        assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
        assert!(e.message.contains("Starting"), "{e}");
    }

    #[actix::test]
    async fn stop_all_with_no_vms_stops_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ask(concierge(dir.path()), ConciergeRequest::StopAllVms {}).await,
            Body::ConciergeReply(ConciergeReply::AllVmsStopped { count: 0 })
        );
    }
}
