//! One vsh session: the setup handshake, then relaying between the client stream and the child
//! until the child exits (→ `Exit{code}`) or the client goes away or misbehaves (→ hang up).
//!
//! A single thread multiplexes everything with poll(2): the client stream, the child's stdio
//! (non-blocking) and a pidfd for the child's exit. Client frames are only read while no stdin
//! bytes wait for the child, so a child that stops reading pushes back on the client instead of
//! growing a buffer here.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use cros_messages::FrameError;
use cros_messages::framing::{read_message, write_message};
use cros_messages::vsh::{
    ConnectionStatus, GuestMessage, HostMessage, MAX_DATA, MAX_VSH_FRAME, SetupConnectionRequest,
    SetupConnectionResponse, VshSignal,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::ServerConfig;
use super::pty::{self, DEFAULT_COLS, DEFAULT_ROWS, MAX_WINDOW_DIM};
use super::spawn::{self, ChildIo, Launch, Spawned};

/// How long a hung-up child gets to exit after SIGHUP before the group is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// Poll interval for the child's exit where the kernel has no pidfd_open (before 5.3).
const EXIT_POLL_FALLBACK: Duration = Duration::from_millis(20);
/// Longest user name accepted (useradd's limit is 32; leave room).
const MAX_USER_LEN: usize = 256;

/// Names one session in log lines.
#[derive(Debug, Clone)]
pub struct SessionTag {
    pub id: u64,
    pub peer: String,
}

impl std::fmt::Display for SessionTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session {} ({})", self.id, self.peer)
    }
}

fn log(tag: &SessionTag, msg: impl std::fmt::Display) {
    eprintln!("vshd: {tag}: {msg}");
}

/// Runs one session on a connected stream to the end. Never panics on anything the peer sends.
pub fn run<S: Read + Write + AsFd>(mut stream: S, config: &ServerConfig, tag: &SessionTag) {
    let mut reader = DeadlineReader::new(&mut stream, config.frame_timeout);
    let req: SetupConnectionRequest = match read_message(&mut reader, MAX_VSH_FRAME) {
        Ok(req) => req,
        Err(e) => {
            log(tag, format_args!("bad setup request, closing: {e}"));
            return;
        }
    };
    let spawned = match validate(&req, config)
        .and_then(|(account, launch)| spawn::spawn(&account, &launch).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(description) => {
            log(tag, format_args!("setup refused: {description}"));
            let resp = SetupConnectionResponse {
                status: ConnectionStatus::Failed,
                description,
                pid: 0,
            };
            let _ = write_message(&mut stream, &resp, MAX_VSH_FRAME);
            return;
        }
    };
    let pid = spawned.child.id();
    let description = match &spawned.io {
        ChildIo::Pty { slave_path, .. } => format!("running on {slave_path}"),
        ChildIo::Pipes { .. } => "running with pipes".to_string(),
    };
    log(
        tag,
        format_args!(
            "user '{}' argv {:?}: pid {pid}, {description}",
            if req.user.is_empty() {
                &config.default_user
            } else {
                &req.user
            },
            req.argv
        ),
    );
    let resp = SetupConnectionResponse {
        status: ConnectionStatus::Ready,
        description,
        pid,
    };
    let mut relay = match Relay::new(stream, spawned, tag.clone(), config.frame_timeout) {
        Ok(r) => r,
        Err((mut child, e)) => {
            log(tag, format_args!("cannot set up relay: {e}"));
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
    };
    if let Err(e) = write_message(&mut relay.stream, &resp, MAX_VSH_FRAME) {
        relay.hang_up(format_args!("cannot send setup response: {e}"));
        return;
    }
    relay.run();
}

/// Checks every field of the request; the error is the FAILED description the client shows.
fn validate(
    req: &SetupConnectionRequest,
    config: &ServerConfig,
) -> Result<(super::passwd::Account, Launch), String> {
    if req.target != config.target {
        return Err(format!(
            "this vshd serves target '{}', not '{}'",
            config.target, req.target
        ));
    }
    let user = if req.user.is_empty() {
        config.default_user.as_str()
    } else {
        req.user.as_str()
    };
    if user.len() > MAX_USER_LEN || user.contains([':', '\0', '\n']) {
        return Err(format!("invalid user name {user:?}"));
    }
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err("argument contains a NUL byte".to_string());
    }
    if req.argv.first().is_some_and(|a| a.is_empty()) {
        return Err("empty command name".to_string());
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(format!("invalid environment variable {k:?}"));
        }
    }
    if req.cwd.contains('\0') {
        return Err("working directory contains a NUL byte".to_string());
    }
    let pty = if req.nopty {
        None
    } else {
        let (rows, cols) = (req.window_rows, req.window_cols);
        if rows > MAX_WINDOW_DIM || cols > MAX_WINDOW_DIM {
            return Err(format!(
                "window size {rows}x{cols} exceeds {MAX_WINDOW_DIM}x{MAX_WINDOW_DIM}"
            ));
        }
        Some((
            if rows == 0 { DEFAULT_ROWS } else { rows },
            if cols == 0 { DEFAULT_COLS } else { cols },
        ))
    };
    let account = config
        .accounts
        .lookup(user)
        .map_err(|e| format!("cannot start a session: {e}"))?;
    let mut env = req.env.clone();
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".to_string(), "dumb".to_string()));
    }
    Ok((
        account,
        Launch {
            argv: req.argv.clone(),
            env,
            cwd: req.cwd.clone(),
            pty,
        },
    ))
}

