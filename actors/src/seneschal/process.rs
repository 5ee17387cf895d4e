//! One VM's server process as seneschal (in crosd, as root) runs it: its directory, its
//! listening socket, its control channel and the bind mounts of the shared folders.
//!
//! `RUN/seneschal/<handle>/` holds `shares/`, a small tmpfs made a shared mount, and `root/`,
//! where the server mounts its own root (see [`super::nine_s`]). The server's namespace is a
//! slave of crosd's, so a folder mounted into `shares/<name>` here appears as
//! `/shares/<name>` there, and an unmount here removes it there. A folder is mounted from the
//! descriptor the client passed (`open_tree` of that descriptor, made read-only, nosuid and
//! nodev with `mount_setattr` before `move_mount` puts it in place, so the server never sees a
//! writable instant of a read-only share): crosd never resolves a user's path.
//!
//! Nothing here ever removes a directory recursively: a directory that may hold a user's
//! folder mounted on it is unmounted, then removed with rmdir, which fails rather than
//! descending into a folder still mounted.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cros_messages::CrosError;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::nine_s::{CONTROL_FD, LISTEN_FD};

/// How long the server may take to confine itself and answer a control line.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// After the control socket closes, how long the server has to exit before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// What a server process is started with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `crosd-9s` binary.
    pub bin: PathBuf,
    /// `RUN/seneschal/<handle>`.
    pub dir: PathBuf,
    /// `<vm run dir>/vsock.sock_<port>`.
    pub socket: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Host id → guest id, for getattr.
    pub uid_map: Vec<(u32, u32)>,
    pub gid_map: Vec<(u32, u32)>,
    /// Where the server's stderr goes.
    pub log: PathBuf,
}

pub struct ServerProcess {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Child,
    control: UnixStream,
    replies: BufReader<UnixStream>,
}

