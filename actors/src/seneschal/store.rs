//! The shares of each VM, kept across boots in `STATE/shares/<vm>.json`, and how a kept share
//! is opened again at the next boot: as the VM's owner, never with crosd's privileges.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use cros_hypervisor::fsutil::write_atomically;
use cros_messages::seneschal::ShareInfo;
use serde::{Deserialize, Serialize};

/// A list of a few shares; anything bigger is not ours.
const MAX_STORE: u64 = 256 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    shares: Vec<StoredShare>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredShare {
    name: String,
    path: String,
    writable: bool,
}

/// `STATE/shares/<vm>.json`.
pub fn path(state_dir: &Path, vm: &str) -> PathBuf {
    state_dir.join("shares").join(format!("{vm}.json"))
}

/// The shares kept for a VM; none when there is no (readable) record.
pub fn load(file: &Path) -> Vec<ShareInfo> {
    let read = || -> std::io::Result<Stored> {
        let meta = std::fs::symlink_metadata(file)?;
        if !meta.is_file() || meta.len() > MAX_STORE {
            return Err(std::io::Error::other("not a shares record"));
        }
        Ok(serde_json::from_slice(&std::fs::read(file)?)?)
    };
    match read() {
        Ok(s) => s
            .shares
            .into_iter()
            .map(|s| ShareInfo {
                name: s.name,
                path: s.path,
                writable: s.writable,
            })
            .collect(),
        Err(e) => {
            if file.exists() {
                tracing::warn!(file = %file.display(), error = %e, "ignoring a bad shares record");
            }
            Vec::new()
        }
    }
}

/// Records `shares` (all of them, written whole and renamed into place).
pub fn save(file: &Path, shares: &[ShareInfo]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let stored = Stored {
        shares: shares
            .iter()
            .map(|s| StoredShare {
                name: s.name.clone(),
                path: s.path.clone(),
                writable: s.writable,
            })
            .collect(),
    };
    write_atomically(file, &serde_json::to_vec_pretty(&stored)?, 0o600)
}

/// Opens directory `path` as user `uid`/`gid` would (O_PATH): on a thread of its own whose
/// filesystem ids alone are changed (raw setgroups/setfsgid/setfsuid act on the calling thread
/// only, unlike glibc's wrappers), so the open has exactly that user's access and the rest of
/// crosd keeps its own.
pub fn open_dir_as(path: &Path, uid: u32, gid: u32) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: raw credential calls on this thread alone, with valid arguments; the
            // thread ends right after the open.
            unsafe {
                if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::syscall(libc::SYS_setfsgid, gid);
                libc::syscall(libc::SYS_setfsuid, uid);
                // setfsuid reports no error: check that it took.
                if libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 != uid {
                    return Err(std::io::Error::from_raw_os_error(libc::EPERM));
                }
                let fd = libc::open(
                    c.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(OwnedFd::from_raw_fd(fd))
            }
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the opening thread panicked")))
    })
}

/// The name a folder gets under /mnt/shared: its last component, with anything but
/// `[A-Za-z0-9._ -]` replaced by `_`, at most 64 bytes, made unique among `taken` with `-2`,
/// `-3`, ….
pub fn share_name(path: &str, taken: &[&str]) -> String {
    let base = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._ -".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '.') {
        name = "share".into();
    }
    let mut candidate = name.clone();
    let mut n = 2;
    while taken.contains(&candidate.as_str()) {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_unique() {
        assert_eq!(share_name("/home/u/Downloads", &[]), "Downloads");
        assert_eq!(share_name("/home/u/Downloads/", &[]), "Downloads");
        assert_eq!(share_name("/", &[]), "share");
        assert_eq!(share_name("/x/..", &[]), "share");
        assert_eq!(share_name("/x/a\nb$c", &[]), "a_b_c");
        assert_eq!(
            share_name("/y/Downloads", &["Downloads", "Downloads-2"]),
            "Downloads-3"
        );
        assert!(share_name(&format!("/{}", "x".repeat(300)), &[]).len() <= 64);
    }

    #[test]
    fn shares_round_trip_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "termina");
        assert!(load(&file).is_empty());
        let shares = vec![ShareInfo {
            name: "Downloads".into(),
            path: "/home/u/Downloads".into(),
            writable: true,
        }];
        save(&file, &shares).unwrap();
        assert_eq!(load(&file), shares);
        std::fs::write(&file, b"{nope").unwrap();
        assert!(load(&file).is_empty());
    }

    #[test]
    fn a_folder_is_opened_with_the_users_access() {
        if !nix::unistd::geteuid().is_root() {
            return; // needs root to take another user's ids
        }
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        let inner = private.join("inner");
        std::fs::create_dir(&inner).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(open_dir_as(&inner, 0, 0).is_ok(), "root may");
        let e = open_dir_as(&inner, 4321, 4321).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        // And the daemon's own threads keep root's access.
        assert!(std::fs::read_dir(&private).is_ok());
    }
}
