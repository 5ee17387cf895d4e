//! Stateful disk images: sparse raw files under STATE/disks/<name>.img.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cros_hypervisor::fsutil::commit_file;
use cros_messages::CrosError;
use cros_messages::concierge::{ConciergeReply, DiskImageStatus, VmDiskInfo};

/// Auto-sized disks get at least this much.
pub const MIN_AUTO_SIZE: u64 = 1 << 30;
const BLOCK: u64 = 4096;

pub fn disks_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("disks")
}

pub fn disk_path(state_dir: &Path, name: &str) -> PathBuf {
    disks_dir(state_dir).join(format!("{name}.img"))
}

/// Free and used bytes of the filesystem holding `dir`.
fn fs_space(dir: &Path) -> Result<(u64, u64), CrosError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| CrosError::internal(format!("statvfs {}: {e}", dir.display())))?;
    let frsize = st.fragment_size() as u64;
    let free = st.blocks_available() as u64 * frsize;
    let used = (st.blocks() as u64).saturating_sub(st.blocks_free() as u64) * frsize;
    Ok((free, used))
}

/// Crostini's automatic size: 90% of (free space + current usage), rounded down to 4 KiB, at
/// least 1 GiB.
pub fn auto_size(free: u64, used: u64) -> u64 {
    let size = (free.saturating_add(used) / 10 * 9) / BLOCK * BLOCK;
    size.max(MIN_AUTO_SIZE)
}

/// Creates the disk of VM `name` (sparse) unless it exists; `size` 0 = auto.
pub fn create(state_dir: &Path, name: &str, size: u64) -> Result<ConciergeReply, CrosError> {
    let dir = disks_dir(state_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| CrosError::internal(format!("create {}: {e}", dir.display())))?;
    let path = disk_path(state_dir, name);
    if let Ok(meta) = std::fs::metadata(&path) {
        return Ok(ConciergeReply::DiskImage {
            status: DiskImageStatus::Exists,
            path: path.display().to_string(),
            size: meta.len(),
        });
    }
    let size = if size == 0 {
        let (free, used) = fs_space(&dir)?;
        auto_size(free, used)
    } else if size < MIN_AUTO_SIZE || !size.is_multiple_of(BLOCK) {
        return Err(CrosError::invalid(format!(
            "disk size {size} must be a multiple of 4096 and at least 1 GiB"
        )));
    } else {
        size
    };
    // Create under a temporary name, fsync, rename and fsync the directory, so a crash never
    // leaves a disk of the wrong size, nor loses one that was reported created.
    let tmp = dir.join(format!(".{name}.img.partial"));
    let f = std::fs::File::create(&tmp)
        .map_err(|e| CrosError::internal(format!("create {}: {e}", tmp.display())))?;
    f.set_len(size)
        .map_err(|e| CrosError::internal(format!("size {}: {e}", tmp.display())))?;
    drop(f);
    commit_file(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CrosError::internal(format!("sync and rename to {}: {e}", path.display()))
    })?;
    Ok(ConciergeReply::DiskImage {
        status: DiskImageStatus::Created,
        path: path.display().to_string(),
        size,
    })
}

/// The smallest disk that holds a filesystem needing `fs_min` bytes: whole blocks, and never
/// below what CreateDiskImage and ResizeDiskImage accept.
pub fn smallest_disk_for(fs_min: u64) -> u64 {
    fs_min
        .div_ceil(BLOCK)
        .saturating_mul(BLOCK)
        .max(MIN_AUTO_SIZE)
}

/// Every disk image under STATE/disks.
pub fn list(state_dir: &Path) -> Result<Vec<VmDiskInfo>, CrosError> {
    let dir = disks_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CrosError::internal(format!("read {}: {e}", dir.display()))),
    };
    let available = fs_space(&dir)?.0;
    let mut disks = Vec::new();
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(name) = fname.strip_suffix(".img").filter(|n| !n.starts_with('.')) else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        disks.push(VmDiskInfo {
            name: name.to_string(),
            path: e.path().display().to_string(),
            size: meta.len(),
            allocated: meta.blocks() * 512,
            min_size: MIN_AUTO_SIZE,
            available_space: available,
            vm_type: "termina".into(),
            // Filled in by concierge from the disk's owner record.
            owner_id: String::new(),
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_disk_is_whole_blocks_and_at_least_the_minimum() {
        assert_eq!(smallest_disk_for(0), MIN_AUTO_SIZE);
        assert_eq!(smallest_disk_for((2 << 30) + 1), (2 << 30) + 4096);
        assert_eq!(smallest_disk_for(3 << 30), 3 << 30);
    }

    #[test]
    fn auto_size_rule() {
        assert_eq!(auto_size(0, 0), MIN_AUTO_SIZE);
        assert_eq!(auto_size(100 << 30, 0), (90u64 << 30) / BLOCK * BLOCK);
        assert_eq!(auto_size(10_000_000_000, 3) % BLOCK, 0);
    }

    #[test]
    fn create_is_sparse_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let r = create(dir.path(), "termina", 0).unwrap();
        let ConciergeReply::DiskImage {
            status: DiskImageStatus::Created,
            path,
            size,
        } = r
        else {
            panic!("{r:?}")
        };
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            !disks_dir(dir.path()).join(".termina.img.partial").exists(),
            "the temporary disk was renamed into place"
        );
        assert!(size >= MIN_AUTO_SIZE && size % BLOCK == 0);
        assert!(meta.blocks() * 512 < 1 << 20, "a new disk is sparse");
        let again = create(dir.path(), "termina", 0).unwrap();
        assert!(matches!(
            again,
            ConciergeReply::DiskImage {
                status: DiskImageStatus::Exists,
                ..
            }
        ));
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "termina");
        assert!(
            create(dir.path(), "other", 12345)
                .unwrap_err()
                .message
                .contains("multiple of 4096")
        );
    }
}