fn internal(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CrosError {
    let what = what.to_string();
    move |e| CrosError::internal(format!("{what}: {e}"))
}

fn nix_internal(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> CrosError {
    let what = what.to_string();
    move |e| CrosError::internal(format!("{what}: {e}"))
}

impl ServerProcess {
    /// Prepares the directory and socket and starts the server; returns once it has confined
    /// itself (its `ready` line).
    pub fn start(launch: &Launch) -> Result<Self, CrosError> {
        teardown(&launch.dir);
        let shares = launch.dir.join("shares");
        for d in [&launch.dir, &shares, &launch.dir.join("root")] {
            std::fs::create_dir_all(d).map_err(internal(format!("create {}", d.display())))?;
        }
        std::fs::set_permissions(&launch.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(internal(format!("chmod {}", launch.dir.display())))?;
        mount(
            Some("tmpfs"),
            &shares,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=64k,mode=0755"),
        )
        .map_err(nix_internal(format!(
            "mount a tmpfs on {}",
            shares.display()
        )))?;
        let started = (|| {
            mount(
                None::<&str>,
                &shares,
                None::<&str>,
                MsFlags::MS_SHARED,
                None::<&str>,
            )
            .map_err(nix_internal(format!("make {} shared", shares.display())))?;
            let _ = std::fs::remove_file(&launch.socket);
            let listener = UnixListener::bind(&launch.socket)
                .map_err(internal(format!("listen on {}", launch.socket.display())))?;
            std::fs::set_permissions(&launch.socket, std::fs::Permissions::from_mode(0o600))
                .map_err(internal(format!("chmod {}", launch.socket.display())))?;
            let (control, theirs) =
                UnixStream::pair().map_err(internal("create the control socket"))?;
            let child = spawn(launch, listener.into(), theirs.into())?;
            control
                .set_read_timeout(Some(CONTROL_TIMEOUT))
                .map_err(internal("control socket timeout"))?;
            let replies = BufReader::new(control.try_clone().map_err(internal("control socket"))?);
            let mut server = ServerProcess {
                dir: launch.dir.clone(),
                socket: launch.socket.clone(),
                child,
                control,
                replies,
            };
            match server.reply() {
                Ok(line) if line == "ready" => Ok(server),
                Ok(line) => Err(server.failed(&launch.log, &format!("it said {line:?}"))),
                Err(e) => Err(server.failed(&launch.log, &e.message)),
            }
        })();
        if started.is_err() {
            teardown(&launch.dir);
            let _ = std::fs::remove_file(&launch.socket);
        }
        started
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops a server that failed to start and says why, with its log's last lines.
    fn failed(&mut self, log: &Path, why: &str) -> CrosError {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        CrosError::unavailable(format!(
            "the 9P server did not start ({why}); its log {}: {}",
            log.display(),
            tail.join(" | ")
        ))
    }

    fn reply(&mut self) -> Result<String, CrosError> {
        let mut line = String::new();
        match self.replies.read_line(&mut line) {
            Ok(0) => Err(CrosError::unavailable("the 9P server exited")),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(CrosError::unavailable(format!(
                "the 9P server did not answer: {e}"
            ))),
        }
    }

    fn command(&mut self, line: &str) -> Result<(), CrosError> {
        self.control
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| CrosError::unavailable(format!("the 9P server is gone: {e}")))?;
        match self.reply()?.as_str() {
            "ok" => Ok(()),
            other => Err(CrosError::internal(format!(
                "the 9P server answered {line:?} with {other:?}"
            ))),
        }
    }

    /// Mounts the folder `folder` (the client's descriptor) at `shares/<name>` and tells the
    /// server it is shared.
    pub fn share(&mut self, name: &str, folder: &OwnedFd, writable: bool) -> Result<(), CrosError> {
        let target = self.dir.join("shares").join(name);
        std::fs::create_dir(&target).map_err(internal(format!("create {}", target.display())))?;
        if let Err(e) = mount_folder(folder, &target, writable) {
            let _ = std::fs::remove_dir(&target);
            return Err(e);
        }
        if let Err(e) = self.command(&format!("share {name}")) {
            unmount(&target);
            return Err(e);
        }
        Ok(())
    }

    /// Withdraws share `name`: the server answers EIO on every fid in it from now on, and the
    /// folder is unmounted (lazily: what the server still has open is freed when it lets go).
    pub fn unshare(&mut self, name: &str) -> Result<(), CrosError> {
        let told = self.command(&format!("unshare {name}"));
        unmount(&self.dir.join("shares").join(name));
        told
    }

    /// Stops the server: see the [`Drop`] impl.
    pub fn stop(self) {}
}

/// A server is stopped with its handle (StopServer, or a seneschal that goes away): it exits
/// when its control socket closes (SIGKILL after a grace), then its directory and socket are
/// removed.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        let deadline = std::time::Instant::now() + EXIT_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        teardown(&self.dir);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts `crosd-9s` with the listener at fd 3 and the control socket at fd 4.
fn spawn(launch: &Launch, listener: OwnedFd, control: OwnedFd) -> Result<Child, CrosError> {
    // Out of the way of 3 and 4, close-on-exec until dup2 places them in the child (a VMM
    // spawned at the same moment by another thread inherits neither).
    let high = |fd: &OwnedFd| -> Result<OwnedFd, CrosError> {
        // SAFETY: F_DUPFD_CLOEXEC of an open descriptor; the result is owned below.
        let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        if n < 0 {
            return Err(CrosError::internal(format!(
                "dup a socket: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: n is a new descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    };
    let (listener, control) = (high(&listener)?, high(&control)?);
    let (l, c) = (listener.as_raw_fd(), control.as_raw_fd());
    let log = std::fs::File::create(&launch.log)
        .map_err(internal(format!("create {}", launch.log.display())))?;
    let mut cmd = Command::new(&launch.bin);
    cmd.arg("--dir")
        .arg(&launch.dir)
        .args(["--uid", &launch.uid.to_string()])
        .args(["--gid", &launch.gid.to_string()])
        .args(["--accept-uid", &nix::unistd::geteuid().as_raw().to_string()]);
    for (h, g) in &launch.uid_map {
        cmd.args(["--map-uid", &format!("{h}:{g}")]);
    }
    for (h, g) in &launch.gid_map {
        cmd.args(["--map-gid", &format!("{h}:{g}")]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    // SAFETY: dup2 is async-signal-safe; the descriptors stay open in the parent until spawn
    // returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(l, LISTEN_FD) < 0 || libc::dup2(c, CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(internal(format!("start {}", launch.bin.display())))
}

// The new mount API (Linux 5.12+), not wrapped by nix.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount at `folder`, nosuid and nodev, read-only unless `writable`,
/// moved onto `target`.
fn mount_folder(folder: &OwnedFd, target: &Path, writable: bool) -> Result<(), CrosError> {
    let empty = c"";
    // SAFETY: open_tree with a valid descriptor and an empty path; the result is owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            folder.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(CrosError::internal(format!(
            "clone the shared folder's mount: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a new descriptor nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if !writable {
        set |= MOUNT_ATTR_RDONLY;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr on our detached tree with a valid struct and its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(CrosError::internal(format!(
            "make the shared folder's mount {}nosuid,nodev: {}",
            if writable { "" } else { "read-only," },
            std::io::Error::last_os_error()
        )));
    }
    let target_c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| CrosError::internal(format!("bad path {}", target.display())))?;
    // SAFETY: move_mount of our detached tree onto a directory path we created.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(CrosError::internal(format!(
            "mount the shared folder on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Lazily unmounts `dir` and removes it (rmdir only).
fn unmount(dir: &Path) {
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount a share"),
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a share's mount point");
    }
}

/// Unmounts and removes a server directory left by a server that stopped or a crosd that died:
/// every share, the shares tmpfs, the root mount point, then the directory, each with rmdir.
pub fn teardown(dir: &Path) {
    let shares = dir.join("shares");
    if let Ok(entries) = std::fs::read_dir(&shares) {
        for e in entries.flatten() {
            unmount(&e.path());
        }
    }
    unmount(&shares);
    unmount(&dir.join("root"));
    let _ = std::fs::remove_dir(dir);
}

/// Every server directory under `root` (`RUN/seneschal`), for cleaning up at start.
pub fn teardown_all(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            teardown(&e.path());
        }
    }
}
