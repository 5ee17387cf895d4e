//! vshd end to end on the host: the real `vshd` binary serving on a Unix socket in a temp dir,
//! driven by a raw protocol client (real frames, real ptys, real child processes). The client
//! side library and the `vsh` binary are tested in tools/tests/vsh.rs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cros_messages::FrameError;
use cros_messages::framing::{read_message, write_message};
use cros_messages::vsh::{
    ConnectionStatus, GuestMessage, HostMessage, MAX_DATA, MAX_VSH_FRAME, SetupConnectionRequest,
    SetupConnectionResponse, VM_SHELL, VshSignal,
};

/// Bound on any single read, so a broken server fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

struct Vshd {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Vshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts vshd on a fresh socket with its own passwd: root with /bin/sh as login shell (so the
/// login shell's name is known) and `nobody`.
fn start_vshd() -> Vshd {
    start_vshd_with(|_| {})
}

/// vshd started the way `nohup` would: the job-control signals ignored, which children inherit.
fn start_vshd_ignoring_signals() -> Vshd {
    start_vshd_with(|cmd| {
        // SAFETY: signal() is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGQUIT] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
    })
}

fn start_vshd_with(adjust: impl FnOnce(&mut Command)) -> Vshd {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let group = dir.path().join("group");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(&group, "root:x:0:\nnogroup:x:65534:\nvideo:x:44:nobody\n").unwrap();
    let sock = dir.path().join("vshd.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vshd"));
    cmd.arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--passwd")
        .arg(&passwd)
        .arg("--group")
        .arg(&group)
        .stdin(Stdio::null());
    adjust(&mut cmd);
    let child = cmd.spawn().unwrap();
    let server = Vshd {
        child,
        sock,
        _dir: dir,
    };
    // Readiness, not a timing assertion: wait until the socket accepts.
    let deadline = Instant::now() + IO_TIMEOUT;
    while UnixStream::connect(&server.sock).is_err() {
        assert!(Instant::now() < deadline, "vshd never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

impl Vshd {
    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    fn session(&self, req: &SetupConnectionRequest) -> (UnixStream, SetupConnectionResponse) {
        let mut s = self.connect();
        write_message(&mut s, req, MAX_VSH_FRAME).unwrap();
        let resp: SetupConnectionResponse = read_message(&mut s, MAX_VSH_FRAME).unwrap();
        (s, resp)
    }

    fn ready(&self, req: &SetupConnectionRequest) -> (UnixStream, u32) {
        let (s, resp) = self.session(req);
        assert_eq!(resp.status, ConnectionStatus::Ready, "{}", resp.description);
        (s, resp.pid)
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

fn send(s: &mut UnixStream, msg: HostMessage) {
    write_message(s, &msg, MAX_VSH_FRAME).unwrap();
}

#[derive(Default, Debug)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_eof: bool,
    stderr_eof: bool,
    exit: Option<i32>,
}

/// Reads until the exit status or the end of the stream.
fn collect(s: &mut UnixStream) -> Collected {
    let mut c = Collected::default();
    loop {
        match read_message::<GuestMessage>(s, MAX_VSH_FRAME) {
            Ok(GuestMessage::Stdout(d)) if d.is_empty() => c.stdout_eof = true,
            Ok(GuestMessage::Stderr(d)) if d.is_empty() => c.stderr_eof = true,
            Ok(GuestMessage::Stdout(d)) => {
                assert!(d.len() <= MAX_DATA);
                c.stdout.extend(d)
            }
            Ok(GuestMessage::Stderr(d)) => c.stderr.extend(d),
            Ok(GuestMessage::Exit { code }) => {
                c.exit = Some(code);
                return c;
            }
            Err(FrameError::Closed) => return c,
            Err(e) => panic!("bad frame from vshd: {e}"),
        }
    }
}

/// Reads stdout until it contains `needle`; returns everything read.
fn read_until(s: &mut UnixStream, needle: &str) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        match read_message::<GuestMessage>(s, MAX_VSH_FRAME).unwrap() {
            GuestMessage::Stdout(d) | GuestMessage::Stderr(d) => out.extend(d),
            GuestMessage::Exit { code } => panic!(
                "exited {code} before printing {needle:?}: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The server closed the session: the next read is the end of the stream (no Exit).
fn assert_closed(s: &mut UnixStream) {
    loop {
        match read_message::<GuestMessage>(s, MAX_VSH_FRAME) {
            Err(FrameError::Closed) => return,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Ok(GuestMessage::Exit { code }) => panic!("got Exit {code}, expected a closed session"),
            Ok(_) => {}
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }
}

fn process_gone(pid: u32) -> bool {
    // The server reaps its children, so a gone process has no /proc entry at all.
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "session process {pid} still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exit_code_and_eofs_come_back() {
    let vshd = start_vshd();
    let (mut s, _) = vshd.ready(&request(&["sh", "-c", "exit 7"], true));
    let c = collect(&mut s);
    assert_eq!(c.exit, Some(7));
    assert!(c.stdout_eof && c.stderr_eof, "{c:?}");
}

#[test]
fn uname_matches_the_host() {
    let vshd = start_vshd();
    let (mut s, _) = vshd.ready(&request(&["uname", "-r"], true));
    let c = collect(&mut s);
    let host = Command::new("uname").arg("-r").output().unwrap().stdout;
    assert_eq!(c.stdout, host);
    assert_eq!(c.exit, Some(0));
}

#[test]
fn stdout_and_stderr_stay_apart_without_pty() {
    let vshd = start_vshd();
    let (mut s, _) = vshd.ready(&request(
        &["sh", "-c", "echo out; echo err >&2; echo out2"],
        true,
    ));
    let c = collect(&mut s);
    assert_eq!(c.stdout, b"out\nout2\n");
    assert_eq!(c.stderr, b"err\n");
    assert_eq!(c.exit, Some(0));
}

#[test]
fn all_output_arrives_before_the_exit_status() {
    let vshd = start_vshd();
    let (mut s, _) = vshd.ready(&request(&["head", "-c", "300000", "/dev/zero"], true));
    let c = collect(&mut s);
    assert_eq!(c.stdout.len(), 300_000);
    assert_eq!(c.exit, Some(0));
}

#[test]
fn stdin_through_cat_and_eof() {
    let vshd = start_vshd();
    let (mut s, _) = vshd.ready(&request(&["cat"], true));
    // More than pipe buffers hold, written from another thread while we read the echo.
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = s.try_clone().unwrap();
    let sent = input.clone();
    let t = std::thread::spawn(move || {
        for chunk in sent.chunks(MAX_DATA) {
            send(&mut writer, HostMessage::Stdin(chunk.to_vec()));
        }
        send(&mut writer, HostMessage::Stdin(Vec::new()));
    });
    let c = collect(&mut s);
    t.join().unwrap();
    assert_eq!(c.stdout.len(), input.len());
    assert!(c.stdout == input);
    assert_eq!(c.exit, Some(0));
}

#[test]
fn pty_session_has_a_tty_and_follows_resizes() {
    let vshd = start_vshd();
    let (mut s, _) = vshd.ready(&request(
        &["sh", "-c", "tty; stty size; read x; stty size"],
        false,
    ));
    let first = read_until(&mut s, "24 80");
    assert!(first.contains("/dev/pts/"), "{first}");
    send(
        &mut s,
        HostMessage::Resize {
            rows: 40,
            cols: 132,
        },
    );
    send(&mut s, HostMessage::Stdin(b"\n".to_vec()));
    let c = collect(&mut s);
    let rest = String::from_utf8_lossy(&c.stdout);
    assert!(rest.contains("40 132"), "{rest}");
    assert_eq!(c.exit, Some(0));
}

#[test]
fn pty_stdin_eof_is_the_terminal_eof() {
    let vshd = start_vshd();
    let (mut s, _) = vshd.ready(&request(&["cat"], false));
    send(&mut s, HostMessage::Stdin(b"hello\n".to_vec()));
    send(&mut s, HostMessage::Stdin(Vec::new()));
    let c = collect(&mut s);
    // The pty echoes the input and cat prints it again.
    let out = String::from_utf8_lossy(&c.stdout);
    assert_eq!(out.matches("hello").count(), 2, "{out}");
    assert_eq!(c.exit, Some(0));
}

#[test]
fn login_shell_is_a_dash_shell_in_home() {
    let vshd = start_vshd();
    let mut req = request(&[], false);
    req.cwd = "/tmp".to_string();
    let (mut s, _) = vshd.ready(&req);
    send(
        &mut s,
        HostMessage::Stdin(b"echo \"zero=$0 pwd=$(pwd) user=$USER\"; exit 3\n".to_vec()),
    );
    let c = collect(&mut s);
    let out = String::from_utf8_lossy(&c.stdout);
    assert!(out.contains("zero=-sh pwd=/tmp user=root"), "{out}");
    assert_eq!(c.exit, Some(3));
}

#[test]
fn signals_end_the_child_with_128_plus_signo() {
    // Even when vshd itself was started with these signals ignored (as under nohup).
    let vshd = start_vshd_ignoring_signals();
    for (sig, code, nopty) in [
        (VshSignal::Int, 130, true),
        (VshSignal::Term, 143, true),
        (VshSignal::Hup, 129, true),
        (VshSignal::Quit, 131, true),
        (VshSignal::Int, 130, false),
        (VshSignal::Term, 143, false),
    ] {
        let (mut s, _) = vshd.ready(&request(&["sh", "-c", "echo ready; exec sleep 100"], nopty));
        read_until(&mut s, "ready");
        send(&mut s, HostMessage::Signal(sig));
        let c = collect(&mut s);
        assert_eq!(c.exit, Some(code), "{sig:?} nopty={nopty}");
    }
}

#[test]
fn unknown_user_is_refused_by_name() {
    let vshd = start_vshd();
    let mut req = request(&["true"], true);
    req.user = "mallory".to_string();
    let (_s, resp) = vshd.session(&req);
    assert_eq!(resp.status, ConnectionStatus::Failed);
    assert!(resp.description.contains("mallory"), "{}", resp.description);
}

#[test]
fn named_user_runs_with_its_ids_and_groups() {
    let vshd = start_vshd();
    let mut req = request(&["id"], true);
    req.user = "nobody".to_string();
    let (mut s, resp) = vshd.session(&req);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(resp.status, ConnectionStatus::Ready, "{}", resp.description);
        let c = collect(&mut s);
        let out = String::from_utf8_lossy(&c.stdout);
        assert!(out.contains("uid=65534"), "{out}");
        assert!(out.contains("gid=65534"), "{out}");
        assert!(out.contains("44"), "supplementary group missing: {out}");
    } else {
        // Only root can switch users; anyone else gets a clear refusal.
        assert_eq!(resp.status, ConnectionStatus::Failed);
        assert!(resp.description.contains("nobody"), "{}", resp.description);
    }
}

#[test]
fn bad_setup_fields_are_refused_with_the_bad_value() {
    let vshd = start_vshd();
    let mut req = request(&["pwd"], true);
    req.cwd = "/no/such/dir".to_string();
    let (_s, resp) = vshd.session(&req);
    assert_eq!(resp.status, ConnectionStatus::Failed);
    assert!(
        resp.description.contains("/no/such/dir"),
        "{}",
        resp.description
    );

    let mut req = request(&["true"], true);
    req.target = "penguin".to_string();
    let (_s, resp) = vshd.session(&req);
    assert_eq!(resp.status, ConnectionStatus::Failed);
    assert!(resp.description.contains("penguin"), "{}", resp.description);

    let (_s, resp) = vshd.session(&request(&["/no/such/program"], true));
    assert_eq!(resp.status, ConnectionStatus::Failed);
    assert!(
        resp.description.contains("/no/such/program"),
        "{}",
        resp.description
    );

    let mut req = request(&["true"], false);
    req.window_rows = 60000;
    let (_s, resp) = vshd.session(&req);
    assert_eq!(resp.status, ConnectionStatus::Failed);
    assert!(resp.description.contains("60000"), "{}", resp.description);

    let mut req = request(&["true"], true);
    req.env.push(("BAD=NAME".to_string(), "x".to_string()));
    let (_s, resp) = vshd.session(&req);
    assert_eq!(resp.status, ConnectionStatus::Failed);
    assert!(
        resp.description.contains("BAD=NAME"),
        "{}",
        resp.description
    );
}

#[test]
fn cwd_and_env_reach_the_command() {
    let vshd = start_vshd();
    let mut req = request(&["sh", "-c", "pwd; echo $FOO $TERM"], true);
    req.cwd = "/usr".to_string();
    req.env.push(("FOO".to_string(), "bar".to_string()));
    let (mut s, _) = vshd.ready(&req);
    let c = collect(&mut s);
    assert_eq!(String::from_utf8_lossy(&c.stdout), "/usr\nbar dumb\n");
}

/// Each kind of bad client input, sent on one session while another session is running: the bad
/// one is closed (its child killed), the good one carries on, and new sessions are accepted.
#[test]
fn bad_frames_close_only_that_session() {
    let vshd = start_vshd();
    let (mut good, _) = vshd.ready(&request(&["cat"], true));

    let mut oversized_stdin = Vec::new();
    // 4001 data bytes fit in a 4096-byte frame but exceed the data limit.
    write_message(
        &mut oversized_stdin,
        &HostMessage::Stdin(vec![b'x'; MAX_DATA + 1]),
        MAX_VSH_FRAME,
    )
    .unwrap();
    let mut bad_resize = Vec::new();
    write_message(
        &mut bad_resize,
        &HostMessage::Resize { rows: 0, cols: 80 },
        MAX_VSH_FRAME,
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage payload",
            [5u32.to_le_bytes().to_vec(), vec![0xff; 5]].concat(),
        ),
        ("oversized frame", (1u32 << 20).to_le_bytes().to_vec()),
        (
            "frame just over the limit",
            ((MAX_VSH_FRAME + 1) as u32).to_le_bytes().to_vec(),
        ),
        ("oversized stdin data", oversized_stdin),
        ("zero-row resize", bad_resize),
        ("truncated frame", vec![100, 0, 0, 0, 1, 2, 3]),
    ];
    for (what, bytes) in cases {
        let (mut bad, pid) = vshd.ready(&request(&["sleep", "100"], true));
        bad.write_all(&bytes).unwrap();
        if what == "truncated frame" {
            // The frame can only be known to be truncated once the client stops sending.
            bad.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert_closed(&mut bad);
        wait_gone(pid);

        send(&mut good, HostMessage::Stdin(what.as_bytes().to_vec()));
        let mut echoed = Vec::new();
        while echoed.len() < what.len() {
            match read_message::<GuestMessage>(&mut good, MAX_VSH_FRAME).unwrap() {
                GuestMessage::Stdout(d) => echoed.extend(d),
                other => panic!("{what}: unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, what.as_bytes(), "after {what}");
    }

    // Garbage instead of a setup request, and an oversized one: closed without a response.
    for bytes in [
        vec![3, 0, 0, 0, 0xff, 0xff, 0xff],
        60_000u32.to_le_bytes().to_vec(),
    ] {
        let mut s = vshd.connect();
        s.write_all(&bytes).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap(), 0);
    }

    let (mut fresh, _) = vshd.ready(&request(&["sh", "-c", "exit 5"], true));
    assert_eq!(collect(&mut fresh).exit, Some(5));
    send(&mut good, HostMessage::Stdin(Vec::new()));
    assert_eq!(collect(&mut good).exit, Some(0));
}

#[test]
fn client_hangup_ends_the_child() {
    let vshd = start_vshd();
    for nopty in [true, false] {
        let (s, pid) = vshd.ready(&request(&["sleep", "100"], nopty));
        assert!(!process_gone(pid));
        drop(s);
        wait_gone(pid);
    }
}

#[test]
fn concurrent_sessions_keep_their_own_streams() {
    let vshd = start_vshd();
    let sessions: Vec<_> = (0..6)
        .map(|i| {
            let (s, _) = vshd.ready(&request(&["cat"], i % 2 == 0));
            (i, s)
        })
        .collect();
    let handles: Vec<_> = sessions
        .into_iter()
        .map(|(i, mut s)| {
            std::thread::spawn(move || {
                let msg = format!("session {i} says hi\n");
                send(&mut s, HostMessage::Stdin(msg.as_bytes().to_vec()));
                // A pty turns "\n" into "\r\n"; look for the words only.
                read_until(&mut s, msg.trim_end());
                send(&mut s, HostMessage::Stdin(Vec::new()));
                let c = collect(&mut s);
                assert_eq!(c.exit, Some(0), "session {i}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// `--connect`: vshd dials the client (as garcon's vshd dials the host's waiting vsh), serves
/// that one session and exits.
#[test]
fn connect_mode_serves_one_dialled_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut vshd = Command::new(env!("CARGO_BIN_EXE_vshd"))
        .arg("--connect")
        .arg(format!("unix:{}", path.display()))
        .arg("--target")
        .arg("penguin")
        .spawn()
        .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut req = request(&["sh", "-c", "echo in-container; exit 6"], true);
    req.target = "penguin".to_string();
    write_message(&mut s, &req, MAX_VSH_FRAME).unwrap();
    let resp: SetupConnectionResponse = read_message(&mut s, MAX_VSH_FRAME).unwrap();
    assert_eq!(resp.status, ConnectionStatus::Ready, "{}", resp.description);
    let c = collect(&mut s);
    assert_eq!(c.stdout, b"in-container\n");
    assert_eq!(c.exit, Some(6));
    assert_eq!(vshd.wait().unwrap().code(), Some(0));
}

#[test]
fn bad_command_line_is_refused_with_the_bad_value() {
    let out = Command::new(env!("CARGO_BIN_EXE_vshd"))
        .args(["--listen", "tcp:9001"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tcp:9001") && err.contains("vsock:PORT"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_vshd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--connect",
        "--target",
        "--default-user",
        "--passwd",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert_eq!(out.status.code(), Some(0));
}

/// A client that stops in the middle of a frame (or never sends its setup) is closed once the
/// frame timeout passes, and its child is hung up. Uses the library server (in this process)
/// with a short timeout instead of the binary's default.
#[test]
fn stalled_client_is_closed_after_the_frame_timeout() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vshd.sock");
    let listener = cros_guest::vshd::listener::bind_unix(&sock).unwrap();
    let config = cros_guest::vshd::ServerConfig {
        frame_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    std::thread::spawn(move || cros_guest::vshd::serve(listener, Arc::new(config)));

    let connect = || {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    };
    // Half a length prefix, then nothing.
    let mut s = connect();
    write_message(&mut s, &request(&["sleep", "100"], true), MAX_VSH_FRAME).unwrap();
    let resp: SetupConnectionResponse = read_message(&mut s, MAX_VSH_FRAME).unwrap();
    assert_eq!(resp.status, ConnectionStatus::Ready, "{}", resp.description);
    s.write_all(&[7, 0]).unwrap();
    assert_closed(&mut s);
    wait_gone(resp.pid);

    // Connected, never sends a setup request.
    let mut idle = connect();
    let mut buf = [0u8; 8];
    assert_eq!(idle.read(&mut buf).unwrap(), 0);

    // A client that keeps its frames whole is unaffected by the timeout between frames.
    let mut ok = connect();
    write_message(&mut ok, &request(&["cat"], true), MAX_VSH_FRAME).unwrap();
    let _: SetupConnectionResponse = read_message(&mut ok, MAX_VSH_FRAME).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    send(&mut ok, HostMessage::Stdin(b"still here".to_vec()));
    send(&mut ok, HostMessage::Stdin(Vec::new()));
    let c = collect(&mut ok);
    assert_eq!(c.stdout, b"still here");
    assert_eq!(c.exit, Some(0));
}
