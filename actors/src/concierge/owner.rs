//! Who asks, and who owns what.
//!
//! Every VM, disk and disk operation has an owner: a uid, as Crostini keys disks by owner id.
//! The owner of a request is the uid the kernel reported for the client's connection
//! (SO_PEERCRED, kept in the bus's [`ClientTable`](crate::bus::clients::ClientTable) by the
//! control socket), never the `owner_id` the client wrote, with one exception: an administrator
//! (root, or the user crosd runs as, who can reach crosd's files anyway) may name another owner
//! in `owner_id` to act for that user, and then sees and may do exactly what that user may.
//! An administrator acting as itself sees and controls everything. Requests from host actors
//! inside crosd are the daemon's own and act as administrator; guests cannot ask concierge.
//!
//! Names stay one namespace for all users (a VM's disk is `STATE/disks/<name>.img`, its guest
//! actors `maitred@<name>`): a name another user's disk holds is refused at creation, and what
//! a user may not see answers as if it did not exist. A disk's owner is recorded beside it in
//! `STATE/disks/<name>.owner` (the decimal uid); a disk without a record (made before owners
//! were kept) is root's. A VM belongs to the owner of its stateful disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use cros_messages::concierge::ConciergeRequest;
use cros_messages::{Addr, CrosError, ErrorKind};

use crate::bus::BusHandle;

use super::disk;

/// The uid that owns what nobody recorded an owner for.
pub const ROOT: u32 = 0;

/// Whom a request acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// New VMs, disks and operations get this owner.
    pub uid: u32,
    /// Sees and controls everything.
    pub admin: bool,
}

impl Caller {
    /// crosd itself (a host actor's request).
    pub fn daemon() -> Self {
        Self {
            uid: nix::unistd::geteuid().as_raw(),
            admin: true,
        }
    }

    /// Whom the request `req` from `from` acts for (see the module docs).
    pub fn of(bus: &BusHandle, from: &Addr, req: &ConciergeRequest) -> Result<Self, CrosError> {
        if from.vm.is_some() {
            return Err(CrosError::new(
                ErrorKind::PermissionDenied,
                format!("{from} may not ask concierge: guests cannot manage VMs"),
            ));
        }
        if !from.is_client() {
            return Ok(Self::daemon());
        }
        let Some(peer) = bus.clients().peer(from) else {
            return Err(CrosError::new(
                ErrorKind::PermissionDenied,
                format!("{from} is no connection crosd knows the user of"),
            ));
        };
        Self::for_peer(peer.uid, requested_owner(req))
    }

    /// The caller for a connection of user `uid` whose request named `owner_id`.
    pub fn for_peer(uid: u32, owner_id: &str) -> Result<Self, CrosError> {
        let admin = is_admin(uid);
        if !admin || owner_id.is_empty() {
            // What a non-administrator writes in owner_id is ignored: the kernel said who it is.
            return Ok(Self { uid, admin });
        }
        let acting_for = owner_id.parse::<u32>().map_err(|_| {
            CrosError::invalid(format!(
                "owner_id {owner_id:?}: name the user to act for by uid"
            ))
        })?;
        Ok(Self {
            uid: acting_for,
            admin: is_admin(acting_for),
        })
    }

    /// May this caller see and control what `owner` owns?
    pub fn may_use(&self, owner: u32) -> bool {
        self.admin || self.uid == owner
    }
}

/// Root and the user crosd runs as.
pub fn is_admin(uid: u32) -> bool {
    uid == ROOT || uid == nix::unistd::geteuid().as_raw()
}

/// The `owner_id` a request carries, empty for those that have none.
fn requested_owner(req: &ConciergeRequest) -> &str {
    use ConciergeRequest as R;
    match req {
        R::StartVm(s) => &s.owner_id,
        R::StopVm { owner_id, .. }
        | R::SuspendVm { owner_id, .. }
        | R::ResumeVm { owner_id, .. }
        | R::GetVmInfo { owner_id, .. }
        | R::CreateDiskImage { owner_id, .. }
        | R::DestroyDiskImage { owner_id, .. }
        | R::ExportDiskImage { owner_id, .. }
        | R::ImportDiskImage { owner_id, .. }
        | R::ResizeDiskImage { owner_id, .. } => owner_id,
        R::StopAllVms {}
        | R::ListVms {}
        | R::ListVmDisks {}
        | R::DiskImageStatus { .. }
        | R::CancelDiskImageOperation { .. } => "",
    }
}

/// An owner as messages carry it.
pub fn owner_id(uid: u32) -> String {
    uid.to_string()
}

/// The owner of a recorded `owner_id` (records from before owners were kept are root's).
pub fn parse_owner_id(owner_id: &str) -> u32 {
    owner_id.parse().unwrap_or(ROOT)
}

