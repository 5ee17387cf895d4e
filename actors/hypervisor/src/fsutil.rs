//! File-system steps that must survive a crash or a careless umask: durable atomic writes and
//! directories with explicit modes. Shared by crosd, concierge and the hypervisor backends.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `<path>.partial`: where a file is written before it is renamed over `path`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// The directory holding `path` ("." for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync of directory `dir`, so that a rename or a creation inside it is on disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes `tmp` (complete and closed by the caller) the file at `path`: fsync the file, rename
/// it over `path`, fsync the directory. After a crash `path` is either the old file or the
/// whole new one, never a prefix or an empty file.
pub fn commit_file(tmp: &Path, path: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    sync_dir(parent_dir(path))
}

/// Writes `bytes` to `path` atomically and durably: `<path>.partial` (mode `mode`, whatever the
/// umask), fsynced, renamed over `path`, then the directory fsynced. On error the partial
/// file is removed and `path` is unchanged.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = partial_path(path);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(parent_dir(path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates directory `path` and any missing parents with mode `mode` exactly (the umask
/// neither widens nor narrows it: each directory created is chmod-ed after mkdir). Existing
/// directories are left as they are: `--run-dir /tmp` must not change /tmp. Returns whether
/// `path` itself was created.
pub fn create_dir_with_mode(path: &Path, mode: u32) -> io::Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_with_mode(parent, mode)?;
    }
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        // Created meanwhile by someone else: theirs, leave it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(false),
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

/// A directory private to crosd (0700), such as a VM's run directory with its sockets: created
/// when missing, and narrowed to 0700 when it exists, since nothing else owns it.
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    if !create_dir_with_mode(path, 0o700)? {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Runs `f` with the process umask set to `mask`. The umask is process-wide: tests that
    /// create files while another test changes it could see either; every such test in this
    /// crate goes through this lock.
    pub(crate) fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        let out = f();
        nix::sys::stat::umask(old);
        out
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn write_atomically_replaces_the_whole_file_with_the_given_mode_under_any_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        std::fs::write(&path, "old contents that are longer").unwrap();
        with_umask(0o000, || write_atomically(&path, b"new", 0o600)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert!(!partial_path(&path).exists(), "the temporary file is gone");
        with_umask(0o777, || write_atomically(&path, b"again", 0o644)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"again");
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn a_failed_atomic_write_leaves_the_old_file_and_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails after the data was written.
        let path = dir.path().join("busy");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        assert!(write_atomically(&path, b"new", 0o600).is_err());
        assert!(path.join("inside").exists());
        assert!(!partial_path(&path).exists());
    }

    #[test]
    fn commit_file_renames_a_finished_file_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("disk.img.partial");
        let path = dir.path().join("disk.img");
        std::fs::write(&tmp, "data").unwrap();
        commit_file(&tmp, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        assert!(!tmp.exists());
        assert!(commit_file(&tmp, &path).is_err(), "nothing left to commit");
    }

    #[test]
    fn directories_get_their_mode_exactly_and_existing_ones_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert!(with_umask(0o000, || create_dir_with_mode(&deep, 0o700)).unwrap());
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
        }
        // umask 0777 would make mkdir's mode 0000; the chmod after it restores 0710.
        let grouped = dir.path().join("g");
        assert!(with_umask(0o777, || create_dir_with_mode(&grouped, 0o710)).unwrap());
        assert_eq!(mode(&grouped), 0o710);
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!create_dir_with_mode(&deep, 0o700).unwrap());
        assert_eq!(mode(&deep), 0o755, "an existing directory keeps its mode");
        ensure_private_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700, "a private directory is narrowed");
    }
}
