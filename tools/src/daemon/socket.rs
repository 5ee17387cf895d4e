//! crosd's control socket: creating it safely and deciding who may connect.

use super::lock::{HeldLock, LockError};
use cros_hypervisor::fsutil::create_dir_with_mode;
use nix::unistd::{Gid, Group, Uid, User};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another crosd is already serving {} ({holder}); stop it first", path.display())]
    AlreadyRunning { path: PathBuf, holder: String },
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("unknown group {0:?} for --socket-group")]
    UnknownGroup(String),
    #[error("cannot look up group {name:?}: {source}")]
    GroupLookup { name: String, source: nix::Error },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The group `--socket-group` names, resolved once at start-up.
#[derive(Debug, Clone)]
pub struct SocketGroup {
    pub name: String,
    pub gid: u32,
}

impl SocketGroup {
    pub fn lookup(name: &str) -> Result<Self, SocketError> {
        match Group::from_name(name) {
            Ok(Some(g)) => Ok(Self {
                name: name.to_string(),
                gid: g.gid.as_raw(),
            }),
            Ok(None) => Err(SocketError::UnknownGroup(name.to_string())),
            Err(source) => Err(SocketError::GroupLookup {
                name: name.to_string(),
                source,
            }),
        }
    }
}

/// Who may talk to crosd: root, the user crosd runs as, and members of the socket group.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    pub daemon_uid: u32,
    pub group: Option<SocketGroup>,
}

impl AccessPolicy {
    pub fn new(group: Option<SocketGroup>) -> Self {
        Self {
            daemon_uid: Uid::effective().as_raw(),
            group,
        }
    }

    /// Ok, or why a peer with these credentials is refused.
    pub fn check(&self, uid: u32, gid: u32) -> Result<(), String> {
        if uid == 0 || uid == self.daemon_uid {
            return Ok(());
        }
        match &self.group {
            Some(g) if gid == g.gid || user_in_group(uid, g) => Ok(()),
            Some(g) => Err(format!(
                "uid {uid} is not root, not crosd's uid {} and not in group {}",
                self.daemon_uid, g.name
            )),
            None => Err(format!(
                "uid {uid} is not root and not crosd's uid {} (start crosd with --socket-group \
                 to let a group in)",
                self.daemon_uid
            )),
        }
    }
}

/// Supplementary membership: the group's member list names the user.
fn user_in_group(uid: u32, group: &SocketGroup) -> bool {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid.as_raw() == group.gid {
        return true;
    }
    matches!(Group::from_gid(Gid::from_raw(group.gid)), Ok(Some(g)) if g.mem.contains(&user.name))
}

/// Creates directory `dir` for the control socket when it is missing: 0700, or 0710 with group
/// `group` so that the group's members can reach the socket in it (but not list it). An
/// existing directory is left as it is.
pub fn create_socket_dir(dir: &Path, group: Option<&SocketGroup>) -> Result<(), SocketError> {
    let mode = if group.is_some() { 0o710 } else { 0o700 };
    let created =
        create_dir_with_mode(dir, mode).map_err(io_err("cannot create socket directory", dir))?;
    if let (true, Some(g)) = (created, group) {
        std::os::unix::fs::chown(dir, None, Some(g.gid))
            .map_err(io_err("cannot give the socket directory to the group", dir))?;
    }
    Ok(())
}

/// The bound control socket and the lock that makes it this crosd's.
#[derive(Debug)]
pub struct ControlSocket {
    pub listener: UnixListener,
    pub lock: HeldLock,
}

/// Creates the control socket at `path`. First takes `PATH.lock`, so that of two crosd starting
/// at once only one goes on to look at the socket file; then refuses when a live crosd answers
/// there, replaces a stale socket file, and never replaces anything that is not a socket. The
/// socket is 0600, or 0660 owned by `group` when one is given; the umask keeps it private from
/// the moment it exists.
pub fn bind_control_socket(
    path: &Path,
    group: Option<&SocketGroup>,
) -> Result<ControlSocket, SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_socket_dir(dir, group)?;
    }
    let lock = HeldLock::socket(path).map_err(|e| match e {
        LockError::Held { holder, lock, .. } => SocketError::AlreadyRunning {
            path: path.to_path_buf(),
            holder: format!("{holder} holds {}", lock.display()),
        },
        LockError::Io { lock, source } => io_err("cannot lock", &lock)(source),
    })?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            match UnixStream::connect(path) {
                // Only a process that does not take the lock (an older crosd) can be here.
                Ok(_) => {
                    return Err(SocketError::AlreadyRunning {
                        path: path.to_path_buf(),
                        holder: "it accepted a connection".into(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing stale socket left by an earlier crosd");
                    std::fs::remove_file(path)
                        .map_err(io_err("cannot remove stale socket", path))?;
                }
                Err(e) => return Err(io_err("cannot probe existing socket", path)(e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot inspect", path)(e)),
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err("cannot bind", path))?;
    let mode = match group {
        Some(g) => {
            std::os::unix::fs::chown(path, None, Some(g.gid))
                .map_err(io_err("cannot give the socket to the group", path))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot set the mode of", path))?;
    Ok(ControlSocket { listener, lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn socket_is_private_and_a_live_one_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/crosd.sock");
        let socket = bind_control_socket(&path, None).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("run")), 0o700);
        let err = bind_control_socket(&path, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SocketError::AlreadyRunning { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(socket);
        // Now nobody holds the lock or accepts: the file is stale and gets replaced.
        let _again = bind_control_socket(&path, None).unwrap();
    }

    /// A process that serves the socket without the lock (as a crosd from before the lock
    /// did) is still detected by connecting.
    #[test]
    fn a_listener_without_the_lock_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crosd.sock");
        let _old = UnixListener::bind(&path).unwrap();
        let err = bind_control_socket(&path, None).unwrap_err();
        assert!(err.to_string().contains("accepted a connection"), "{err}");
    }

    #[test]
    fn a_group_socket_directory_lets_the_group_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/crosd.sock");
        // Debian's `daemon` group (gid 1): chown to a group needs root or membership.
        let group = SocketGroup::lookup("daemon").unwrap();
        let _socket = bind_control_socket(&path, Some(&group)).unwrap();
        let run = std::fs::metadata(dir.path().join("run")).unwrap();
        assert_eq!(run.permissions().mode() & 0o777, 0o710);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&run), group.gid);
        assert_eq!(mode(&path), 0o660);
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crosd.sock");
        std::fs::write(&path, "precious").unwrap();
        let err = bind_control_socket(&path, None).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn policy_admits_root_and_self_only_without_group() {
        let p = AccessPolicy {
            daemon_uid: 1234,
            group: None,
        };
        assert!(p.check(0, 0).is_ok());
        assert!(p.check(1234, 99).is_ok());
        let why = p.check(4321, 99).unwrap_err();
        assert!(why.contains("4321"), "{why}");
        let p = AccessPolicy {
            daemon_uid: 1234,
            group: Some(SocketGroup {
                name: "crosd".into(),
                gid: 777,
            }),
        };
        assert!(p.check(4321, 777).is_ok());
        assert!(p.check(4321, 99).unwrap_err().contains("crosd"));
    }
}
