//! crosd's control socket: creating it safely and deciding who may connect.

use nix::unistd::{Gid, Group, Uid, User};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another crosd is already serving {} (it accepted a connection); stop it first", .0.display())]
    AlreadyRunning(PathBuf),
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

/// Creates the control socket at `path`: refuses when a live crosd answers there, replaces a
/// stale socket file, never replaces anything that is not a socket. The socket is 0600, or 0660
/// owned by `group` when one is given; the umask keeps it private from the moment it exists.
pub fn bind_control_socket(
    path: &Path,
    group: Option<&SocketGroup>,
) -> Result<UnixListener, SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::AlreadyRunning(path.to_path_buf())),
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
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create socket directory", dir))?;
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
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_private_and_a_live_one_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/crosd.sock");
        let listener = bind_control_socket(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind_control_socket(&path, None).unwrap_err();
        assert!(matches!(err, SocketError::AlreadyRunning(_)), "{err}");
        drop(listener);
        // Now nobody accepts: the file is stale and gets replaced.
        let _again = bind_control_socket(&path, None).unwrap();
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
