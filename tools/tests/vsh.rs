//! The vsh client library and the `vsh` binary against a real vshd server (cros-guest's vshd,
//! serving on a Unix socket in a temp dir from a thread of this test process): real sockets,
//! real ptys, real child processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use cros_guest::vshd::{self, ServerConfig};
use cros_messages::vsh::{SetupConnectionRequest, VM_SHELL, VshSignal};
use cros_tools::vsh_client::{
    self, DEFAULT_SETUP_TIMEOUT, Endpoint, SessionExit, VshError, VshSession,
};

struct Server {
    dir: tempfile::TempDir,
    sock: PathBuf,
}

/// Starts a vshd on a Unix socket; it serves until the test process exits.
fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vshd.sock");
    let listener = vshd::listener::bind_unix(&sock).unwrap();
    std::thread::spawn(move || vshd::serve(listener, Arc::new(ServerConfig::default())));
    Server { dir, sock }
}

impl Server {
    fn spec(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    fn vsh(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vsh"));
        c.args(["--vm_name", "termina", "--socket", &self.spec(), "--"])
            .args(cmd);
        c
    }

    fn session(&self, argv: &[&str], nopty: bool) -> VshSession {
        let stream = Endpoint::parse(&self.spec(), 0)
            .connect(DEFAULT_SETUP_TIMEOUT)
            .unwrap();
        VshSession::start(stream, &request(argv, nopty), DEFAULT_SETUP_TIMEOUT).unwrap()
    }
}

fn request(argv: &[&str], nopty: bool) -> SetupConnectionRequest {
    SetupConnectionRequest {
        target: VM_SHELL.to_string(),
        user: String::new(),
        env: vec![("TERM".to_string(), "dumb".to_string())],
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: String::new(),
        window_rows: 24,
        window_cols: 80,
        nopty,
    }
}

fn run_collect(session: VshSession) -> (Vec<u8>, Vec<u8>, SessionExit) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = session.relay_output(&mut out, &mut err).unwrap();
    (out, err, exit)
}