/// Checks one client frame after setup; the error is why the session hangs up.
fn check_client_message(msg: &HostMessage) -> Result<(), String> {
    match msg {
        HostMessage::Stdin(data) if data.len() > MAX_DATA => Err(format!(
            "stdin data of {} bytes exceeds the {MAX_DATA}-byte limit",
            data.len()
        )),
        &HostMessage::Resize { rows, cols }
            if rows == 0 || cols == 0 || rows > MAX_WINDOW_DIM || cols > MAX_WINDOW_DIM =>
        {
            Err(format!(
                "window size {rows}x{cols} outside 1..={MAX_WINDOW_DIM}"
            ))
        }
        _ => Ok(()),
    }
}

/// Everything a session reads from its client, without starting anything (for the fuzzer, as
/// a session would spawn the command): the setup request decoded and validated (the account
/// lookup included), then each following client frame decoded and checked, up to the first
/// bad one. Returns how many client frames passed.
#[doc(hidden)]
pub fn fuzz_client_input(mut input: &[u8], config: &ServerConfig) -> Result<usize, String> {
    let req: SetupConnectionRequest =
        read_message(&mut input, MAX_VSH_FRAME).map_err(|e| e.to_string())?;
    validate(&req, config)?;
    let mut frames = 0;
    loop {
        match read_message::<HostMessage>(&mut input, MAX_VSH_FRAME) {
            Ok(msg) => check_client_message(&msg)?,
            Err(FrameError::Closed) => return Ok(frames),
            Err(e) => return Err(e.to_string()),
        }
        frames += 1;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OutKind {
    Stdout,
    Stderr,
}

struct Output {
    fd: OwnedFd,
    kind: OutKind,
    open: bool,
}

enum Pumped {
    Data,
    WouldBlock,
    Eof,
}

/// Why the relay stops without a child exit.
enum Abort {
    ClientGone,
    BadFrame(String),
    ClientWrite(FrameError),
}

struct Relay<S> {
    stream: S,
    child: Child,
    /// Readable once the child exits; `None` on kernels without pidfd_open.
    pidfd: Option<OwnedFd>,
    /// Where stdin data goes (the pty master or the stdin pipe); `None` once closed.
    input: Option<OwnedFd>,
    pending: Vec<u8>,
    /// Pipes: close `input` once `pending` is written (the client sent stdin EOF).
    close_input_when_flushed: bool,
    outputs: Vec<Output>,
    /// The pty master, for resizes, the EOF character and the foreground process group.
    master: Option<OwnedFd>,
    tag: SessionTag,
    frame_timeout: Duration,
}

/// Reads from a blocking stream, failing with `TimedOut` once `deadline` passes: each read
/// first polls the fd for what time is left.
struct DeadlineReader<'a, S> {
    inner: &'a mut S,
    deadline: Instant,
}

impl<'a, S: Read + AsFd> DeadlineReader<'a, S> {
    fn new(inner: &'a mut S, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Instant::now() + timeout,
        }
    }
}

