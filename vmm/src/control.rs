//! The VMM's control socket (`crosvm run --socket CTRL`): a Unix socket (mode 0600, bound
//! under a 0177 umask whatever the caller's, so no other user can connect) speaking
//! crosd's framing (Hello handshake, then [`Envelope`]s with [`CrosvmRequest`] bodies), so
//! `crosvm stop|pause|resume|status CTRL`, concierge and `crosmsg` drive the VMM the same way.
//! The server thread only parses and forwards: the VMM's event loop carries each request out
//! and answers through a channel.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cros_messages::crosvm::{CrosvmReply, CrosvmRequest};
use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, read_message, write_message};
use cros_messages::{Addr, Body, CrosError, Envelope, FrameError};
use vmm_sys_util::eventfd::EventFd;

use crate::event_channel::EventSender;
use crate::thread::{self, ThreadSpec};

/// The VMM's address on the control socket.
pub fn vmm_addr() -> Addr {
    Addr::host("crosvm")
}

/// A request from the control socket, with where its answer goes.
pub struct ControlRequest {
    pub request: CrosvmRequest,
    pub reply: Sender<Result<CrosvmReply, CrosError>>,
}

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot listen on control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket protocol error")]
    Frame(#[from] FrameError),
    #[error("the VMM answered: {0}")]
    Refused(CrosError),
    #[error("the VMM answered with an unexpected message: {0}")]
    Unexpected(String),
    #[error("control socket")]
    Io(#[from] std::io::Error),
    #[error("cannot tell which process serves control socket {path}")]
    PeerProcess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM (pid {pid}) accepted the stop but was still running {waited:?} later")]
    StillRunning { pid: u32, waited: Duration },
}

/// The listening control socket and its thread.
pub struct ControlServer {
    path: PathBuf,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// Serializes umask changes: the umask is the process's, not the thread's.
static UMASK: Mutex<()> = Mutex::new(());

/// Binds `path` with mode 0600 whatever the caller's umask: the mode is set at bind(), so
/// there is no moment at which another user could connect. For every socket the VMM listens on
/// (the control socket, the hybrid vsock socket).
pub(crate) fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let _serial: MutexGuard<'_, ()> = UMASK.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the caller's mask.
    unsafe { libc::umask(old) };
    listener
}

impl ControlServer {
    /// Listens on `path` (a stale socket there is replaced; any other file is an error) and
    /// forwards each request to `requests`, on the thread `spec`.
    pub fn start(
        path: &Path,
        requests: EventSender<ControlRequest>,
        spec: ThreadSpec,
    ) -> Result<Self, ControlError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket(path.to_owned()));
            }
            let _ = std::fs::remove_file(path);
        }
        let bind = |source| ControlError::Bind {
            path: path.to_owned(),
            source,
        };
        let listener = bind_private(path).map_err(bind)?;
        let stop = EventFd::new(0).map_err(bind)?;
        let stop_evt = stop.try_clone().map_err(bind)?;
        let thread = thread::spawn(spec, |_| {}, move || serve(&listener, &stop_evt, &requests))
            .map_err(bind)?;
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, stop: &EventFd, requests: &EventSender<ControlRequest>) {
    while thread::wait_readable(listener.as_raw_fd(), stop) {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        // One client at a time: requests are short, and the VMM carries them out in order.
        if let Err(e) = serve_client(&mut stream, requests) {
            tracing::debug!("control client: {e}");
        }
    }
}

fn serve_client(
    stream: &mut UnixStream,
    requests: &EventSender<ControlRequest>,
) -> Result<(), ControlError> {
    handshake(stream, &vmm_addr())?;
    let mut next_id = 1;
    loop {
        let envelope: Envelope = match read_message(stream, MAX_CONTROL_FRAME) {
            Ok(e) => e,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let body = match &envelope.body {
            Body::Crosvm(request) => {
                let (tx, rx) = mpsc::channel();
                let sent = requests.send(ControlRequest {
                    request: request.clone(),
                    reply: tx,
                });
                match sent.then(|| rx.recv().ok()).flatten() {
                    Some(Ok(reply)) => Body::CrosvmReply(reply),
                    Some(Err(e)) => Body::Error(e),
                    None => Body::Error(CrosError::internal("the VMM is shutting down")),
                }
            }
            other => Body::Error(CrosError::invalid(format!(
                "the VMM's control socket takes Crosvm requests, not {}",
                other.type_name()
            ))),
        };
        write_message(stream, &envelope.reply(next_id, body), MAX_CONTROL_FRAME)?;
        stream.flush()?;
        next_id += 1;
    }
}

/// Sends one request to the VMM listening on `path` and returns its reply.
pub fn send_request(path: &Path, request: CrosvmRequest) -> Result<CrosvmReply, ControlError> {
    let mut stream = connect(path)?;
    request_on(&mut stream, request)
}

/// Asks the VMM on `path` to stop and waits, up to `timeout`, until its process has exited.
/// The VMM answers the request at once and then gives the guest its stop timeout to power
/// off (`crosvm run --stop-timeout`), so `timeout` should be longer than that.
pub fn stop_and_wait(path: &Path, timeout: Duration) -> Result<(), ControlError> {
    let mut stream = connect(path)?;
    let peer = |source| ControlError::PeerProcess {
        path: path.to_owned(),
        source,
    };
    let pid = peer_pid(&stream).map_err(peer)?;
    // Opened before the request, while the VMM is certainly alive: a pidfd names this
    // process even if its pid is reused after it exits.
    let exited = (pid != std::process::id())
        .then(|| PidFd::open(pid))
        .transpose()
        .map_err(peer)?;
    request_on(&mut stream, CrosvmRequest::Stop {})?;
    drop(stream);
    if let Some(exited) = exited {
        let start = Instant::now();
        if !exited.wait(timeout).map_err(peer)? {
            return Err(ControlError::StillRunning {
                pid,
                waited: start.elapsed(),
            });
        }
    }
    Ok(())
}

fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_owned(),
        source,
    })
}

/// The pid of the process at the other end of `stream` (SO_PEERCRED).
fn peer_pid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(cred.pid).map_err(|_| std::io::Error::other("no peer process"))
}

/// A process descriptor (pidfd_open): readable once the process has exited.
struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    fn open(pid: u32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just created and is owned by nobody else.
        Ok(Self(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(fd as std::os::fd::RawFd)
        }))
    }

    /// Waits up to `timeout` for the process to exit; true when it has.
    fn wait(&self, timeout: Duration) -> std::io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            match unsafe { libc::poll(&mut fd, 1, ms) } {
                n if n > 0 => return Ok(true),
                0 if left.is_zero() => return Ok(false),
                0 => {}
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

fn request_on(
    stream: &mut UnixStream,
    request: CrosvmRequest,
) -> Result<CrosvmReply, ControlError> {
    let me = Addr::client(u64::from(std::process::id()));
    handshake(stream, &me)?;
    let envelope = Envelope::new(
        1,
        u64::from(std::process::id()),
        me,
        vmm_addr(),
        Body::Crosvm(request),
    );
    write_message(stream, &envelope, MAX_CONTROL_FRAME)?;
    stream.flush()?;
    let reply: Envelope = read_message(stream, MAX_CONTROL_FRAME)?;
    match reply.body {
        Body::CrosvmReply(r) => Ok(r),
        Body::Error(e) => Err(ControlError::Refused(e)),
        other => Err(ControlError::Unexpected(other.type_name())),
    }
}
