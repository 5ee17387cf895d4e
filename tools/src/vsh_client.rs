//! The vsh client side of the vsh protocol (REFERENCE.md "vsh / vshd"): reaching a vshd,
//! the setup handshake, and running the session against local stdio or any reader/writers.
//!
//! Used by the `vsh` binary and by `vmc` (which opens a shell after `vmc start`).
//!
//! The stream is a Unix socket either way: a vshd listening on a Unix socket (tests), or a VM's
//! hybrid-vsock socket, where `CONNECT <port>\n` / `OK <hostport>\n` first joins the stream to
//! the guest's vsock listener (the Firecracker convention, ARCHITECTURE.md).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cros_messages::FrameError;
use cros_messages::framing::{read_message, write_message};
use cros_messages::vsh::{
    ConnectionStatus, GuestMessage, HostMessage, MAX_DATA, MAX_VSH_FRAME, NO_EXIT_STATUS,
    SetupConnectionRequest, SetupConnectionResponse, VshSignal,
};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::termios::{self, SetArg, Termios};

/// How long connecting and the setup handshake may take before it is a timeout, not a hang.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(10);
use cros_messages::hybrid_vsock::{MAX_REPLY_LINE, connect_request, parse_connect_reply};

#[derive(Debug, thiserror::Error)]
pub enum VshError {
    #[error("cannot connect to {path}: {err}")]
    Connect { path: PathBuf, err: io::Error },
    #[error(
        "{path} refused the connection to vsock port {port}: it answered {reply:?} instead of \
         \"OK <port>\" (is vshd running in the guest?)"
    )]
    VsockRefused {
        path: PathBuf,
        port: u32,
        reply: String,
    },
    #[error("connecting to vsock port {port} through {path}: {err}")]
    VsockHandshake {
        path: PathBuf,
        port: u32,
        err: io::Error,
    },
    #[error("cannot send the setup request to vshd: {0}")]
    SendSetup(FrameError),
    #[error("no valid setup response from vshd: {0}")]
    SetupResponse(FrameError),
    #[error("vshd refused the session: {0}")]
    SetupFailed(String),
    #[error("vshd sent {len} bytes of data in one message, more than the {MAX_DATA}-byte limit")]
    OversizedData { len: usize },
    #[error("connection to vshd failed: {0}")]
    Stream(FrameError),
    #[error("local i/o failed: {0}")]
    Local(io::Error),
    #[error("cannot set up the local terminal: {0}")]
    Terminal(nix::Error),
}

/// Where a vshd is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A vshd listening on a Unix socket itself (`unix:PATH`).
    Vshd(PathBuf),
    /// A VM's hybrid-vsock socket; the stream is joined to guest vsock `port`.
    HybridVsock { path: PathBuf, port: u32 },
}

impl Endpoint {
    /// `unix:PATH` names a vshd's own socket; any other path is a hybrid-vsock socket.
    pub fn parse(spec: &str, vsock_port: u32) -> Self {
        match spec.strip_prefix("unix:") {
            Some(path) => Self::Vshd(PathBuf::from(path)),
            None => Self::HybridVsock {
                path: PathBuf::from(spec),
                port: vsock_port,
            },
        }
    }

    pub fn connect(&self, timeout: Duration) -> Result<UnixStream, VshError> {
        match self {
            Self::Vshd(path) => UnixStream::connect(path).map_err(|err| VshError::Connect {
                path: path.clone(),
                err,
            }),
            Self::HybridVsock { path, port } => connect_hybrid_vsock(path, *port, timeout),
        }
    }
}

