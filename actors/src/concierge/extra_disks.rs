//! StartVm's extra disks: image files the caller names, attached after the VM's stateful disk
//! with serials `crosd-extra<i>` so the guest can find each one by its position in the request
//! (/sys/block/vdX/serial, /dev/disk/by-id/virtio-crosd-extra<i>).
//!
//! The images are the client's: it opens them (read-write when `writable`) and passes them with
//! StartVm, one descriptor per disk in request order, and the paths only label them. crosd keeps
//! each open while the VM lives and hands the hypervisor `/proc/<crosd>/fd/<n>`: the hypervisor
//! reopens that very file, which the client proved it may open in that mode (a writable disk
//! must have been passed read-write). Without passed files only an administrator may name
//! images, by path, as before.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use cros_hypervisor::DiskSpec;
use cros_messages::concierge::DiskSpec as RequestedDisk;
use cros_messages::{CrosError, ErrorKind};

use super::client_files::{Access, check_file, identity};
use super::owner::Caller;

/// Most extra disks one VM may have (QEMU's microvm has 24 virtio-mmio slots; the VM's own
/// disks and vsock take four).
pub const MAX_EXTRA_DISKS: usize = 16;

/// The guest-visible serial of extra disk `index`.
pub fn serial(index: usize) -> String {
    format!("crosd-extra{index}")
}

/// The extra disks for the hypervisor, and the client's files they are opened through.
pub struct Planned {
    pub disks: Vec<DiskSpec>,
    pub held_files: Vec<OwnedFd>,
}

/// Checks the requested disks and describes them for the hypervisor: each a regular file,
/// attached once, read-only unless `writable`; passed by the client (see the module docs), or
/// for an administrator an absolute path. `own_disks` are the VM's own images, which must not
/// be attached a second time.
pub fn plan(
    caller: &Caller,
    requested: &[RequestedDisk],
    passed: Vec<OwnedFd>,
    own_disks: &[PathBuf],
) -> Result<Planned, CrosError> {
    if requested.len() > MAX_EXTRA_DISKS {
        return Err(CrosError::invalid(format!(
            "{} extra disks requested; at most {MAX_EXTRA_DISKS} are supported",
            requested.len()
        )));
    }
    if !passed.is_empty() || (!caller.admin && !requested.is_empty()) {
        return plan_passed(requested, passed, own_disks);
    }
    Ok(Planned {
        disks: plan_paths(requested, own_disks)?,
        held_files: Vec::new(),
    })
}

fn plan_passed(
    requested: &[RequestedDisk],
    passed: Vec<OwnedFd>,
    own_disks: &[PathBuf],
) -> Result<Planned, CrosError> {
    if passed.len() != requested.len() {
        return Err(if passed.is_empty() {
            CrosError::new(
                ErrorKind::PermissionDenied,
                "extra disks: the images must be opened by the client and passed with StartVm \
                 (one per disk, in order); crosd opens a client's paths itself only for root",
            )
        } else {
            CrosError::invalid(format!(
                "{} extra disks requested but {} files passed",
                requested.len(),
                passed.len()
            ))
        });
    }
    let mut seen: Vec<(u64, u64)> = own_disks.iter().filter_map(path_identity).collect();
    let mut planned = Planned {
        disks: Vec::with_capacity(requested.len()),
        held_files: Vec::with_capacity(requested.len()),
    };
    let pid = std::process::id();
    for (i, (disk, fd)) in requested.iter().zip(passed).enumerate() {
        let file = File::from(fd);
        let what = format!("extra disk {i}");
        let label = PathBuf::from(&disk.path);
        let access = if disk.writable {
            Access::ReadWrite
        } else {
            Access::Read
        };
        check_file(&file, access, &what, &label)?;
        let id = identity(&file).ok_or_else(|| {
            CrosError::invalid(format!("{what} ({:?}): cannot stat it", disk.path))
        })?;
        if seen.contains(&id) {
            return Err(CrosError::invalid(format!(
                "{what} ({:?}): this image is already attached to the VM",
                disk.path
            )));
        }
        seen.push(id);
        planned.disks.push(DiskSpec {
            path: PathBuf::from(format!("/proc/{pid}/fd/{}", file.as_raw_fd())),
            read_only: !disk.writable,
            serial: Some(serial(i)),
            online_resize: false,
        });
        planned.held_files.push(file.into());
    }
    Ok(planned)
}

