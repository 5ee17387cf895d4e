//! concierge's disk requests: CreateDiskImage and DestroyDiskImage, ListVmDisks, and the long
//! operations (export, import, resize) it runs by uuid. The VM table and the dispatch of every
//! request stay in the module root; this file holds what the disk requests do with them.
//!
//! Every request acts for a [`Caller`]: a disk or operation of another owner answers as if it
//! did not exist (see [`owner`]), and the files of an export or import are the client's own
//! (see [`client_files`]).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix::{ActorFutureExt, WrapFuture};
use cros_messages::concierge::{
    ConciergeEvent, ConciergeReply, DiskOpInfo, DiskOpKind, DiskOpState, VmStatus,
};
use cros_messages::{Body, CrosError};

use super::owner::{self, Caller};
use super::{
    Concierge, MIN_SIZE_QUERY, Reply, check_name, client_files, disk, disk_op, ready, reply,
    resize, vm,
};

pub(super) enum DiskOp {
    Live(Arc<disk_op::Operation>),
    /// Finished before this concierge started (read back from STATE/disk_ops).
    Past(DiskOpInfo),
}

impl DiskOp {
    pub(super) fn info(&self) -> DiskOpInfo {
        match self {
            DiskOp::Live(op) => op.info(),
            DiskOp::Past(info) => info.clone(),
        }
    }
}

impl Concierge {
    /// The owner of VM `name`'s disk when `caller` may use it; otherwise the error for a disk
    /// that does not exist.
    pub(super) fn visible_disk(&self, caller: &Caller, name: &str) -> Result<u32, CrosError> {
        check_name(name)?;
        match owner::disk_owner(&self.config.state_dir, name) {
            Some(o) if caller.may_use(o) => Ok(o),
            _ => Err(owner::no_disk(name)),
        }
    }

    /// Creates the disk of VM `name` for `caller`, recording the owner first; a name another
    /// owner's disk holds is refused.
    pub(super) fn create_disk(
        &self,
        caller: &Caller,
        name: &str,
        size: u64,
    ) -> Result<ConciergeReply, CrosError> {
        check_name(name)?;
        self.check_no_disk_op(name)?;
        let state = &self.config.state_dir;
        match owner::disk_owner(state, name) {
            Some(o) if !caller.may_use(o) => Err(taken(name)),
            Some(_) => disk::create(state, name, size),
            None => {
                owner::set_disk_owner(state, name, caller.uid)?;
                disk::create(state, name, size)
            }
        }
    }

    /// Cancels a running export or import (resizes cannot be cancelled).
    pub(super) fn cancel_disk_op(
        &self,
        caller: &Caller,
        uuid: &str,
    ) -> Result<ConciergeReply, CrosError> {
        let op = self.disk_op(caller, uuid)?;
        if let DiskOp::Live(live) = op {
            if live.info().kind == DiskOpKind::Resize {
                // Its steps are each atomic and short; stopping between them would only leave
                // the filesystem and the disk at different sizes.
                return Err(CrosError::precondition(format!(
                    "disk operation {uuid} is a resize, which cannot be cancelled"
                )));
            }
            live.cancel();
        }
        Ok(ConciergeReply::DiskOperation { op: op.info() })
    }