/// Connects to guest vsock `port` through the VM's hybrid-vsock Unix socket at `path`.
///
/// The reply line is read a byte at a time so nothing after it (the peer's first frame) is
/// swallowed.
pub fn connect_hybrid_vsock(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, VshError> {
    let mut stream = UnixStream::connect(path).map_err(|err| VshError::Connect {
        path: path.to_path_buf(),
        err,
    })?;
    let handshake_err = |err| VshError::VsockHandshake {
        path: path.to_path_buf(),
        port,
        err,
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(handshake_err)?;
    stream
        .write_all(connect_request(port).as_bytes())
        .map_err(handshake_err)?;
    let mut line = Vec::with_capacity(MAX_REPLY_LINE);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_REPLY_LINE {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A peer that hangs up instead of answering refused us, like an empty reply.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(handshake_err(e)),
        }
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    if parse_connect_reply(&reply).is_none() {
        return Err(VshError::VsockRefused {
            path: path.to_path_buf(),
            port,
            reply,
        });
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(handshake_err)?;
    Ok(stream)
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExit {
    /// The remote exit code, or [`NO_EXIT_STATUS`] when none came.
    pub code: i32,
    /// Whether vshd reported the code (false: the connection ended first).
    pub reported: bool,
}

/// A set-up session: the child runs in the guest; output is read with [`VshSession::relay_output`].
pub struct VshSession {
    stream: UnixStream,
    sender: VshSender,
    /// The session's process id in the guest.
    pub pid: u32,
    /// vshd's description (e.g. the pty's path).
    pub description: String,
}

impl VshSession {
    /// Sends the setup request and waits (at most `timeout`) for READY.
    pub fn start(
        mut stream: UnixStream,
        req: &SetupConnectionRequest,
        timeout: Duration,
    ) -> Result<Self, VshError> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(VshError::Local)?;
        write_message(&mut stream, req, MAX_VSH_FRAME).map_err(VshError::SendSetup)?;
        let resp: SetupConnectionResponse =
            read_message(&mut stream, MAX_VSH_FRAME).map_err(VshError::SetupResponse)?;
        if resp.status != ConnectionStatus::Ready {
            return Err(VshError::SetupFailed(resp.description));
        }
        stream.set_read_timeout(None).map_err(VshError::Local)?;
        let writer = stream.try_clone().map_err(VshError::Local)?;
        Ok(Self {
            stream,
            sender: VshSender {
                stream: Arc::new(Mutex::new(writer)),
            },
            pid: resp.pid,
            description: resp.description,
        })
    }

    /// A handle for sending stdin, resizes and signals from any thread.
    pub fn sender(&self) -> VshSender {
        self.sender.clone()
    }

    /// Writes the remote output to `stdout`/`stderr` until the exit status (or the end of the
    /// connection) and returns it. Both writers are flushed after every message.
    pub fn relay_output(
        mut self,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<SessionExit, VshError> {
        loop {
            let msg: GuestMessage = match read_message(&mut self.stream, MAX_VSH_FRAME) {
                Ok(m) => m,
                Err(e) if is_hang_up(&e) => {
                    return Ok(SessionExit {
                        code: NO_EXIT_STATUS,
                        reported: false,
                    });
                }
                Err(e) => return Err(VshError::Stream(e)),
            };
            let (out, data): (&mut dyn Write, Vec<u8>) = match msg {
                GuestMessage::Stdout(d) => (&mut *stdout, d),
                GuestMessage::Stderr(d) => (&mut *stderr, d),
                GuestMessage::Exit { code } => {
                    return Ok(SessionExit {
                        code,
                        reported: true,
                    });
                }
            };
            if data.len() > MAX_DATA {
                return Err(VshError::OversizedData { len: data.len() });
            }
            // Empty data is that stream's EOF; nothing to write.
            if !data.is_empty() {
                out.write_all(&data)
                    .and_then(|()| out.flush())
                    .map_err(VshError::Local)?;
            }
        }
    }
}

/// The guest side went away: a clean end, or a reset (a peer that closes with our input still
/// unread resets the connection instead of ending it).
fn is_hang_up(e: &FrameError) -> bool {
    match e {
        FrameError::Closed => true,
        FrameError::Io(io) => io.kind() == io::ErrorKind::ConnectionReset,
        _ => false,
    }
}

/// Sends client messages; clones share one stream, one whole frame at a time.
#[derive(Clone)]
pub struct VshSender {
    stream: Arc<Mutex<UnixStream>>,
}

impl VshSender {
    fn send(&self, msg: &HostMessage) -> Result<(), VshError> {
        // A poisoned lock only means another sender panicked mid-call; the stream is still ours.
        let mut stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        write_message(&mut *stream, msg, MAX_VSH_FRAME).map_err(VshError::Stream)
    }

    /// Sends stdin bytes, split into messages of at most [`MAX_DATA`]. Empty `data` is EOF.
    pub fn stdin(&self, data: &[u8]) -> Result<(), VshError> {
        if data.is_empty() {
            return self.send(&HostMessage::Stdin(Vec::new()));
        }
        for chunk in data.chunks(MAX_DATA) {
            self.send(&HostMessage::Stdin(chunk.to_vec()))?;
        }
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), VshError> {
        self.send(&HostMessage::Resize { rows, cols })
    }

    pub fn signal(&self, sig: VshSignal) -> Result<(), VshError> {
        self.send(&HostMessage::Signal(sig))
    }

    /// Copies `input` to the remote stdin on a new thread, then sends EOF. The thread ends at
    /// EOF or when the session is gone; it may stay blocked in `read` until then.
    pub fn forward_stdin(&self, mut input: impl Read + Send + 'static) -> JoinHandle<()> {
        let sender = self.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_DATA];
            loop {
                match input.read(&mut buf) {
                    Ok(0) => {
                        let _ = sender.stdin(&[]);
                        return;
                    }
                    Ok(n) => {
                        if sender.stdin(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A local read error ends our input like EOF does.
                    Err(_) => {
                        let _ = sender.stdin(&[]);
                        return;
                    }
                }
            }
        })
    }
}

/// The local terminal's window size, if `fd` is a terminal.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize struct that we own.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The local terminal in raw mode; the saved settings come back on drop, on every exit path.
pub struct RawTerminal {
    fd: BorrowedFd<'static>,
    saved: Termios,
}

impl RawTerminal {
    pub fn enter(fd: BorrowedFd<'static>) -> Result<Self, VshError> {
        let saved = termios::tcgetattr(fd).map_err(VshError::Terminal)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw).map_err(VshError::Terminal)?;
        Ok(Self { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// The signals vsh forwards: the terminal-generated and polite-termination ones, plus SIGWINCH.
fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGWINCH,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set
}

/// Forwards local signals while it lives: SIGINT/TERM/HUP/QUIT to the remote process group,
/// SIGWINCH as a resize (read from `tty`, when there is one). The signals are blocked in the
/// creating thread (and so in threads it starts later) and taken by one thread with sigwait;
/// the previous mask comes back on drop.
pub struct SignalForwarder {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    old_mask: SigSet,
}

impl SignalForwarder {
    pub fn start(sender: VshSender, tty: Option<BorrowedFd<'static>>) -> Result<Self, VshError> {
        let set = forwarded_signals();
        let mut old_mask = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old_mask))
            .map_err(VshError::Terminal)?;
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            loop {
                let Ok(sig) = set.wait() else { continue };
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let sent = match sig {
                    Signal::SIGWINCH => match tty.and_then(window_size) {
                        Some((rows, cols)) => sender.resize(rows, cols),
                        None => Ok(()),
                    },
                    Signal::SIGINT => sender.signal(VshSignal::Int),
                    Signal::SIGTERM => sender.signal(VshSignal::Term),
                    Signal::SIGHUP => sender.signal(VshSignal::Hup),
                    Signal::SIGQUIT => sender.signal(VshSignal::Quit),
                    _ => Ok(()),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            done,
            thread: Some(thread),
            old_mask,
        })
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            use std::os::unix::thread::JoinHandleExt;
            // SIGWINCH is harmless to deliver and wakes the sigwait so the thread can see `done`.
            // SAFETY: the thread is joinable (not joined yet), so its pthread_t is valid.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), libc::SIGWINCH) };
            let _ = thread.join();
        }
        let _ =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}

/// What the user asked for, before it becomes a [`SetupConnectionRequest`].
#[derive(Debug, Clone, Default)]
pub struct ShellRequest {
    /// Container name, or empty for the VM itself.
    pub target_container: String,
    /// Empty: vshd's default user.
    pub user: String,
    pub cwd: String,
    /// Empty: a login shell.
    pub argv: Vec<String>,
    /// `Some(true)`: always a pty; `Some(false)`: never; `None`: a pty when stdin is a terminal.
    pub pty: Option<bool>,
}

/// Runs a session on this process's stdin/stdout/stderr, the way the `vsh` binary does:
/// interactive (pty, raw local terminal, window size forwarded) when stdin is a terminal,
/// pipes otherwise. Returns the remote exit code.
pub fn run_on_local_terminal(
    stream: UnixStream,
    shell: &ShellRequest,
) -> Result<SessionExit, VshError> {
    // SAFETY: fd 0 is this process's stdin and is never closed while the process runs.
    let stdin_fd: BorrowedFd<'static> = unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
    let local_tty = nix::unistd::isatty(stdin_fd.as_raw_fd()).unwrap_or(false);
    let use_pty = shell.pty.unwrap_or(local_tty);
    let (rows, cols) = if local_tty {
        window_size(stdin_fd).unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| {
        if use_pty {
            "xterm-256color".to_string()
        } else {
            "dumb".to_string()
        }
    });
    let req = SetupConnectionRequest {
        target: if shell.target_container.is_empty() {
            cros_messages::vsh::VM_SHELL.to_string()
        } else {
            shell.target_container.clone()
        },
        user: shell.user.clone(),
        env: vec![("TERM".to_string(), term)],
        argv: shell.argv.clone(),
        cwd: shell.cwd.clone(),
        window_rows: rows,
        window_cols: cols,
        nopty: !use_pty,
    };
    let session = VshSession::start(stream, &req, DEFAULT_SETUP_TIMEOUT)?;
    let sender = session.sender();
    // Order matters: signals are blocked before the stdin thread starts so it inherits the
    // mask, and the raw terminal is restored (drop order is reverse) before the mask.
    let _signals = SignalForwarder::start(sender.clone(), local_tty.then_some(stdin_fd))?;
    let _raw = if local_tty && use_pty {
        Some(RawTerminal::enter(stdin_fd)?)
    } else {
        None
    };
    sender.forward_stdin(io::stdin());
    session.relay_output(&mut io::stdout().lock(), &mut io::stderr().lock())
}