/// `STATE/disks/<name>.owner`.
pub fn record_path(state_dir: &Path, name: &str) -> PathBuf {
    disk::disks_dir(state_dir).join(format!("{name}.owner"))
}

/// The owner of VM `name`'s disk; `None` when there is no disk. A missing or unreadable record
/// means root (an unreadable one is never a reason to hand the disk to someone else).
pub fn disk_owner(state_dir: &Path, name: &str) -> Option<u32> {
    if !disk::disk_path(state_dir, name).exists() {
        return None;
    }
    let owner = match std::fs::read_to_string(record_path(state_dir, name)) {
        Ok(text) => text.trim().parse().unwrap_or(ROOT),
        Err(_) => ROOT,
    };
    Some(owner)
}

/// Records `uid` as the owner of VM `name`'s disk, atomically, and durably before the disk
/// itself appears (callers write it first), so that no disk is ever seen with a wrong owner.
pub fn set_disk_owner(state_dir: &Path, name: &str, uid: u32) -> Result<(), CrosError> {
    let path = record_path(state_dir, name);
    let tmp = disk::disks_dir(state_dir).join(format!(".{name}.owner.partial"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(disk::disks_dir(state_dir))?;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{uid}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CrosError::internal(format!("record the owner in {}: {e}", path.display()))
    })
}

/// Forgets the owner of a destroyed disk.
pub fn remove_disk_owner(state_dir: &Path, name: &str) {
    let path = record_path(state_dir, name);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot remove a disk's owner record");
    }
}

/// What a caller who may not see VM `name`'s disk is told: the same as when there is none.
pub fn no_disk(name: &str) -> CrosError {
    CrosError::not_found(format!("VM {name:?} has no disk image"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::concierge::StartVm;

    #[test]
    fn only_an_administrator_may_act_for_another_owner() {
        let me = nix::unistd::geteuid().as_raw();
        // A user is who the kernel says, whatever it wrote.
        let user = Caller::for_peer(4321, "0").unwrap();
        assert_eq!((user.uid, user.admin), (4321, me == 4321));
        assert!(user.may_use(4321));
        if me != 4321 {
            assert!(!user.may_use(0) && !user.may_use(1234));
        }
        // Root as itself sees everything; for another user, only what that user sees.
        let root = Caller::for_peer(0, "").unwrap();
        assert!(root.admin && root.may_use(4321) && root.may_use(0));
        let acting = Caller::for_peer(0, "4321").unwrap();
        assert_eq!(acting.uid, 4321);
        assert_eq!(acting.admin, me == 4321);
        assert!(acting.may_use(4321));
        let bad = Caller::for_peer(0, "alice").unwrap_err();
        assert!(bad.message.contains("uid"), "{bad}");
    }

    #[test]
    fn the_owner_is_the_connections_user_never_what_the_client_wrote() {
        let bus = BusHandle::new(crate::bus::BusConfig::default()).unwrap();
        let client = Addr::client(3);
        let req = ConciergeRequest::StartVm(StartVm {
            owner_id: "0".into(),
            ..StartVm::named("termina")
        });
        let err = Caller::of(&bus, &client, &req).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied, "no peer registered");
        bus.clients().add_peer(
            client.clone(),
            crate::bus::clients::Peer {
                uid: 4321,
                gid: 4321,
                pid: None,
            },
        );
        assert_eq!(Caller::of(&bus, &client, &req).unwrap().uid, 4321);
        let guest = Addr::in_vm("maitred", "termina");
        let err = Caller::of(&bus, &guest, &ConciergeRequest::ListVms {}).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        assert!(
            Caller::of(&bus, &Addr::host("cicerone"), &req)
                .unwrap()
                .admin
        );
    }

    #[test]
    fn disk_owner_records() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        assert_eq!(disk_owner(state, "termina"), None, "no disk, no owner");
        std::fs::create_dir_all(disk::disks_dir(state)).unwrap();
        std::fs::write(disk::disk_path(state, "termina"), b"").unwrap();
        assert_eq!(
            disk_owner(state, "termina"),
            Some(ROOT),
            "unrecorded: root's"
        );
        set_disk_owner(state, "termina", 4321).unwrap();
        assert_eq!(disk_owner(state, "termina"), Some(4321));
        std::fs::write(record_path(state, "termina"), b"garbage").unwrap();
        assert_eq!(disk_owner(state, "termina"), Some(ROOT));
        remove_disk_owner(state, "termina");
        assert!(!record_path(state, "termina").exists());
        // The record is no disk image.
        set_disk_owner(state, "termina", 4321).unwrap();
        let listed = disk::list(state).unwrap();
        assert_eq!(listed.len(), 1);
    }
}
