//! Starting the session's process: in a fresh pty (controlling terminal, own session) or with
//! three pipes, as the requested account.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::passwd::Account;
use super::pty;

/// PATH given to sessions, as login(1) sets it for root and users alike in the guest.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run, already validated by the session.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Empty: the account's login shell.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Empty: the account's home (or `/` when that is missing).
    pub cwd: String,
    /// `Some((rows, cols))`: run in a pty of that size; `None`: pipes.
    pub pty: Option<(u16, u16)>,
}

/// The session's ends of the child's stdio.
pub enum ChildIo {
    /// One pty master carries input and (merged) output.
    Pty { master: OwnedFd, slave_path: String },
    /// Separate pipes; stdout and stderr stay apart.
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
}

pub struct Spawned {
    pub child: Child,
    pub io: ChildIo,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("working directory '{0}' does not exist or is not a directory")]
    NoSuchDirectory(String),
    #[error("vshd runs as uid {ours} and cannot start a session as user '{user}' (uid {theirs})")]
    CannotSwitchUser {
        user: String,
        ours: u32,
        theirs: u32,
    },
    #[error("cannot allocate a pty: {0}")]
    Pty(io::Error),
    #[error("cannot set up the session's stdio: {0}")]
    Stdio(io::Error),
    #[error("cannot start '{program}' as user '{user}' in '{cwd}': {source}")]
    Exec {
        program: String,
        user: String,
        cwd: String,
        source: io::Error,
    },
    #[error("argument, variable or directory contains a NUL byte")]
    Nul,
}

/// Sets O_NONBLOCK: the session multiplexes these fds with poll and must never block on one.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts `launch` as `account`.
pub fn spawn(account: &Account, launch: &Launch) -> Result<Spawned, SpawnError> {
    let cwd = if launch.cwd.is_empty() {
        if Path::new(&account.home).is_dir() {
            account.home.clone()
        } else {
            "/".to_string()
        }
    } else {
        launch.cwd.clone()
    };
    if !Path::new(&cwd).is_dir() {
        return Err(SpawnError::NoSuchDirectory(cwd));
    }

    // Only root may become someone else; a vshd running as the requested user just runs.
    let euid = nix::unistd::geteuid().as_raw();
    let switch_user = euid == 0;
    if !switch_user && euid != account.uid {
        return Err(SpawnError::CannotSwitchUser {
            user: account.name.clone(),
            ours: euid,
            theirs: account.uid,
        });
    }

    let (program, mut cmd) = if launch.argv.is_empty() {
        let shell = &account.shell;
        let base = Path::new(shell)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sh".to_string());
        let mut cmd = Command::new(shell);
        // A leading '-' in argv[0] is how a shell learns it is a login shell.
        cmd.arg0(format!("-{base}"));
        (shell.clone(), cmd)
    } else {
        let mut cmd = Command::new(&launch.argv[0]);
        cmd.args(&launch.argv[1..]);
        (launch.argv[0].clone(), cmd)
    };

    cmd.env_clear()
        .env("HOME", &account.home)
        .env("USER", &account.name)
        .env("LOGNAME", &account.name)
        .env("SHELL", &account.shell)
        .env("PATH", DEFAULT_PATH);
    for (k, v) in &launch.env {
        cmd.env(k, v);
    }

    let pty_pair = match launch.pty {
        Some((rows, cols)) => Some(pty::open(rows, cols).map_err(SpawnError::Pty)?),
        None => None,
    };
    match &pty_pair {
        Some(pair) => {
            let dup = |f: &std::fs::File| f.try_clone().map(Stdio::from).map_err(SpawnError::Pty);
            cmd.stdin(dup(&pair.slave)?)
                .stdout(dup(&pair.slave)?)
                .stderr(dup(&pair.slave)?);
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }

    // Everything the child needs is allocated here, before fork: the closure below runs between
    // fork and exec and may only make system calls.
    let cwd_c =
        CString::new(Path::new(&cwd).as_os_str().as_bytes()).map_err(|_| SpawnError::Nul)?;
    let groups: Vec<libc::gid_t> = account.groups.clone();
    let (uid, gid) = (account.uid, account.gid);
    let with_tty = pty_pair.is_some();
    // SAFETY: the closure only calls async-signal-safe system calls on data allocated above.
    unsafe {
        cmd.pre_exec(move || {
            // A session starts with default signal handling whatever vshd inherited (run under
            // nohup, SIGHUP is ignored and an ignored signal stays ignored across exec), as
            // sshd gives its sessions: otherwise `vsh` could not hang up or interrupt the job.
            for sig in 1..libc::SIGRTMIN() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Own session and process group: signals for the session reach the whole job and
            // never vshd itself.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if with_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if switch_user
                && (libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0)
            {
                return Err(io::Error::last_os_error());
            }
            // After the switch, so the directory is entered with the user's permissions.
            if libc::chdir(cwd_c.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        program,
        user: account.name.clone(),
        cwd: cwd.clone(),
        source,
    })?;
    // The child holds its copies of the slave; ours must go, or the master never sees EOF.
    drop(cmd);

    let io = match pty_pair {
        Some(pair) => {
            drop(pair.slave);
            set_nonblocking(&pair.master).map_err(SpawnError::Pty)?;
            ChildIo::Pty {
                master: pair.master,
                slave_path: pair.slave_path,
            }
        }
        None => {
            let (Some(stdin), Some(stdout), Some(stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                // Stdio::piped() always yields all three; reaching here is a std bug.
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Stdio(io::Error::other("child pipes missing")));
            };
            let (stdin, stdout, stderr): (OwnedFd, OwnedFd, OwnedFd) =
                (stdin.into(), stdout.into(), stderr.into());
            for fd in [&stdin, &stdout, &stderr] {
                set_nonblocking(fd).map_err(SpawnError::Stdio)?;
            }
            ChildIo::Pipes {
                stdin,
                stdout,
                stderr,
            }
        }
    };
    Ok(Spawned { child, io })
}
