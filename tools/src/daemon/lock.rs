//! Exclusive locks that say "one crosd here": `STATE/crosd.lock` for the state directory (its
//! disks must never be booted by two daemons) and `SOCKET.lock` beside the control socket (so
//! that deciding the socket file is stale and replacing it is never done by two at once).
//!
//! flock(2) on a file that is never removed: the kernel drops the lock when the holder dies,
//! however it dies, so a lock is never stale. The holder's pid is written into the file for
//! the message the next one prints.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the state directory's lock file.
pub const STATE_LOCK_NAME: &str = "crosd.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{what} {} is in use by another crosd ({holder}; lock file {}); stop that crosd first", dir.display(), lock.display())]
    Held {
        what: &'static str,
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("cannot lock {}: {source}", lock.display())]
    Io { lock: PathBuf, source: io::Error },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct HeldLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl HeldLock {
    /// Takes the lock at `lock` without waiting. `what` and `dir` name what it protects, for
    /// the error when another process holds it.
    pub fn take(what: &'static str, dir: &Path, lock: &Path) -> Result<Self, LockError> {
        let io_err = |source| LockError::Io {
            lock: lock.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock)
            .map_err(io_err)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "pid unknown".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(LockError::Held {
                    what,
                    dir: dir.to_path_buf(),
                    lock: lock.to_path_buf(),
                    holder,
                });
            }
            Err((_, errno)) => return Err(io_err(errno.into())),
        };
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(Self {
            _file: file,
            path: lock.to_path_buf(),
        })
    }

    /// Locks state directory `state_dir` (through `STATE/crosd.lock`).
    pub fn state_dir(state_dir: &Path) -> Result<Self, LockError> {
        Self::take(
            "state directory",
            state_dir,
            &state_dir.join(STATE_LOCK_NAME),
        )
    }

    /// Locks the control socket `socket` (through `SOCKET.lock`).
    pub fn socket(socket: &Path) -> Result<Self, LockError> {
        let mut lock = socket.as_os_str().to_owned();
        lock.push(".lock");
        Self::take("control socket", socket, Path::new(&lock))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = HeldLock::state_dir(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(first.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        // A second open file description conflicts even within one process, as two crosd do.
        let err = HeldLock::state_dir(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains(&dir.path().display().to_string()),
            "{msg}"
        );
        drop(first);
        let again = HeldLock::state_dir(dir.path()).unwrap();
        assert!(again.path().ends_with(STATE_LOCK_NAME));
    }
}