#[test]
fn vsh_uname_matches_the_host() {
    let server = start_server();
    let out = server
        .vsh(&["uname", "-r"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let host = Command::new("uname").arg("-r").output().unwrap().stdout;
    assert_eq!(out.stdout, host, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn vsh_exits_with_the_remote_code() {
    let server = start_server();
    let status = server
        .vsh(&["sh", "-c", "exit 7"])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
}

#[test]
fn vsh_pipes_stdin_and_keeps_stderr_apart() {
    let server = start_server();
    let mut child = server
        .vsh(&["sh", "-c", "cat; echo done >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: Vec<u8> = (0..50_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut stdin = child.stdin.take().unwrap();
    let sent = input.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.stdout == input,
        "stdout differs ({} bytes)",
        out.stdout.len()
    );
    assert_eq!(out.stderr, b"done\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn vsh_forced_pty_gets_a_terminal() {
    let server = start_server();
    let out = Command::new(env!("CARGO_BIN_EXE_vsh"))
        .args([
            "-t",
            "--vm_name",
            "termina",
            "--socket",
            &server.spec(),
            "--",
            "tty",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("/dev/pts/"), "{text}");
    assert_eq!(out.status.code(), Some(0));
}

/// SIGINT and SIGTERM sent to the local vsh reach the remote command, which dies of them.
#[test]
fn vsh_forwards_signals_to_the_remote_command() {
    let server = start_server();
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut child = server
            .vsh(&["sh", "-c", "echo ready; exec sleep 100"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
        assert_eq!(child.wait().unwrap().code(), Some(code), "signal {sig}");
    }
}

/// Without --socket, vsh asks crosd's concierge for the VM: no crosd is a clear error naming
/// the socket, and a real crosd that has no such VM says so by name.
#[test]
fn vsh_resolves_the_vm_through_crosd() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-crosd.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_vsh"))
        .args(["--vm_name", "termina", "--", "true"])
        .env("CROSD_SOCKET", &missing)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("termina") && err.contains("crosd is not running"),
        "{err}"
    );
    assert!(err.contains("no-crosd.sock"), "{err}");
    assert_eq!(out.status.code(), Some(123));

    let run_dir = dir.path().join("run");
    let mut crosd = Command::new(env!("CARGO_BIN_EXE_crosd"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(&run_dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = run_dir.join("crosd.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(std::time::Instant::now() < deadline, "crosd never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vsh"))
        .args(["--vm_name", "termina", "--crosd-socket"])
        .arg(&sock)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = crosd.kill();
    let _ = crosd.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no VM named \"termina\""), "{err}");
    assert_eq!(out.status.code(), Some(123));
}

#[test]
fn vsh_reports_setup_failure_with_the_user() {
    let server = start_server();
    let out = Command::new(env!("CARGO_BIN_EXE_vsh"))
        .args([
            "--vm_name",
            "t",
            "--user",
            "mallory",
            "--socket",
            &server.spec(),
        ])
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mallory"), "{err}");
    assert_eq!(out.status.code(), Some(123));
}

#[test]
fn library_separates_streams_and_returns_the_code() {
    let server = start_server();
    let session = server.session(&["sh", "-c", "echo out; echo err >&2; exit 9"], true);
    let (out, err, exit) = run_collect(session);
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!(
        exit,
        SessionExit {
            code: 9,
            reported: true
        }
    );
}

#[test]
fn library_stdin_forwarding_reaches_cat() {
    let server = start_server();
    let session = server.session(&["cat"], true);
    let input = b"line one\nline two\n".repeat(1000);
    session
        .sender()
        .forward_stdin(std::io::Cursor::new(input.clone()));
    let (out, _, exit) = run_collect(session);
    assert!(out == input);
    assert_eq!(exit.code, 0);
}

#[test]
fn library_pty_resize_and_tty() {
    let server = start_server();
    let session = server.session(&["sh", "-c", "tty; read x; stty size"], false);
    let sender = session.sender();
    // Resize first, then release the `read`: stty must see the new size.
    sender.resize(50, 140).unwrap();
    sender.stdin(b"\n").unwrap();
    let (out, _, exit) = run_collect(session);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("50 140"), "{text}");
    assert_eq!(exit.code, 0);
}

#[test]
fn library_signal_ends_sleep() {
    let server = start_server();
    let session = server.session(&["sleep", "100"], false);
    session.sender().signal(VshSignal::Term).unwrap();
    let (_, _, exit) = run_collect(session);
    assert_eq!(exit.code, 143);
}

#[test]
fn library_setup_failure_names_the_user() {
    let server = start_server();
    let stream = UnixStream::connect(&server.sock).unwrap();
    let mut req = request(&["true"], true);
    req.user = "mallory".to_string();
    match VshSession::start(stream, &req, DEFAULT_SETUP_TIMEOUT) {
        Err(VshError::SetupFailed(d)) => assert!(d.contains("mallory"), "{d}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("session for an unknown user started"),
    }
}

/// A stand-in for a VM's hybrid-vsock socket: this test runs no VM, so the host side of the
/// vsock device is faked by a Unix listener that speaks the `CONNECT <port>` / `OK <n>` line
/// protocol and then splices the stream to the real vshd's socket when the port is `accept`.
fn fake_hybrid_vsock(dir: &Path, vshd_sock: PathBuf, accept: u32, reply: &'static str) -> PathBuf {
    let path = dir.join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let vshd_sock = vshd_sock.clone();
            std::thread::spawn(move || {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while conn.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                if line != format!("CONNECT {accept}").as_bytes() {
                    let _ = conn.write_all(reply.as_bytes());
                    return;
                }
                let guest = UnixStream::connect(&vshd_sock).unwrap();
                conn.write_all(b"OK 1073741824\n").unwrap();
                let (mut c2, mut g2) = (conn.try_clone().unwrap(), guest.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut g2);
                    let _ = g2.shutdown(std::net::Shutdown::Write);
                });
                let (mut g, mut c) = (guest, conn);
                let _ = std::io::copy(&mut g, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Both);
                let _ = up.join();
            });
        }
    });
    path
}

#[test]
fn hybrid_vsock_connector_joins_the_guest_port() {
    let server = start_server();
    let uds = fake_hybrid_vsock(server.dir.path(), server.sock.clone(), 9001, "");
    // Through the library.
    let stream = vsh_client::connect_hybrid_vsock(&uds, 9001, DEFAULT_SETUP_TIMEOUT).unwrap();
    let session = VshSession::start(
        stream,
        &request(&["echo", "via vsock"], true),
        DEFAULT_SETUP_TIMEOUT,
    )
    .unwrap();
    let (out, _, exit) = run_collect(session);
    assert_eq!(out, b"via vsock\n");
    assert_eq!(exit.code, 0);
    // And through the binary, with a plain socket path (the hybrid-vsock form).
    let out = Command::new(env!("CARGO_BIN_EXE_vsh"))
        .args([
            "--vm_name",
            "t",
            "--socket",
            uds.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "exit 4",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hybrid_vsock_refusal_is_a_clear_error() {
    let server = start_server();
    let uds = fake_hybrid_vsock(server.dir.path(), server.sock.clone(), 9001, "NO\n");
    match vsh_client::connect_hybrid_vsock(&uds, 7000, DEFAULT_SETUP_TIMEOUT) {
        Err(e @ VshError::VsockRefused { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("7000") && msg.contains("\"NO\""), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("refused port connected"),
    }
    let missing = server.dir.path().join("missing.sock");
    let err = vsh_client::connect_hybrid_vsock(&missing, 9001, DEFAULT_SETUP_TIMEOUT)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.sock"), "{err}");
}

/// A local terminal for the `vsh` binary: a pty whose slave is vsh's stdin/stdout/stderr and
/// controlling terminal, so vsh runs interactive exactly as it would in a real terminal.
struct LocalTerminal {
    master: std::fs::File,
    slave: std::fs::File,
}

impl LocalTerminal {
    fn open(rows: u16, cols: u16) -> Self {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).unwrap();
        let master = std::fs::File::from(pty.master);
        let slave = std::fs::File::from(pty.slave);
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&master);
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Self { master, slave }
    }

    fn spawn_vsh(&self, server: &Server, cmd: &[&str]) -> std::process::Child {
        let mut c = server.vsh(cmd);
        c.stdin(self.slave.try_clone().unwrap())
            .stdout(self.slave.try_clone().unwrap())
            .stderr(self.slave.try_clone().unwrap());
        // SAFETY: only system calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c.spawn().unwrap()
    }

    fn termios(&self) -> nix::sys::termios::Termios {
        nix::sys::termios::tcgetattr(&self.slave).unwrap()
    }

    fn write(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Reads from the terminal until `needle` shows up; `poke` runs between reads that found
    /// nothing new (to re-trigger output that depends on an asynchronous event).
    fn read_until(&mut self, needle: &str, mut poke: impl FnMut(&mut Self)) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "terminal never showed {needle:?}: {}",
                        String::from_utf8_lossy(&seen)
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    poke(self);
                }
            }
            let text = String::from_utf8_lossy(&seen).into_owned();
            if text.contains(needle) {
                return text;
            }
        }
    }
}

fn raw(t: &nix::sys::termios::Termios) -> bool {
    use nix::sys::termios::LocalFlags;
    !t.local_flags.contains(LocalFlags::ICANON) && !t.local_flags.contains(LocalFlags::ISIG)
}

/// Interactive vsh: the local terminal goes raw for the session and comes back afterwards,
/// the remote pty starts with the local window size, and a local resize (SIGWINCH) reaches it.
#[test]
fn vsh_interactive_raw_mode_and_window_resize() {
    let server = start_server();
    let mut term = LocalTerminal::open(30, 100);
    assert!(!raw(&term.termios()));
    let mut child = term.spawn_vsh(&server, &["sh", "-c", "while read x; do stty size; done"]);
    term.write(b"\n");
    term.read_until("30 100", |t| t.write(b"\n"));
    assert!(
        raw(&term.termios()),
        "local terminal not raw during the session"
    );

    let ws = libc::winsize {
        ws_row: 45,
        ws_col: 150,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct we own; the kernel SIGWINCHes vsh.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&term.master),
            libc::TIOCSWINSZ,
            &ws,
        )
    };
    assert_eq!(rc, 0);
    // The resize travels on its own (signal thread); ask again until the new size shows.
    term.read_until("45 150", |t| t.write(b"\n"));

    // ^D at the start of a line: the remote `read` sees EOF and the loop ends.
    term.write(b"\x04");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!raw(&term.termios()), "local terminal left raw");
}

