//! concierge: VMs and their disks (REFERENCE.md, "Concierge").
//!
//! StartVm allocates a cid and a runtime directory, boots the termina component through the
//! hypervisor backend, waits for maitred's VmReady on host port 7777 and runs StartTermina;
//! StopVm asks maitred to shut down, then stops the hypervisor. A VM whose hypervisor exits on
//! its own is reported stopped with the reason and its resources are freed.

mod backend;
mod bridge;
mod disk;
mod disk_op;
mod extra_disks;
mod guest;
mod resize;
mod vm;

pub use backend::bin_dir;
#[doc(hidden)]
pub use disk_op::{OpRecord, fuzz_import, parse_op_record};
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
    ConciergeEvent, ConciergeReply, ConciergeRequest, DiskOpInfo, DiskOpKind, DiskOpState,
    StopReason, VmInfo, VmStatus,
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
/// How long ListVmDisks waits for a running VM's filesystem minimum.
const MIN_SIZE_QUERY: Duration = Duration::from_secs(5);

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
    /// Disk exports and imports by uuid: running ones and those of earlier runs.
    disk_ops: BTreeMap<String, DiskOp>,
}

enum DiskOp {
    Live(Arc<disk_op::Operation>),
    /// Finished before this concierge started (read back from STATE/disk_ops).
    Past(DiskOpInfo),
}

