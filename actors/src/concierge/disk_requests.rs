//! concierge's disk requests: CreateDiskImage and DestroyDiskImage, ListVmDisks, and the long
//! operations (export, import, resize) it runs by uuid. The VM table and the dispatch of every
//! request stay in the module root; this file holds what the disk requests do with them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix::{ActorFutureExt, WrapFuture};
use cros_messages::concierge::{
    ConciergeEvent, ConciergeReply, DiskOpInfo, DiskOpKind, DiskOpState, VmStatus,
};
use cros_messages::{Body, CrosError};

use super::{
    Concierge, MIN_SIZE_QUERY, Reply, check_name, disk, disk_op, ready, reply, resize, vm,
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
    /// Cancels a running export or import (resizes cannot be cancelled).
    pub(super) fn cancel_disk_op(&self, uuid: &str) -> Result<ConciergeReply, CrosError> {
        let op = self.disk_op(uuid)?;
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
    pub(super) fn destroy_disk(&mut self, name: &str, deadline: Instant) -> Reply {
        if let Err(e) = check_name(name).and_then(|_| self.check_no_disk_op(name)) {
            return ready(Body::Error(e));
        }
        if !self.vms.contains_key(name) {
            return ready(reply(self.remove_disk(name)));
        }
        let name = name.to_string();
        Box::pin(
            self.stop_vm(&name, deadline)
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

    pub(super) fn disk_op(&self, uuid: &str) -> Result<&DiskOp, CrosError> {
        self.disk_ops
            .get(uuid)
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

    pub(super) fn export_disk(
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
    pub(super) fn resize_disk(&mut self, name: &str, size: u64) -> Reply {
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

    /// Every disk image; a running VM's disk gets the minimum its filesystem can shrink to
    /// from maitred (the smallest size a resize accepts otherwise).
    pub(super) fn list_disks(&self) -> Reply {
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

    pub(super) fn import_disk(
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

    pub(super) fn new_disk_op(
        &mut self,
        kind: DiskOpKind,
        name: &str,
        path: &std::path::Path,
        partial: Vec<PathBuf>,
    ) -> Result<Arc<disk_op::Operation>, CrosError> {
        let uuid = disk_op::new_uuid().map_err(|e| CrosError::internal(e.to_string()))?;
        self.new_disk_op_with(uuid, kind, name, path, partial)
    }

    pub(super) fn new_disk_op_with(
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
    use super::super::tests::{concierge, deliver};
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