/// ^C typed in an interactive session is a byte for the remote terminal, which interrupts the
/// remote command (not vsh).
#[test]
fn vsh_interactive_ctrl_c_interrupts_the_remote_command() {
    let server = start_server();
    let mut term = LocalTerminal::open(24, 80);
    let mut child = term.spawn_vsh(&server, &["sh", "-c", "echo ready; exec sleep 100"]);
    term.read_until("ready", |_| {});
    // Wait for raw mode so the byte is not turned into a local SIGINT.
    while !raw(&term.termios()) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    term.write(b"\x03");
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(!raw(&term.termios()), "local terminal left raw");
}

/// A hostile or broken guest, played by a scripted server (a real vshd never misbehaves this
/// way, and the guest is untrusted): it answers READY, then sends `then` and hangs up.
/// How a scripted guest ends its connection.
enum HangUp {
    /// Half-closes and reads whatever the client still sends: the client sees a clean end.
    Clean,
    /// Waits for the client to send something and closes with it unread: the client's next
    /// read after the script fails with ECONNRESET.
    Reset,
}

fn scripted_guest(dir: &Path, then: Vec<cros_messages::vsh::GuestMessage>) -> PathBuf {
    scripted_guest_ending(dir, then, HangUp::Clean)
}

fn scripted_guest_ending(
    dir: &Path,
    then: Vec<cros_messages::vsh::GuestMessage>,
    hang_up: HangUp,
) -> PathBuf {
    use cros_messages::framing::{read_message, write_message};
    use cros_messages::vsh::{
        ConnectionStatus, MAX_VSH_FRAME, SetupConnectionRequest, SetupConnectionResponse,
    };
    let path = dir.join("scripted.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _: SetupConnectionRequest = read_message(&mut s, MAX_VSH_FRAME).unwrap();
        let ready = SetupConnectionResponse {
            status: ConnectionStatus::Ready,
            description: String::new(),
            pid: 1,
        };
        write_message(&mut s, &ready, MAX_VSH_FRAME).unwrap();
        for msg in then {
            // The frame limit is the server's own check; bypass it to send what a hostile
            // guest could.
            write_message(&mut s, &msg, usize::MAX).unwrap();
        }
        match hang_up {
            HangUp::Clean => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            }
            HangUp::Reset => {
                let mut first = [0u8; 1];
                let _ = s.read_exact(&mut first);
            }
        }
    });
    path
}