    /// Stops the VM first when it runs (as StopVm does), then deletes its disk.
    pub(super) fn destroy_disk(&mut self, caller: &Caller, name: &str, deadline: Instant) -> Reply {
        if let Err(e) = check_name(name)
            .and_then(|_| self.check_no_disk_op(name))
            .and_then(|_| match self.vms.get(name) {
                // A running VM's disk may be gone from under it; its owner still decides.
                Some(e) if caller.may_use(e.owner) => Ok(()),
                _ => self.visible_disk(caller, name).map(|_| ()),
            })
        {
            return ready(Body::Error(e));
        }
        if !self.vms.contains_key(name) {
            return ready(reply(self.remove_disk(name)));
        }
        let name = name.to_string();
        Box::pin(
            self.stop_vm(caller, &name, deadline)
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

    pub(super) fn remove_disk(&mut self, name: &str) -> Result<ConciergeReply, CrosError> {
        if self.vms.contains_key(name) {
            return Err(CrosError::precondition(format!(
                "VM {name:?} is running again: its disk was not destroyed"
            )));
        }
        let path = disk::disk_path(&self.config.state_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                owner::remove_disk_owner(&self.config.state_dir, name);
                Ok(ConciergeReply::DiskImageDestroyed {
                    name: name.to_string(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CrosError::not_found(
                format!("VM {name:?} has no disk image"),
            )),
            Err(e) => Err(CrosError::internal(format!(
                "remove {}: {e}",
                path.display()
            ))),
        }
    }

    /// Operation `uuid` when `caller` may see it.
    pub(super) fn disk_op(&self, caller: &Caller, uuid: &str) -> Result<&DiskOp, CrosError> {
        self.disk_ops
            .get(uuid)
            .filter(|op| caller.may_use(owner::parse_owner_id(&op.info().owner_id)))
            .ok_or_else(|| CrosError::not_found(format!("no disk operation {uuid:?}")))
    }

    /// Refuses to touch a disk that an export or import is working on.
    pub(super) fn check_no_disk_op(&self, name: &str) -> Result<(), CrosError> {
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn export_disk(
        &mut self,
        caller: &Caller,
        files: Vec<OwnedFd>,
        name: &str,
        path: &str,
        digest_path: Option<&str>,
        force: bool,
    ) -> Result<ConciergeReply, CrosError> {
        let owner = self.visible_disk(caller, name)?;
        self.check_no_disk_op(name)?;
        if self.vms.contains_key(name) && !force {
            return Err(CrosError::precondition(format!(
                "VM {name:?} is running: stop it before exporting its disk, or force the export"
            )));
        }
        let disk = disk::disk_path(&self.config.state_dir, name);
        let disks_dir = disk::disks_dir(&self.config.state_dir);
        let target = client_files::export_target(
            caller,
            files,
            path,
            digest_path,
            force,
            &disk,
            &disks_dir,
        )?;
        let partial = target.renames.iter().map(|(p, _)| p.clone()).collect();
        let op = self.new_disk_op(DiskOpKind::Export, name, owner, &target.out_label, partial)?;
        let uuid = op.info().uuid;
        op.spawn(move |op| {
            let digest = target.digest.as_ref().map(|(f, l)| (f, l.as_path()));
            let done = disk_op::export(&disk, &target.out, &target.out_label, digest, op)
                .and_then(|()| finish_export(&target));
            if done.is_err() {
                // A half-written export must not pass for one (crosd's own partial files are
                // removed; a client's file is emptied, and vmc removes what it created).
                let _ = target.out.set_len(0);
                if let Some((f, _)) = &target.digest {
                    let _ = f.set_len(0);
                }
            }
            done
        })
        .map_err(|e| CrosError::internal(e.to_string()))?;
        Ok(ConciergeReply::DiskImageOperation { uuid })
    }

    /// Checks the request (a shrink against the guest's filesystem minimum first), then starts
    /// the resize as a disk operation.
    pub(super) fn resize_disk(&mut self, caller: &Caller, name: &str, size: u64) -> Reply {
        let owner = match self.visible_disk(caller, name) {
            Ok(o) => o,
            Err(e) => return ready(Body::Error(e)),
        };
        let plan = match self.plan_resize(name, size) {
            Ok(plan) => plan,
            Err(e) => return ready(Body::Error(e)),
        };
        let name = name.to_string();
        let checked = async move { resize::check_shrink(&plan).await.map(|()| plan) };
        Box::pin(checked.into_actor(self).map(move |checked, act, _| {
            reply(checked.and_then(|plan| act.start_resize(&name, owner, plan)))
        }))
    }

    /// The VM `name` when it is up (not starting or stopping), with what reaching its guest
    /// and its VMM takes.
    pub(super) fn running_vm(&self, name: &str) -> Option<resize::RunningVm> {
        let entry = self.vms.get(name)?;
        let watcher = entry.watcher.clone()?;
        (entry.info.status == VmStatus::Running).then(|| resize::RunningVm {
            name: name.to_string(),
            bus: self.bus.clone(),
            watcher,
            disk_index: vm::STATEFUL_DISK_INDEX,
        })
    }

    /// The disk images `caller` may see, with their owners; a running VM's disk gets the
    /// minimum its filesystem can shrink to from maitred (the smallest size a resize accepts
    /// otherwise).
    pub(super) fn list_disks(&self, caller: &Caller) -> Reply {
        let state = &self.config.state_dir;
        let disks: Vec<_> = match disk::list(state) {
            Ok(d) => d
                .into_iter()
                .filter_map(|mut d| {
                    let o = owner::disk_owner(state, &d.name).unwrap_or(owner::ROOT);
                    d.owner_id = owner::owner_id(o);
                    caller.may_use(o).then_some(d)
                })
                .collect(),
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
                match resize::minimum_size(&vm, MIN_SIZE_QUERY).await {
                    Ok(min) => disks[i].min_size = disk::smallest_disk_for(min),
                    Err(e) => {
                        tracing::warn!(vm = %vm.name, error = %e, "no filesystem minimum from maitred")
                    }
                }
            }
            Body::ConciergeReply(ConciergeReply::Disks { disks })
        };
        Box::pin(with_minimums.into_actor(self))
    }

    pub(super) fn plan_resize(
        &self,
        name: &str,
        size: u64,
    ) -> Result<resize::ResizePlan, CrosError> {
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

    pub(super) fn start_resize(
        &mut self,
        name: &str,
        owner: u32,
        plan: resize::ResizePlan,
    ) -> Result<ConciergeReply, CrosError> {
        // Another operation may have started while the shrink was being checked.
        self.check_no_disk_op(name)?;
        let op = self.new_disk_op(
            DiskOpKind::Resize,
            name,
            owner,
            &plan.disk.clone(),
            Vec::new(),
        )?;
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

    /// Replaces (or creates) the disk of VM `name` from the client's export; a new disk
    /// belongs to `caller`.
    pub(super) fn import_disk(
        &mut self,
        caller: &Caller,
        files: Vec<OwnedFd>,
        name: &str,
        path: &str,
        digest_path: Option<&str>,
    ) -> Result<ConciergeReply, CrosError> {
        check_name(name)?;
        let state = &self.config.state_dir;
        let existing = owner::disk_owner(state, name);
        let owner = match existing {
            Some(o) if !caller.may_use(o) => return Err(taken(name)),
            Some(o) => o,
            None => caller.uid,
        };
        self.check_no_disk_op(name)?;
        if self.vms.contains_key(name) {
            return Err(CrosError::precondition(format!(
                "VM {name:?} is running: stop it before importing a disk over it"
            )));
        }
        let source = client_files::import_source(caller, files, path, digest_path)?;
        if existing.is_none() {
            // Before the disk appears: no disk is ever seen without its owner.
            owner::set_disk_owner(state, name, owner)?;
        }
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
            owner,
            &source.src_label,
            vec![tmp.clone()],
        )?;
        op.spawn(move |op| {
            let digest = source
                .digest
                .as_ref()
                .map(|(d, l)| (d.as_str(), l.as_path()));
            disk_op::import(&source.src, &source.src_label, digest, &disk, &tmp, op)
        })
        .map_err(|e| CrosError::internal(e.to_string()))?;
        Ok(ConciergeReply::DiskImageOperation { uuid })
    }

    pub(super) fn new_disk_op(
        &mut self,
        kind: DiskOpKind,
        name: &str,
        owner: u32,
        path: &std::path::Path,
        partial: Vec<PathBuf>,
    ) -> Result<Arc<disk_op::Operation>, CrosError> {
        let uuid = disk_op::new_uuid().map_err(|e| CrosError::internal(e.to_string()))?;
        self.new_disk_op_with(uuid, kind, name, owner, path, partial)
    }

    pub(super) fn new_disk_op_with(
        &mut self,
        uuid: String,
        kind: DiskOpKind,
        name: &str,
        owner: u32,
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
            owner::owner_id(owner),
            path,
            partial,
            on_progress,
        )
        .map_err(|e| CrosError::internal(e.to_string()))?;
        tracing::info!(%uuid, %kind, vm = name, path = %path.display(), "disk operation started");
        self.disk_ops.insert(uuid, DiskOp::Live(op.clone()));
        Ok(op)
    }
}

/// What a caller is told when the name it wants is another owner's disk.
fn taken(name: &str) -> CrosError {
    CrosError::new(
        cros_messages::ErrorKind::PermissionDenied,
        format!("the name {name:?} is taken: another user's VM has a disk of that name"),
    )
}

/// Renames crosd's own partial files over their targets once an export is complete (an
/// administrator's export by path); never over an existing file unless forced.
fn finish_export(target: &client_files::ExportTarget) -> Result<(), disk_op::DiskOpError> {
    use nix::fcntl::{RenameFlags, renameat2};
    let flags = if target.replace {
        RenameFlags::empty()
    } else {
        RenameFlags::RENAME_NOREPLACE
    };
    for (partial, dst) in &target.renames {
        renameat2(None, partial, None, dst, flags).map_err(|e| disk_op::DiskOpError::Io {
            what: "rename to",
            path: dst.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// crosd resolves nothing against its own working directory: clients send absolute paths.
pub(super) fn absolute(path: &str, what: &str) -> Result<PathBuf, CrosError> {
    let p = PathBuf::from(path);
    if p.is_absolute() && p.file_name().is_some() {
        Ok(p)
    } else {
        Err(CrosError::invalid(format!(
            "{what} {path:?} must be an absolute path to a file"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{concierge, deliver, deliver_from};
    use super::*;
    use actix::Actor;
    use cros_messages::concierge::ConciergeRequest;
    use std::time::Duration;

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

    #[actix::test]
    async fn a_user_sees_and_controls_only_its_own_disks_and_operations() {
        use crate::bus::clients::Peer;
        use cros_messages::{Addr, ErrorKind};
        let dir = tempfile::tempdir().unwrap();
        let c = concierge(dir.path());
        let bus = c.bus.clone();
        let c = c.start();
        let (alice, bob) = (Addr::client(7), Addr::client(8));
        for (client, uid) in [(&alice, 4321), (&bob, 5555)] {
            let peer = Peer {
                uid,
                gid: uid,
                pid: None,
            };
            bus.clients().add_peer(client.clone(), peer);
        }
        let create = |name: &str| ConciergeRequest::CreateDiskImage {
            name: name.into(),
            owner_id: String::new(),
            size: 1 << 30,
        };
        let list = |from: &Addr| {
            let req = deliver_from(from.clone(), 1, ConciergeRequest::ListVmDisks {});
            let c = c.clone();
            async move {
                let Body::ConciergeReply(ConciergeReply::Disks { disks }) =
                    c.send(req).await.unwrap()
                else {
                    panic!("ListVmDisks must answer")
                };
                disks
                    .into_iter()
                    .map(|d| (d.name, d.owner_id))
                    .collect::<Vec<_>>()
            }
        };
        let err = |body: Body| match body {
            Body::Error(e) => e,
            other => panic!("must fail: {other:?}"),
        };
        c.send(deliver(create("rootvm"))).await.unwrap();
        let made = c
            .send(deliver_from(alice.clone(), 2, create("alicevm")))
            .await
            .unwrap();
        assert!(matches!(made, Body::ConciergeReply(_)), "{made:?}");
        let root = nix::unistd::geteuid().as_raw().to_string();
        assert_eq!(list(&alice).await, [("alicevm".into(), "4321".into())]);
        assert!(list(&bob).await.is_empty());
        assert_eq!(
            list(&Addr::host("tester")).await,
            [("alicevm".into(), "4321".into()), ("rootvm".into(), root)]
        );
        // Another owner's disk is as good as absent, and its name is not free.
        let e = err(c
            .send(deliver_from(
                bob.clone(),
                3,
                ConciergeRequest::DestroyDiskImage {
                    name: "alicevm".into(),
                    owner_id: "4321".into(),
                },
            ))
            .await
            .unwrap());
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(disk::disk_path(dir.path(), "alicevm").exists());
        let e = err(c
            .send(deliver_from(bob.clone(), 4, create("alicevm")))
            .await
            .unwrap());
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
        // A user's export by path alone is refused: crosd does not open its paths.
        let out = dir.path().join("alice.zst");
        let export = |name: &str| ConciergeRequest::ExportDiskImage {
            name: name.into(),
            owner_id: String::new(),
            path: out.display().to_string(),
            digest_path: None,
            force: false,
        };
        let e = err(c
            .send(deliver_from(alice.clone(), 5, export("alicevm")))
            .await
            .unwrap());
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
        assert!(e.message.contains("vmc"), "{e}");
        assert!(!out.exists());
        // With the file passed, it runs; bob cannot see the operation.
        let passed =
            || -> Vec<std::os::fd::OwnedFd> { vec![std::fs::File::create(&out).unwrap().into()] };
        bus.clients().put_files(alice.clone(), 6, passed());
        let e = err(c
            .send(deliver_from(alice.clone(), 6, export("rootvm")))
            .await
            .unwrap());
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert_eq!(bus.clients().pending_files(), 0, "taken, and closed");
        bus.clients().put_files(alice.clone(), 7, passed());
        let Body::ConciergeReply(ConciergeReply::DiskImageOperation { uuid }) = c
            .send(deliver_from(alice.clone(), 7, export("alicevm")))
            .await
            .unwrap()
        else {
            panic!("alice's export must start")
        };
        let status = |from: &Addr| {
            deliver_from(
                from.clone(),
                9,
                ConciergeRequest::DiskImageStatus { uuid: uuid.clone() },
            )
        };
        let e = err(c.send(status(&bob)).await.unwrap());
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        let op = wait_done(&c, &uuid).await;
        assert_eq!(
            (op.state, op.owner_id.as_str()),
            (DiskOpState::Done, "4321")
        );
        assert!(matches!(
            c.send(status(&alice)).await.unwrap(),
            Body::ConciergeReply(ConciergeReply::DiskOperation { .. })
        ));
        assert!(std::fs::metadata(&out).unwrap().len() > 0);
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