impl<S: Read + AsFd> Read for DeadlineReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.inner.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd for the duration of the call.
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stalled in the middle of a frame",
                    ));
                }
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                _ => return self.inner.read(buf),
            }
        }
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => cros_messages::vsh::NO_EXIT_STATUS,
    }
}

impl<S: Read + Write + AsFd> Relay<S> {
    fn new(
        stream: S,
        spawned: Spawned,
        tag: SessionTag,
        frame_timeout: Duration,
    ) -> Result<Self, (Child, io::Error)> {
        let Spawned { child, io } = spawned;
        let pidfd = pidfd_open(child.id());
        let built = match io {
            ChildIo::Pty { master, .. } => master.try_clone().and_then(|input| {
                let ctl = master.try_clone()?;
                Ok((
                    Some(input),
                    vec![Output {
                        fd: master,
                        kind: OutKind::Stdout,
                        open: true,
                    }],
                    Some(ctl),
                ))
            }),
            ChildIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => Ok((
                Some(stdin),
                vec![
                    Output {
                        fd: stdout,
                        kind: OutKind::Stdout,
                        open: true,
                    },
                    Output {
                        fd: stderr,
                        kind: OutKind::Stderr,
                        open: true,
                    },
                ],
                None,
            )),
        };
        let (input, outputs, master) = match built {
            Ok(b) => b,
            Err(e) => return Err((child, e)),
        };
        Ok(Self {
            stream,
            child,
            pidfd,
            input,
            pending: Vec::new(),
            close_input_when_flushed: false,
            outputs,
            master,
            tag,
            frame_timeout,
        })
    }

    fn send(&mut self, msg: &GuestMessage) -> Result<(), Abort> {
        write_message(&mut self.stream, msg, MAX_VSH_FRAME).map_err(Abort::ClientWrite)?;
        self.stream
            .flush()
            .map_err(|e| Abort::ClientWrite(e.into()))
    }

    fn run(mut self) {
        loop {
            match self.step() {
                Ok(Some(status)) => return self.finish(status),
                Ok(None) => {}
                Err(Abort::ClientGone) => return self.hang_up("client closed the connection"),
                Err(Abort::BadFrame(why)) => {
                    return self.hang_up(format_args!("bad frame from client, closing: {why}"));
                }
                Err(Abort::ClientWrite(e)) => {
                    return self.hang_up(format_args!("cannot write to client: {e}"));
                }
            }
        }
    }