#[test]
fn oversized_guest_data_is_an_error_not_output() {
    use cros_messages::vsh::{GuestMessage, MAX_DATA};
    let dir = tempfile::tempdir().unwrap();
    let path = scripted_guest(
        dir.path(),
        vec![
            GuestMessage::Stdout(b"fine\n".to_vec()),
            GuestMessage::Stdout(vec![b'x'; MAX_DATA + 1]),
        ],
    );
    let stream = UnixStream::connect(&path).unwrap();
    let session = VshSession::start(stream, &request(&["x"], true), DEFAULT_SETUP_TIMEOUT).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    match session.relay_output(&mut out, &mut err) {
        Err(VshError::OversizedData { len }) => assert_eq!(len, MAX_DATA + 1),
        other => panic!("expected OversizedData, got {other:?}"),
    }
    assert_eq!(out, b"fine\n");
}

#[test]
fn guest_hanging_up_without_status_gives_123() {
    use cros_messages::vsh::GuestMessage;
    let dir = tempfile::tempdir().unwrap();
    let path = scripted_guest(dir.path(), vec![GuestMessage::Stdout(b"partial".to_vec())]);
    let out = Command::new(env!("CARGO_BIN_EXE_vsh"))
        .args(["--vm_name", "t", "--socket"])
        .arg(format!("unix:{}", path.display()))
        .args(["--", "anything"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"partial");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without an exit status"), "{err}");
    assert_eq!(out.status.code(), Some(123));
}

#[test]
fn guest_resetting_the_connection_is_a_hang_up_too() {
    use cros_messages::vsh::GuestMessage;
    let dir = tempfile::tempdir().unwrap();
    let path = scripted_guest_ending(
        dir.path(),
        vec![GuestMessage::Stdout(b"partial".to_vec())],
        HangUp::Reset,
    );
    let stream = UnixStream::connect(&path).unwrap();
    let session = VshSession::start(stream, &request(&["x"], true), DEFAULT_SETUP_TIMEOUT).unwrap();
    // Input the guest leaves unread when it closes: the close becomes a reset.
    session.sender().stdin(b"never read").unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = session.relay_output(&mut out, &mut err).unwrap();
    assert_eq!((exit.code, exit.reported), (123, false));
    assert_eq!(out, b"partial");
}
