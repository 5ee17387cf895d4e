//! StartVm's extra disks: image files the caller names, attached after the VM's stateful disk
//! with serials `crosd-extra<i>` so the guest can find each one by its position in the request
//! (/sys/block/vdX/serial, /dev/disk/by-id/virtio-crosd-extra<i>).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use cros_hypervisor::DiskSpec;
use cros_messages::CrosError;
use cros_messages::concierge::DiskSpec as RequestedDisk;

/// Most extra disks one VM may have (QEMU's microvm has 24 virtio-mmio slots; the VM's own
/// disks and vsock take four).
pub const MAX_EXTRA_DISKS: usize = 16;

/// The guest-visible serial of extra disk `index`.
pub fn serial(index: usize) -> String {
    format!("crosd-extra{index}")
}

/// Checks the requested disks and describes them for the hypervisor: each must be an
/// absolute path to an existing regular file, named once; it is read-only unless `writable`.
/// `own_disks` are the VM's own images, which must not be attached a second time.
pub fn plan(
    requested: &[RequestedDisk],
    own_disks: &[PathBuf],
) -> Result<Vec<DiskSpec>, CrosError> {
    if requested.len() > MAX_EXTRA_DISKS {
        return Err(CrosError::invalid(format!(
            "{} extra disks requested; at most {MAX_EXTRA_DISKS} are supported",
            requested.len()
        )));
    }
    let identity = |path: &PathBuf| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
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
}