fn path_identity(path: &PathBuf) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// An administrator's disks by path: each an absolute path to an existing regular file.
fn plan_paths(
    requested: &[RequestedDisk],
    own_disks: &[PathBuf],
) -> Result<Vec<DiskSpec>, CrosError> {
    let identity = path_identity;
    let mut seen: Vec<(u64, u64)> = own_disks.iter().filter_map(identity).collect();
    let mut planned = Vec::with_capacity(requested.len());
    for (i, disk) in requested.iter().enumerate() {
        let path = PathBuf::from(&disk.path);
        let bad = |reason: &str| {
            CrosError::invalid(format!("extra disk {i} ({:?}): {reason}", disk.path))
        };
        // crosd's working directory means nothing to the caller.
        if !path.is_absolute() {
            return Err(bad("the path must be absolute"));
        }
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                CrosError::not_found(format!("extra disk {i} ({:?}): no such file", disk.path))
            }
            _ => bad(&e.to_string()),
        })?;
        if !meta.is_file() {
            return Err(bad("not a regular file"));
        }
        let id = (meta.dev(), meta.ino());
        if seen.contains(&id) {
            // Two devices writing one file would corrupt it.
            return Err(bad("this image is already attached to the VM"));
        }
        seen.push(id);
        planned.push(DiskSpec {
            path,
            read_only: !disk.writable,
            serial: Some(serial(i)),
            online_resize: false,
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::ErrorKind;

    fn admin() -> Caller {
        Caller::daemon()
    }

    fn plan(r: &[RequestedDisk], own: &[PathBuf]) -> Result<Vec<DiskSpec>, CrosError> {
        super::plan(&admin(), r, Vec::new(), own).map(|p| p.disks)
    }

    fn requested(path: &std::path::Path, writable: bool) -> RequestedDisk {
        RequestedDisk {
            path: path.to_string_lossy().into_owned(),
            writable,
        }
    }

    #[test]
    fn disks_follow_the_request_with_serials_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&a, [0u8; 512]).unwrap();
        std::fs::write(&b, [0u8; 512]).unwrap();
        let disks = plan(&[requested(&a, true), requested(&b, false)], &[]).unwrap();
        assert_eq!(
            disks,
            [
                DiskSpec {
                    path: a,
                    read_only: false,
                    serial: Some("crosd-extra0".into()),
                    online_resize: false,
                },
                DiskSpec {
                    path: b,
                    read_only: true,
                    serial: Some("crosd-extra1".into()),
                    online_resize: false,
                },
            ]
        );
    }

    #[test]
    fn bad_disks_are_refused_by_index_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let err = plan(&[requested(&dir.path().join("missing.img"), true)], &[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(
            err.message.contains("extra disk 0") && err.message.contains("missing.img"),
            "{err:?}"
        );
        let err = plan(&[requested(dir.path(), true)], &[]).unwrap_err();
        assert!(err.message.contains("not a regular file"), "{err:?}");
        let err = plan(
            &[RequestedDisk {
                path: "a.img".into(),
                writable: true,
            }],
            &[],
        )
        .unwrap_err();
        assert!(err.message.contains("absolute"), "{err:?}");
        // The same file twice, or the VM's own disk (through a hard link), is refused.
        let link = dir.path().join("link.img");
        std::fs::hard_link(&img, &link).unwrap();
        let err = plan(&[requested(&img, true), requested(&link, true)], &[]).unwrap_err();
        assert!(
            err.message.contains("extra disk 1") && err.message.contains("already attached"),
            "{err:?}"
        );
        let err = plan(&[requested(&link, false)], std::slice::from_ref(&img)).unwrap_err();
        assert!(err.message.contains("already attached"), "{err:?}");
        let many: Vec<_> = (0..=MAX_EXTRA_DISKS)
            .map(|_| requested(&img, false))
            .collect();
        assert!(plan(&many, &[]).unwrap_err().message.contains("at most"));
    }

    #[test]
    fn a_user_passes_its_disks_open_in_the_mode_it_asks_for() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let user = Caller {
            uid: 4321,
            admin: false,
        };
        let err = super::plan(&user, &[requested(&img, false)], Vec::new(), &[])
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        // Writable asked, read-only passed: refused.
        let ro: OwnedFd = File::open(&img).unwrap().into();
        let err = super::plan(&user, &[requested(&img, true)], vec![ro], &[])
            .err()
            .unwrap();
        assert!(
            err.message.contains("not opened for reading and writing"),
            "{err}"
        );
        let rw: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap()
            .into();
        let raw = rw.as_raw_fd();
        let planned = super::plan(&user, &[requested(&img, true)], vec![rw], &[]).unwrap();
        assert_eq!(planned.held_files.len(), 1);
        let path = &planned.disks[0].path;
        assert_eq!(
            *path,
            PathBuf::from(format!("/proc/{}/fd/{raw}", std::process::id()))
        );
        // The hypervisor's path leads to the very file the client passed.
        assert_eq!(std::fs::read(path).unwrap(), [0u8; 512]);
        assert!(!planned.disks[0].read_only);
        let dev: OwnedFd = File::open("/dev/null").unwrap().into();
        let err = super::plan(&user, &[requested(&img, false)], vec![dev], &[])
            .err()
            .unwrap();
        assert!(err.message.contains("a device"), "{err}");
    }
}