    /// One poll round. `Some(status)` once the child has exited.
    fn step(&mut self) -> Result<Option<ExitStatus>, Abort> {
        #[derive(Clone, Copy)]
        enum Role {
            Client,
            Input,
            Output(usize),
            Exit,
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(5);
        let mut roles = Vec::with_capacity(5);
        let mut add = |fd: RawFd, events: libc::c_short, role: Role| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            roles.push(role);
        };
        if self.pending.is_empty() {
            add(self.stream.as_fd().as_raw_fd(), libc::POLLIN, Role::Client);
        } else if let Some(input) = &self.input {
            add(input.as_raw_fd(), libc::POLLOUT, Role::Input);
        }
        for (i, out) in self.outputs.iter().enumerate().filter(|(_, o)| o.open) {
            add(out.fd.as_raw_fd(), libc::POLLIN, Role::Output(i));
        }
        if let Some(pidfd) = &self.pidfd {
            add(pidfd.as_raw_fd(), libc::POLLIN, Role::Exit);
        }
        let timeout = if self.pidfd.is_some() {
            -1
        } else {
            EXIT_POLL_FALLBACK.as_millis() as libc::c_int
        };
        // SAFETY: fds is a valid array of fds.len() pollfd structs for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log(&self.tag, format_args!("poll failed: {e}"));
                std::thread::sleep(EXIT_POLL_FALLBACK);
            }
            return Ok(None);
        }
        let mut exited = self.pidfd.is_none();
        for (pfd, role) in fds.iter().zip(roles) {
            if pfd.revents == 0 {
                continue;
            }
            match role {
                // Output first, so nothing the child wrote is lost behind its exit.
                Role::Output(i) => {
                    self.pump(i)?;
                }
                Role::Input => self.flush_input(),
                Role::Client => self.handle_client()?,
                Role::Exit => exited = true,
            }
        }
        if exited {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(Some(status)),
                Ok(None) => {}
                Err(e) => {
                    log(&self.tag, format_args!("waiting for the child failed: {e}"));
                    return Ok(Some(ExitStatus::from_raw(0x7f00)));
                }
            }
        }
        Ok(None)
    }

    /// Reads once from output `i` and forwards what came.
    fn pump(&mut self, i: usize) -> Result<Pumped, Abort> {
        let Some(out) = self.outputs.get(i) else {
            return Ok(Pumped::Eof);
        };
        let kind = out.kind;
        let mut buf = [0u8; MAX_DATA];
        let got = nix::unistd::read(out.fd.as_raw_fd(), &mut buf);
        let data = match got {
            Ok(0) => None,
            Ok(n) => Some(buf[..n].to_vec()),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                return Ok(Pumped::WouldBlock);
            }
            // EIO: every slave fd is closed (the pty's way of saying EOF).
            Err(nix::errno::Errno::EIO) => None,
            Err(e) => {
                log(&self.tag, format_args!("reading child output failed: {e}"));
                None
            }
        };
        let msg = |d: Vec<u8>| match kind {
            OutKind::Stdout => GuestMessage::Stdout(d),
            OutKind::Stderr => GuestMessage::Stderr(d),
        };
        match data {
            Some(d) => {
                self.send(&msg(d))?;
                Ok(Pumped::Data)
            }
            None => {
                if let Some(out) = self.outputs.get_mut(i) {
                    out.open = false;
                }
                self.send(&msg(Vec::new()))?;
                Ok(Pumped::Eof)
            }
        }
    }

    fn flush_input(&mut self) {
        if let Some(input) = &self.input {
            while !self.pending.is_empty() {
                match nix::unistd::write(input, &self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(nix::errno::Errno::EAGAIN) => return,
                    Err(e) => {
                        // The child closed its stdin (EPIPE) or the pty is gone (EIO): what
                        // it will not read is dropped, as a local pipe would.
                        log(&self.tag, format_args!("child stdin closed: {e}"));
                        self.pending.clear();
                        self.input = None;
                        return;
                    }
                }
            }
        }
        if self.close_input_when_flushed && self.pending.is_empty() {
            self.input = None;
        }
    }

    fn handle_client(&mut self) -> Result<(), Abort> {
        // The frame has started (poll said readable); the rest must follow promptly.
        let mut reader = DeadlineReader::new(&mut self.stream, self.frame_timeout);
        let msg: HostMessage = match read_message(&mut reader, MAX_VSH_FRAME) {
            Ok(m) => m,
            Err(FrameError::Closed) => return Err(Abort::ClientGone),
            Err(e) => return Err(Abort::BadFrame(e.to_string())),
        };
        check_client_message(&msg).map_err(Abort::BadFrame)?;
        match msg {
            HostMessage::Stdin(data) if data.is_empty() => match &self.master {
                // A pty has no half-close: EOF is the terminal's EOF character, as if typed.
                Some(master) => {
                    let eof = pty::eof_char(master);
                    if self.input.is_some() {
                        self.pending.push(eof);
                    }
                }
                None => self.close_input_when_flushed = true,
            },
            HostMessage::Stdin(data) => {
                if self.input.is_some() && !self.close_input_when_flushed {
                    self.pending.extend_from_slice(&data);
                }
            }
            HostMessage::Resize { rows, cols } => {
                if let Some(master) = &self.master
                    && let Err(e) = pty::set_window_size(master, rows, cols)
                {
                    log(
                        &self.tag,
                        format_args!("resize to {rows}x{cols} failed: {e}"),
                    );
                }
            }
            HostMessage::Signal(sig) => self.signal(sig),
        }
        self.flush_input();
        Ok(())
    }

    /// Delivers a client signal to the job in the foreground: the pty's foreground process
    /// group when there is one (a shell's running command), else the child's own group.
    fn signal(&self, sig: VshSignal) {
        let signal = match sig {
            VshSignal::Hup => Signal::SIGHUP,
            VshSignal::Int => Signal::SIGINT,
            VshSignal::Quit => Signal::SIGQUIT,
            VshSignal::Term => Signal::SIGTERM,
        };
        let child_group = Pid::from_raw(self.child.id() as libc::pid_t);
        let group = self
            .master
            .as_ref()
            .and_then(|m| nix::unistd::tcgetpgrp(m).ok())
            .filter(|p| p.as_raw() > 0)
            .unwrap_or(child_group);
        if let Err(e) = killpg(group, signal) {
            log(
                &self.tag,
                format_args!("{signal} to group {group} failed: {e}"),
            );
        }
    }

    /// The child exited: forward what it left in its outputs, the EOFs, and its status.
    fn finish(mut self, status: ExitStatus) {
        let code = exit_code(status);
        let result = (|| {
            for i in 0..self.outputs.len() {
                while self.outputs[i].open {
                    if let Pumped::WouldBlock = self.pump(i)? {
                        // The child is gone; what is not there now came from a grandchild
                        // still holding the output, which does not keep the session open.
                        break;
                    }
                }
                if self.outputs[i].open {
                    self.outputs[i].open = false;
                    let kind = self.outputs[i].kind;
                    self.send(&match kind {
                        OutKind::Stdout => GuestMessage::Stdout(Vec::new()),
                        OutKind::Stderr => GuestMessage::Stderr(Vec::new()),
                    })?;
                }
            }
            self.send(&GuestMessage::Exit { code })
        })();
        match result {
            Ok(()) => log(&self.tag, format_args!("child exited with {code}")),
            Err(_) => log(
                &self.tag,
                format_args!("child exited with {code}; client gone before the status"),
            ),
        }
    }

    /// Ends a session whose client is gone or misbehaved: SIGHUP to the child's group (as a
    /// terminal hangup would), then SIGKILL if it is still there after a grace period.
    fn hang_up(mut self, why: impl std::fmt::Display) {
        log(&self.tag, format_args!("{why}; hanging up the child"));
        let group = Pid::from_raw(self.child.id() as libc::pid_t);
        let _ = killpg(group, Signal::SIGHUP);
        let _ = killpg(group, Signal::SIGCONT);
        self.input = None;
        self.master = None;
        self.outputs.clear();
        let deadline = Instant::now() + HANGUP_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(EXIT_POLL_FALLBACK),
            }
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::framing::encode_frame;

    fn setup(user: &str) -> Vec<u8> {
        encode_frame(&SetupConnectionRequest {
            target: cros_messages::vsh::VM_SHELL.into(),
            user: user.into(),
            env: vec![],
            argv: vec!["true".into()],
            cwd: "/".into(),
            window_rows: 24,
            window_cols: 80,
            nopty: false,
        })
        .unwrap()
    }

    #[test]
    fn fuzz_entry_checks_what_a_session_checks_and_starts_nothing() {
        // root is found even without a passwd file, as in a minimal guest.
        let config = ServerConfig::default();
        let mut input = setup("root");
        input.extend(encode_frame(&HostMessage::Stdin(b"ls\n".to_vec())).unwrap());
        input.extend(encode_frame(&HostMessage::Signal(VshSignal::Int)).unwrap());
        assert_eq!(fuzz_client_input(&input, &config), Ok(2));

        input.extend(encode_frame(&HostMessage::Resize { rows: 0, cols: 80 }).unwrap());
        let err = fuzz_client_input(&input, &config).unwrap_err();
        assert!(err.contains("window size 0x80"), "{err}");

        let err = fuzz_client_input(&setup("no:such"), &config).unwrap_err();
        assert!(err.contains("invalid user name"), "{err}");
        let err = fuzz_client_input(&[3, 0, 0, 0, 0xff], &config).unwrap_err();
        assert!(!err.is_empty());
    }
}