impl DiskOp {
    fn info(&self) -> DiskOpInfo {
        match self {
            DiskOp::Live(op) => op.info(),
            DiskOp::Past(info) => info.clone(),
        }
    }
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
        Self {
            bus,
            config,
            hypervisor,
            vms: BTreeMap::new(),
            next_generation: 1,
            disk_ops,
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
                match self.plan_start(
                    &name,
                    cpus,
                    memory_mib,
                    kernel_params,
                    start_termina,
                    timeout_secs,
                    component_version,
                ) {
                    Ok((mut plan, hv)) => {
                        match extra_disks::plan(&disks, std::slice::from_ref(&plan.stateful)) {
                            Ok(extra) => {
                                plan.extra_disks = extra;
                                self.start_vm(plan, hv, ctx)
                            }
                            Err(e) => ready(Body::Error(e)),
                        }
                    }
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
            ConciergeRequest::DestroyDiskImage { name, .. } => self.destroy_disk(&name),
            ConciergeRequest::ListVmDisks {} => self.list_disks(),
            ConciergeRequest::ExportDiskImage {
                name,
                path,
                digest_path,
                force,
                ..
            } => ready(reply(self.export_disk(
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
                &name,
                &path,
                digest_path.as_deref(),
            ))),
            ConciergeRequest::ResizeDiskImage { name, size, .. } => self.resize_disk(&name, size),
            ConciergeRequest::DiskImageStatus { uuid } => ready(reply(
                self.disk_op(&uuid)
                    .map(|op| ConciergeReply::DiskOperation { op: op.info() }),
            )),
            ConciergeRequest::CancelDiskImageOperation { uuid } => {
                ready(reply(self.disk_op(&uuid).and_then(|op| {
                    if let DiskOp::Live(live) = op {
                        if live.info().kind == DiskOpKind::Resize {
                            // Its steps are each atomic and short; stopping between them would
                            // only leave the filesystem and the disk at different sizes.
                            return Err(CrosError::precondition(format!(
                                "disk operation {uuid} is a resize, which cannot be cancelled"
                            )));
                        }
                        live.cancel();
                    }
                    Ok(ConciergeReply::DiskOperation { op: op.info() })
                })))
            }
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
        self.check_no_disk_op(name)?;
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
            extra_disks: Vec::new(),
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

    /// Stops the VM first when it runs (as StopVm does), then deletes its disk.
    fn destroy_disk(&mut self, name: &str) -> Reply {
        if let Err(e) = check_name(name).and_then(|_| self.check_no_disk_op(name)) {
            return ready(Body::Error(e));
        }
        if !self.vms.contains_key(name) {
            return ready(reply(self.remove_disk(name)));
        }
        let name = name.to_string();
        Box::pin(
            self.stop_vm(&name)
                .map(move |stopped, act, _| match stopped {
                    Body::Error(e) => Body::Error(CrosError::new(
                        e.kind,
                        format!(
                            "cannot destroy the disk of {name:?}: stopping the VM failed: {}",
                            e.message
                        ),
                    )),
                    _ => reply(act.remove_disk(&name)),
                }),
        )
    }

    fn remove_disk(&mut self, name: &str) -> Result<ConciergeReply, CrosError> {
        if self.vms.contains_key(name) {
            return Err(CrosError::precondition(format!(
                "VM {name:?} is running again: its disk was not destroyed"
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

    fn disk_op(&self, uuid: &str) -> Result<&DiskOp, CrosError> {
        self.disk_ops
            .get(uuid)
            .ok_or_else(|| CrosError::not_found(format!("no disk operation {uuid:?}")))
    }

    /// Refuses to touch a disk that an export or import is working on.
    fn check_no_disk_op(&self, name: &str) -> Result<(), CrosError> {
        let busy = self.disk_ops.values().find_map(|op| match op {
            DiskOp::Live(live) => {
                let info = live.info();
                (info.name == name && info.state == DiskOpState::Running).then_some(info)
            }
            DiskOp::Past(_) => None,
        });
        match busy {
            Some(info) => Err(CrosError::precondition(format!(
                "the disk of {name:?} is busy: {} {} is running",
                info.kind, info.uuid
            ))),
            None => Ok(()),
        }
    }

    fn export_disk(
        &mut self,
        name: &str,
        path: &str,
        digest_path: Option<&str>,
        force: bool,
    ) -> Result<ConciergeReply, CrosError> {
        check_name(name)?;
        self.check_no_disk_op(name)?;
        if self.vms.contains_key(name) && !force {
            return Err(CrosError::precondition(format!(
                "VM {name:?} is running: stop it before exporting its disk, or force the export"
            )));
        }
        let disk = disk::disk_path(&self.config.state_dir, name);
        if !disk.exists() {
            return Err(CrosError::not_found(format!(
                "VM {name:?} has no disk image"
            )));
        }
        let dst = absolute(path, "export file")?;
        let digest = digest_path
            .map(|d| absolute(d, "digest file"))
            .transpose()?;
        let disks_dir = disk::disks_dir(&self.config.state_dir);
        if std::iter::once(&dst)
            .chain(digest.as_ref())
            .any(|p| p.parent() == Some(disks_dir.as_path()))
        {
            return Err(CrosError::invalid(format!(
                "export file {path:?}: not into {}, where it could replace a disk",
                disks_dir.display()
            )));
        }
        if dst == disk || digest.as_ref() == Some(&disk) || digest.as_ref() == Some(&dst) {
            return Err(CrosError::invalid(format!(
                "export file {path:?} and digest file must differ from each other and from the disk"
            )));
        }
        let mut partial = vec![disk_op::partial_path(&dst)];
        partial.extend(digest.as_deref().map(disk_op::partial_path));
        let op = self.new_disk_op(DiskOpKind::Export, name, &dst, partial)?;
        let uuid = op.info().uuid;
        op.spawn(move |op| disk_op::export(&disk, &dst, digest.as_deref(), op))
            .map_err(|e| CrosError::internal(e.to_string()))?;
        Ok(ConciergeReply::DiskImageOperation { uuid })
    }

    /// Checks the request (a shrink against the guest's filesystem minimum first), then starts
    /// the resize as a disk operation.
    fn resize_disk(&mut self, name: &str, size: u64) -> Reply {
        let plan = match self.plan_resize(name, size) {
            Ok(plan) => plan,
            Err(e) => return ready(Body::Error(e)),
        };
        let name = name.to_string();
        let checked = async move { resize::check_shrink(&plan).await.map(|()| plan) };
        Box::pin(checked.into_actor(self).map(move |checked, act, _| {
            reply(checked.and_then(|plan| act.start_resize(&name, plan)))
        }))
    }

    /// The VM `name` when it is up (not starting or stopping), with what reaching its guest
    /// and its VMM takes.
    fn running_vm(&self, name: &str) -> Option<resize::RunningVm> {
        let entry = self.vms.get(name)?;
        let watcher = entry.watcher.clone()?;
        (entry.info.status == VmStatus::Running).then(|| resize::RunningVm {
            name: name.to_string(),
            vsock_socket: PathBuf::from(&entry.info.vsock_socket),
            watcher,
            disk_index: vm::STATEFUL_DISK_INDEX,
        })
    }

    /// Every disk image; a running VM's disk gets the minimum its filesystem can shrink to
    /// from maitred (the smallest size a resize accepts otherwise).
    fn list_disks(&self) -> Reply {
        let disks = match disk::list(&self.config.state_dir) {
            Ok(d) => d,
            Err(e) => return ready(Body::Error(e)),
        };
        let running: Vec<(usize, resize::RunningVm)> = disks
            .iter()
            .enumerate()
            .filter_map(|(i, d)| self.running_vm(&d.name).map(|vm| (i, vm)))
            .collect();
        if running.is_empty() {
            return ready(reply(Ok(ConciergeReply::Disks { disks })));
        }
        let with_minimums = async move {
            let mut disks = disks;
            for (i, vm) in running {
                match tokio::time::timeout(MIN_SIZE_QUERY, resize::minimum_size(&vm)).await {
                    Ok(Ok(min)) => disks[i].min_size = disk::smallest_disk_for(min),
                    Ok(Err(e)) => {
                        tracing::warn!(vm = %vm.name, error = %e, "no filesystem minimum from maitred")
                    }
                    Err(_) => {
                        tracing::warn!(vm = %vm.name, "maitred did not give its filesystem minimum in time")
                    }
                }
            }
            Body::ConciergeReply(ConciergeReply::Disks { disks })
        };
        Box::pin(with_minimums.into_actor(self))
    }

    fn plan_resize(&self, name: &str, size: u64) -> Result<resize::ResizePlan, CrosError> {
        check_name(name)?;
        self.check_no_disk_op(name)?;
        resize::check_size(size, disk::MIN_AUTO_SIZE)?;
        let disk = disk::disk_path(&self.config.state_dir, name);
        let from = std::fs::metadata(&disk)
            .map_err(|_| CrosError::not_found(format!("VM {name:?} has no disk image")))?
            .len();
        let running = match (self.vms.get(name), self.running_vm(name)) {
            (None, _) => None,
            (Some(_), Some(vm)) => Some(vm),
            (Some(e), None) => {
                return Err(CrosError::precondition(format!(
                    "VM {name:?} is {}: resize its disk once it runs or has stopped",
                    e.info.status
                )));
            }
        };
        if size < from && running.is_none() {
            return Err(CrosError::precondition(format!(
                "VM {name:?} is not running: start it to shrink its disk (its filesystem must \
                 shrink first, inside the VM)"
            )));
        }
        Ok(resize::ResizePlan {
            disk,
            from,
            to: size,
            running,
        })
    }

    fn start_resize(
        &mut self,
        name: &str,
        plan: resize::ResizePlan,
    ) -> Result<ConciergeReply, CrosError> {
        // Another operation may have started while the shrink was being checked.
        self.check_no_disk_op(name)?;
        let op = self.new_disk_op(DiskOpKind::Resize, name, &plan.disk.clone(), Vec::new())?;
        let uuid = op.info().uuid;
        op.spawn(move |op| {
            // The steps talk to maitred and wait on the VMM: async work, on this operation's
            // own thread so the concierge never waits on a guest.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| disk_op::DiskOpError::Step {
                    step: "starting the resize",
                    reason: e.to_string(),
                })?;
            runtime.block_on(resize::run(op, plan))
        })
        .map_err(|e| CrosError::internal(e.to_string()))?;
        Ok(ConciergeReply::DiskImageOperation { uuid })
    }

    fn import_disk(
        &mut self,
        name: &str,
        path: &str,
        digest_path: Option<&str>,
    ) -> Result<ConciergeReply, CrosError> {
        check_name(name)?;
        self.check_no_disk_op(name)?;
        if self.vms.contains_key(name) {
            return Err(CrosError::precondition(format!(
                "VM {name:?} is running: stop it before importing a disk over it"
            )));
        }
        let src = absolute(path, "import file")?;
        if !src.is_file() {
            return Err(CrosError::not_found(format!(
                "import file {path:?} is not a readable file"
            )));
        }
        let digest = digest_path
            .map(|d| absolute(d, "digest file"))
            .transpose()?;
        let disk = disk::disk_path(&self.config.state_dir, name);
        let dir = disk::disks_dir(&self.config.state_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CrosError::internal(format!("create {}: {e}", dir.display())))?;
        let uuid = disk_op::new_uuid().map_err(|e| CrosError::internal(e.to_string()))?;
        let tmp = dir.join(format!(".{name}.img.import-{uuid}"));
        let op = self.new_disk_op_with(
            uuid.clone(),
            DiskOpKind::Import,
            name,
            &src,
            vec![tmp.clone()],
        )?;
        op.spawn(move |op| disk_op::import(&src, digest.as_deref(), &disk, &tmp, op))
            .map_err(|e| CrosError::internal(e.to_string()))?;
        Ok(ConciergeReply::DiskImageOperation { uuid })
    }

    fn new_disk_op(
        &mut self,
        kind: DiskOpKind,
        name: &str,
        path: &std::path::Path,
        partial: Vec<PathBuf>,
    ) -> Result<Arc<disk_op::Operation>, CrosError> {
        let uuid = disk_op::new_uuid().map_err(|e| CrosError::internal(e.to_string()))?;
        self.new_disk_op_with(uuid, kind, name, path, partial)
    }

    fn new_disk_op_with(
        &mut self,
        uuid: String,
        kind: DiskOpKind,
        name: &str,
        path: &std::path::Path,
        partial: Vec<PathBuf>,
    ) -> Result<Arc<disk_op::Operation>, CrosError> {
        let bus = self.bus.clone();
        let on_progress = Box::new(move |uuid: &str, percent: u8| {
            bus.publish(
                &Self::me(),
                Body::ConciergeEvent(ConciergeEvent::DiskImageProgress {
                    uuid: uuid.to_string(),
                    percent,
                }),
            )
        });
        let op = disk_op::Operation::create(
            &self.config.state_dir,
            uuid.clone(),
            kind,
            name,
            path,
            partial,
            on_progress,
        )
        .map_err(|e| CrosError::internal(e.to_string()))?;
        tracing::info!(%uuid, %kind, vm = name, path = %path.display(), "disk operation started");
        self.disk_ops.insert(uuid, DiskOp::Live(op.clone()));
        Ok(op)
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

/// crosd resolves nothing against its own working directory: clients send absolute paths.
fn absolute(path: &str, what: &str) -> Result<PathBuf, CrosError> {
    let p = PathBuf::from(path);
    if p.is_absolute() && p.file_name().is_some() {
        Ok(p)
    } else {
        Err(CrosError::invalid(format!(
            "{what} {path:?} must be an absolute path to a file"
        )))
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

    /// A client's request to the concierge, as the bus delivers it.
    fn deliver(r: ConciergeRequest) -> Deliver {
        Deliver {
            env: cros_messages::Envelope::new(
                1,
                1,
                Addr::client(1),
                Concierge::me(),
                Body::Concierge(r),
            ),
        }
    }

    /// Polls DiskImageStatus until the operation has ended.
    async fn wait_done(c: &actix::Addr<Concierge>, uuid: &str) -> DiskOpInfo {
        loop {
            let status = ConciergeRequest::DiskImageStatus {
                uuid: uuid.to_string(),
            };
            let Body::ConciergeReply(ConciergeReply::DiskOperation { op }) =
                c.send(deliver(status)).await.unwrap()
            else {
                panic!("status must answer")
            };
            if op.state != DiskOpState::Running {
                return op;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        let req = deliver;
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

    #[actix::test]
    async fn a_stopped_vms_disk_grows_and_is_not_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let c = concierge(dir.path()).start();
        let ask = |r| c.send(deliver(r));
        let resize = |size| ConciergeRequest::ResizeDiskImage {
            name: "termina".into(),
            owner_id: String::new(),
            size,
        };
        let disk = disk::disk_path(dir.path(), "termina");
        let err = |body: Body| match body {
            Body::Error(e) => e.message,
            other => panic!("must fail: {other:?}"),
        };
        assert!(err(ask(resize(2 << 30)).await.unwrap()).contains("no disk image"));
        ask(ConciergeRequest::CreateDiskImage {
            name: "termina".into(),
            owner_id: String::new(),
            size: 1 << 30,
        })
        .await
        .unwrap();
        let bad = err(ask(resize((2 << 30) + 1)).await.unwrap());
        assert!(bad.contains("multiple of 4096"), "{bad}");
        let bad = err(ask(resize(512 << 20)).await.unwrap());
        assert!(bad.contains("at least"), "{bad}");

        let Body::ConciergeReply(ConciergeReply::DiskImageOperation { uuid }) =
            ask(resize(3 << 30)).await.unwrap()
        else {
            panic!("a grow must start")
        };
        let op = wait_done(&c, &uuid).await;
        assert_eq!(
            (op.state, op.kind, op.percent),
            (DiskOpState::Done, DiskOpKind::Resize, 100),
            "{op:?}"
        );
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), 3 << 30);
        // Still sparse: growing writes no data.
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20);

        // The filesystem inside must shrink first, which needs the VM.
        let refused = err(ask(resize(2 << 30)).await.unwrap());
        assert!(refused.contains("start it to shrink"), "{refused}");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 3 << 30);
    }

    #[actix::test]
    async fn export_and_import_run_as_operations_by_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let c = concierge(dir.path()).start();
        let ask = |r| c.send(deliver(r));
        let disk = disk::disk_path(dir.path(), "termina");
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"stateful bytes", 1 << 20).unwrap();
        drop(f);
        let out = dir.path().join("termina.zst");
        let export = |path: String| ConciergeRequest::ExportDiskImage {
            name: "termina".into(),
            owner_id: String::new(),
            path,
            digest_path: None,
            force: false,
        };
        // Bad input is refused with the reason, before any operation starts.
        for (req, needle) in [
            (export("relative.zst".into()), "absolute"),
            (
                export(disk::disk_path(dir.path(), "other").display().to_string()),
                "could replace a disk",
            ),
            (
                ConciergeRequest::ExportDiskImage {
                    name: "nodisk".into(),
                    owner_id: String::new(),
                    path: out.display().to_string(),
                    digest_path: None,
                    force: false,
                },
                "no disk image",
            ),
            (
                ConciergeRequest::DiskImageStatus {
                    uuid: "nope".into(),
                },
                "no disk operation",
            ),
        ] {
            let Body::Error(e) = ask(req).await.unwrap() else {
                panic!("{needle}: must fail")
            };
            assert!(e.message.contains(needle), "{e}");
        }

        let Body::ConciergeReply(ConciergeReply::DiskImageOperation { uuid }) =
            ask(export(out.display().to_string())).await.unwrap()
        else {
            panic!("export must start")
        };
        let op = wait_done(&c, &uuid).await;
        assert_eq!(
            (op.state, op.percent, op.kind),
            (DiskOpState::Done, 100, DiskOpKind::Export)
        );
        assert!(
            dir.path()
                .join("disk_ops")
                .join(format!("{uuid}.json"))
                .exists()
        );

        std::fs::write(&disk, b"replaced soon").unwrap();
        let Body::ConciergeReply(ConciergeReply::DiskImageOperation { uuid }) =
            ask(ConciergeRequest::ImportDiskImage {
                name: "termina".into(),
                owner_id: String::new(),
                path: out.display().to_string(),
                digest_path: None,
            })
            .await
            .unwrap()
        else {
            panic!("import must start")
        };
        assert_eq!(wait_done(&c, &uuid).await.state, DiskOpState::Done);
        let back = std::fs::read(&disk).unwrap();
        assert_eq!(back.len(), 8 << 20);
        assert_eq!(&back[1 << 20..(1 << 20) + 14], b"stateful bytes");
    }
}
