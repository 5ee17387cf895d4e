//! End-to-end: the real `crosd` and `crosmsg` binaries, temporary state and run directories,
//! a real Unix control socket.
//!
//! Build the binaries first: `cargo build -p cros-tools --bins`.

use cros_e2e::bin;
use cros_messages::framing::{self, MAX_CONTROL_FRAME};
use cros_messages::trace::TraceReader;
use cros_messages::{Addr, Body, Envelope, ErrorKind, Hello};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for crosd to come up or go down; a hang fails the test instead of blocking CI.
const PATIENCE: Duration = Duration::from_secs(30);

const HOST_ACTORS: [&str; 7] = [
    "imageloader",
    "concierge",
    "cicerone",
    "seneschal",
    "vmlog_forwarder",
    "patchpanel",
    "chunneld",
];

struct Crosd {
    child: Option<Child>,
    socket: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Crosd {
    /// Starts crosd with its state and run directories under `dir` and waits until it accepts.
    fn start(dir: &Path, extra: &[&str]) -> Crosd {
        Self::start_with(dir, &dir.join("state"), extra)
    }

    fn start_with(dir: &Path, state: &Path, extra: &[&str]) -> Crosd {
        Self::start_custom(dir, state, extra, |_| {})
    }

    /// As [`Crosd::start_with`], with `customize` applied to the command first (a umask, a
    /// resource limit).
    fn start_custom(
        dir: &Path,
        state: &Path,
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Crosd {
        let run = dir.join("run");
        let socket = run.join("crosd.sock");
        let log = dir.join(format!("crosd-{}.log", now_ns()));
        let mut cmd = Command::new(bin("crosd"));
        cmd.arg("--state-dir")
            .arg(state)
            .arg("--run-dir")
            .arg(&run)
            .args(extra)
            .env("RUST_LOG", "debug")
            .env_remove("CROSD_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        customize(&mut cmd);
        let child = cmd.spawn().expect("spawn crosd");
        let mut d = Crosd {
            child: Some(child),
            socket,
            state: state.to_path_buf(),
            log,
        };
        let start = Instant::now();
        while UnixStream::connect(&d.socket).is_err() {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("crosd exited early ({status}): {}", d.log_text());
            }
            assert!(
                start.elapsed() < PATIENCE,
                "crosd never listened: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn crosmsg(&self, args: &[&str]) -> Output {
        crosmsg(&self.socket, args)
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "crosd exited with {status}: {}",
                    self.log_text()
                );
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "crosd ignored SIGTERM: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Crosd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn crosmsg(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("crosmsg"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("CROSD_SOCKET")
        .output()
        .expect("run crosmsg")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn crosmsg_list_shows_the_host_actors() {
    let dir = tempfile::tempdir().unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let out = d.crosmsg(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    for actor in HOST_ACTORS {
        assert!(
            lines.iter().any(|l| l == actor),
            "{actor} missing: {lines:?}"
        );
    }
    assert!(lines.iter().any(|l| l == "bus"), "{lines:?}");

    // Without --socket, CROSD_SOCKET names the socket.
    let out = Command::new(bin("crosmsg"))
        .arg("list")
        .env("CROSD_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), lines.len());
}

#[test]
fn send_prints_the_reply_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let out = d.crosmsg(&["send", "concierge", r#"{"ListVms":{}}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json, serde_json::json!({"Vms": {"vms": []}}));
}

#[test]
fn imageloader_lists_component_directories() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("components/cros-termina/16000.0.0")).unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let out = d.crosmsg(&["send", "imageloader", r#"{"ListComponents":{}}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let comps = &json["Components"]["components"];
    assert_eq!(comps[0]["name"], "cros-termina");
    assert_eq!(comps[0]["version"], "16000.0.0");
}

#[test]
fn errors_exit_non_zero_with_their_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Crosd::start(dir.path(), &[]);

    let out = d.crosmsg(&["send", "concierge", r#"{"GetVmInfo":{"name":"termina"}}"#]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("NotFound") && stderr(&out).contains("termina"),
        "{}",
        stderr(&out)
    );

    let out = d.crosmsg(&["send", "concierge", r#"{"ListVms":"#]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad JSON"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("EOF while parsing"),
        "serde's message: {}",
        stderr(&out)
    );

    let out = d.crosmsg(&["send", "concierge", r#"{"Reboot":{}}"#]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown variant `Reboot`"),
        "{}",
        stderr(&out)
    );

    let out = d.crosmsg(&["send", "nosuchactor", "{}"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown actor \"nosuchactor\""),
        "{}",
        stderr(&out)
    );

    // A known kind of actor that is not registered: the daemon says so.
    let out = d.crosmsg(&["send", "maitred@termina", r#"{"GetKernelVersion":{}}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no actor maitred@termina is registered"),
        "{}",
        stderr(&out)
    );

    // A request only another actor may make is refused to a client, saying whose it is.
    let out = d.crosmsg(&["send", "seneschal", r#"{"StartServer":{"accept_cid":3}}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("concierge's"), "{}", stderr(&out));

    d.terminate();
    let out = d.crosmsg(&["list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains(&format!(
            "crosd is not running (no socket at {})",
            d.socket.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn socket_is_0600_and_removed_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Crosd::start(dir.path(), &[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    d.terminate();
    assert!(!d.socket.exists(), "socket left behind");
    assert!(
        d.log_text().contains("SIGTERM received"),
        "{}",
        d.log_text()
    );
}

#[test]
fn second_crosd_on_the_same_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let out = Command::new(bin("crosd"))
        .arg("--state-dir")
        .arg(dir.path().join("state2"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--run-dir")
        .arg(dir.path().join("run2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let pid = d.child.as_ref().unwrap().id();
    assert!(
        stderr(&out).contains("another crosd is already serving")
            && stderr(&out).contains(&format!("pid {pid}")),
        "{}",
        stderr(&out)
    );
    // The first one is unharmed.
    assert!(d.crosmsg(&["list"]).status.success());
}

/// crosd on `state` and `run` in the foreground, for runs expected to fail at start.
fn crosd_output(state: &Path, run: &Path) -> Output {
    Command::new(bin("crosd"))
        .arg("--state-dir")
        .arg(state)
        .arg("--run-dir")
        .arg(run)
        .env_remove("CROSD_SOCKET")
        .output()
        .unwrap()
}

#[test]
fn second_crosd_on_the_same_state_directory_exits_naming_it_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let pid = d.child.as_ref().unwrap().id();
    // Another socket, the same disks: refused all the same.
    let out = crosd_output(&d.state, &dir.path().join("run2"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("state directory {} is in use", d.state.display()))
            && err.contains(&format!("pid {pid}"))
            && err.contains("crosd.lock"),
        "{err}"
    );
    assert!(
        !dir.path().join("run2/crosd.sock").exists(),
        "it stopped before binding"
    );
    assert!(d.crosmsg(&["list"]).status.success());
}

/// Two crosd started at the same moment on one state directory, with a stale socket file
/// left where both want theirs: each time exactly one serves and the other exits with the
/// lock's message, never both replacing the "stale" socket.
#[test]
fn two_crosd_starting_at_once_never_both_take_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (state, run) = (dir.path().join("state"), dir.path().join("run"));
    std::fs::create_dir_all(&run).unwrap();
    let socket = run.join("crosd.sock");
    for round in 0..5 {
        // A socket nobody listens on, as the SIGKILLed winner of the round before leaves it.
        let _ = std::fs::remove_file(&socket);
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let start = |_| {
            Command::new(bin("crosd"))
                .arg("--state-dir")
                .arg(&state)
                .arg("--run-dir")
                .arg(&run)
                .env_remove("CROSD_SOCKET")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut pair: Vec<Child> = (0..2).map(start).collect();
        // The loser exits at once; the winner serves until told to stop.
        let started = Instant::now();
        let loser = loop {
            if let Some(i) = (0..2).find(|&i| pair[i].try_wait().unwrap().is_some()) {
                break i;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "round {round}: both kept running"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = pair.remove(loser).wait_with_output().unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("is in use by another crosd"),
            "{}",
            stderr(&out)
        );
        let mut winner = pair.pop().unwrap();
        let started = Instant::now();
        while !crosmsg(&socket, &["list"]).status.success() {
            assert!(
                winner.try_wait().unwrap().is_none(),
                "round {round}: the winner died"
            );
            assert!(started.elapsed() < PATIENCE, "round {round}: nobody serves");
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(winner.id() as i32, libc::SIGKILL) };
        winner.wait().unwrap();
    }
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    // A socket nobody listens on any more, as a killed crosd leaves it.
    drop(std::os::unix::net::UnixListener::bind(run.join("crosd.sock")).unwrap());
    let d = Crosd::start(dir.path(), &[]);
    assert!(d.crosmsg(&["list"]).status.success());
    assert!(
        d.log_text().contains("removing stale socket"),
        "{}",
        d.log_text()
    );
}

fn raw_connection(socket: &Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let peer = framing::handshake(&mut s, &Addr::host("e2e")).unwrap();
    assert_eq!(peer.actor, Addr::host("bus"));
    s
}

#[test]
fn malformed_frames_get_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let mut s = raw_connection(&d.socket);
    // A frame whose payload is not an envelope: an error reply, and the connection goes on.
    s.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    let reply: Envelope = framing::read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
    let Body::Error(e) = reply.body else {
        panic!("expected an error, got {reply:?}")
    };
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("malformed envelope"), "{e}");
    let req = Envelope::new(
        9,
        9,
        Addr::host("e2e"),
        Addr::host("bus"),
        Body::Bus(cros_messages::bus::BusRequest::Ping { seq: 42 }),
    );
    framing::write_message(&mut s, &req, MAX_CONTROL_FRAME).unwrap();
    let reply: Envelope = framing::read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
    assert_eq!(reply.reply_to, Some(9));
    assert_eq!(
        reply.body,
        Body::BusReply(cros_messages::bus::BusReply::Pong { seq: 42 })
    );
    // An oversized frame: an error naming the limit, then the connection is closed.
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let reply: Envelope = framing::read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
    assert!(
        matches!(&reply.body, Body::Error(e) if e.message.contains("exceeds")),
        "{reply:?}"
    );
    assert!(matches!(
        framing::read_message::<Envelope>(&mut s, MAX_CONTROL_FRAME),
        Err(cros_messages::FrameError::Closed)
    ));
    // A peer that speaks another protocol version is refused at the handshake.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let old = Hello {
        version: cros_messages::PROTOCOL_VERSION + 1,
        actor: Addr::host("e2e"),
    };
    framing::write_message(&mut s, &old, MAX_CONTROL_FRAME).unwrap();
    let _ours: Hello = framing::read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
    // The daemon survived all of it.
    assert!(d.crosmsg(&["list"]).status.success(), "{}", d.log_text());
    assert!(
        d.log_text().contains("malformed envelope"),
        "{}",
        d.log_text()
    );
}

#[test]
fn subscribe_is_acknowledged_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let out = d.crosmsg(&[
        "send",
        "bus",
        r#"{"Subscribe":{"prefixes":["ConciergeEvent"]}}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json, serde_json::json!({"Subscribed": {}}));
}

/// Records a session with `--trace`, returns the trace path (crosd stopped, trace flushed).
fn record_session(dir: &Path) -> PathBuf {
    let trace = dir.join("session.trace");
    let state = dir.join("state");
    std::fs::create_dir_all(state.join("components/cros-termina/1.0")).unwrap();
    let mut d = Crosd::start(dir, &["--trace", trace.to_str().unwrap()]);
    for (actor, json, ok) in [
        ("bus", r#"{"ListActors":{}}"#, true),
        ("concierge", r#"{"ListVms":{}}"#, true),
        ("concierge", r#"{"ListVms":{}}"#, true),
        ("concierge", r#"{"GetVmInfo":{"name":"termina"}}"#, false),
        ("imageloader", r#"{"ListComponents":{}}"#, true),
        (
            "imageloader",
            r#"{"LoadComponent":{"name":"absent"}}"#,
            false,
        ),
        (
            "cicerone",
            r#"{"ListRunningContainers":{"vm":"termina"}}"#,
            false,
        ),
        // Refused, and the refusal names this connection (client-N): replay must not trip on it.
        (
            "cicerone",
            r#"{"NotifyVmStarted":{"vm":"t","cid":3,"token":"x","pid":1}}"#,
            false,
        ),
        ("seneschal", r#"{"ListServers":{}}"#, true),
        (
            "vmlog_forwarder",
            r#"{"GetLogPath":{"vm":"termina"}}"#,
            false,
        ),
    ] {
        let out = d.crosmsg(&["send", actor, json]);
        assert_eq!(out.status.success(), ok, "{actor} {json}: {}", stderr(&out));
    }
    d.terminate();
    trace
}

#[test]
fn trace_show_stats_and_replay_reproduce_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let trace = record_session(dir.path());
    let socket = dir.path().join("run/crosd.sock");

    let out = crosmsg(&socket, &["trace", "show", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    // Who each of the 10 connections was (trace only: an isolated replay needs the owners).
    let (connected, lines): (Vec<String>, Vec<String>) = all
        .into_iter()
        .partition(|l| l.contains("bus -> bus BusEvent::ClientConnected"));
    assert_eq!(connected.len(), 10, "{connected:#?}");
    assert_eq!(
        lines.len(),
        23,
        "what crosd ran with, 10 requests and 10 replies, and the StopAllVms of its shutdown: \
         {lines:#?}"
    );
    assert!(
        lines[21].contains("bus -> concierge Concierge::StopAllVms"),
        "{}",
        lines[21]
    );
    assert!(
        lines[0].contains("bus -> bus BusEvent::DaemonStarted"),
        "{}",
        lines[0]
    );
    assert!(
        lines[3].contains("-> concierge Concierge::ListVms id=1"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].contains("concierge -> client-") && lines[4].contains("reply_to=1"),
        "{}",
        lines[4]
    );

    let out = crosmsg(
        &socket,
        &["trace", "show", "--json", trace.to_str().unwrap()],
    );
    assert!(out.status.success());
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let started = &records[0]["envelope"]["body"]["BusEvent"]["DaemonStarted"];
    assert_eq!(
        started["state_dir"],
        dir.path().join("state").display().to_string()
    );
    assert_eq!(records[1]["type"], "BusEvent::ClientConnected");
    let connected = &records[1]["envelope"]["body"]["BusEvent"]["ClientConnected"];
    assert_eq!(connected["uid"], nix::unistd::geteuid().as_raw());
    assert_eq!(records[2]["type"], "Bus::ListActors");
    assert_eq!(records[2]["envelope"]["to"]["actor"], "bus");

    let out = crosmsg(&socket, &["trace", "stats", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let count_line = text
        .lines()
        .find(|l| l.starts_with("Concierge::ListVms "))
        .unwrap();
    assert!(count_line.split_whitespace().nth(1) == Some("2"), "{text}");
    assert!(text.contains("REQUEST -> REPLY"), "{text}");
    let lat_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Concierge::ListVms "))
        .collect();
    assert_eq!(
        lat_lines.len(),
        2,
        "a count line and a latency line: {text}"
    );
    assert_eq!(lat_lines[1].split_whitespace().count(), 5, "{text}");

    // Replay against a fresh crosd over the same state: no divergence.
    let d = Crosd::start(dir.path(), &[]);
    let out = d.crosmsg(&["trace", "replay", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("replayed 10 request(s): 0 divergence(s)"),
        "{}",
        stdout(&out)
    );
    drop(d);

    // Isolated replay of each actor the session talked to: no crosd needed.
    let state = dir.path().join("state");
    for actor in ["concierge", "cicerone", "seneschal", "vmlog_forwarder"] {
        let out = crosmsg(
            &socket,
            &["trace", "replay", trace.to_str().unwrap(), "--actor", actor],
        );
        assert!(
            out.status.success(),
            "{actor}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains(" 0 divergence(s)"),
            "{}",
            stdout(&out)
        );
    }
    let out = crosmsg(
        &socket,
        &[
            "trace",
            "replay",
            trace.to_str().unwrap(),
            "--actor",
            "imageloader",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("replayed 2 request(s): 0 divergence(s)"),
        "{}",
        stdout(&out)
    );

    // Against a different state (no components) the replay notices ListComponents differs.
    let out = crosmsg(
        &socket,
        &[
            "trace",
            "replay",
            trace.to_str().unwrap(),
            "--actor",
            "imageloader",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("DIVERGENCE") && stdout(&out).contains("Imageloader::ListComponents"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn replay_reports_a_changed_reply() {
    let dir = tempfile::tempdir().unwrap();
    let trace = record_session(dir.path());
    // The component the session listed is gone: ListComponents answers differently now.
    std::fs::remove_dir_all(dir.path().join("state/components/cros-termina")).unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let out = d.crosmsg(&["trace", "replay", trace.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("DIVERGENCE")).count(),
        1,
        "{text}"
    );
    assert!(text.contains("Imageloader::ListComponents"), "{text}");
    assert!(text.contains("1 divergence(s)"), "{text}");
}

#[test]
fn truncated_trace_names_the_offset_and_keeps_what_precedes_it() {
    let dir = tempfile::tempdir().unwrap();
    let trace = record_session(dir.path());
    let bytes = std::fs::read(&trace).unwrap();
    let offsets: Vec<u64> = TraceReader::new(&bytes[..])
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    let last = *offsets.last().unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let socket = dir.path().join("run/crosd.sock");
    for sub in ["show", "stats"] {
        let out = crosmsg(&socket, &["trace", sub, cut.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert!(
            stderr(&out).contains(&format!("byte offset {last}")),
            "{sub}: {}",
            stderr(&out)
        );
    }
    let out = crosmsg(&socket, &["trace", "show", cut.to_str().unwrap()]);
    assert_eq!(stdout(&out).lines().count(), offsets.len() - 1);
    // Not a trace at all: a clear error.
    let junk = dir.path().join("junk.trace");
    std::fs::write(&junk, b"hello world, not a trace").unwrap();
    let out = crosmsg(&socket, &["trace", "show", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a crosd trace file"),
        "{}",
        stderr(&out)
    );
}

/// Runs crosmsg as uid `nobody` with primary group `gid` and supplementary groups `groups`.
fn crosmsg_as_nobody(socket: &Path, gid: u32, groups: &[u32], args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let mut cmd = Command::new(bin("crosmsg"));
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("CROSD_SOCKET");
    // std's uid()/gid() would drop the supplementary groups before our pre_exec runs (as
    // nobody, too late to set them), so switch identity here, groups first.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run crosmsg as nobody")
}

const NOBODY: u32 = 65534;
/// Debian's `daemon` group.
const DAEMON_GID: u32 = 1;

#[test]
fn socket_group_widens_the_socket_and_peer_credentials_are_checked() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test switches users: run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    // Let other users reach the socket's directory; the socket's own mode is what is tested.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Crosd::start(dir.path(), &["--socket-group", "daemon"]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), DAEMON_GID);

    // In the group (primary gid): admitted.
    let out = crosmsg_as_nobody(&d.socket, DAEMON_GID, &[DAEMON_GID], &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).lines().any(|l| l == "concierge"));

    // Reaches the file through a supplementary group, but SO_PEERCRED shows neither root, nor
    // crosd's uid, nor the socket group: refused, with the reason logged.
    let out = crosmsg_as_nobody(&d.socket, NOBODY, &[DAEMON_GID], &["list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    assert!(stderr(&out).contains("uid 65534"), "{}", stderr(&out));
    assert!(
        d.log_text().contains("refused connection"),
        "{}",
        d.log_text()
    );

    // Without the group, the 0660 socket keeps it out before crosd is even asked.
    let out = crosmsg_as_nobody(&d.socket, NOBODY, &[], &["list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_socket_group_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("crosd"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args(["--socket-group", "no-such-group-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown group \"no-such-group-here\""),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("run/crosd.sock").exists());
}

#[test]
fn json_log_format_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Crosd::start(dir.path(), &["--log-format", "json"]);
    d.terminate();
    let text = d.log_text();
    let ready = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every log line is JSON"))
        .find(|v| v["fields"]["message"] == "crosd ready");
    assert!(ready.is_some(), "{text}");
}

/// Sets the umask of the crosd `cmd` starts.
fn with_umask(cmd: &mut Command, mask: libc::mode_t) {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// Sets RLIMIT_NOFILE of the crosd `cmd` starts.
fn with_fd_limit(cmd: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn directories_socket_and_locks_are_private_under_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = Crosd::start_custom(dir.path(), &state, &[], |cmd| with_umask(cmd, 0));
    assert_eq!(mode_of(&state), 0o700);
    assert_eq!(mode_of(&dir.path().join("run")), 0o700);
    assert_eq!(mode_of(&d.socket), 0o600);
    assert_eq!(mode_of(&state.join("crosd.lock")), 0o600);
    assert_eq!(mode_of(&dir.path().join("run/crosd.sock.lock")), 0o600);
    // The lock names its holder.
    let pid = d.child.as_ref().unwrap().id();
    assert_eq!(
        std::fs::read_to_string(state.join("crosd.lock"))
            .unwrap()
            .trim(),
        pid.to_string()
    );
}

/// The soft limit of `pid`'s open files, from /proc.
fn soft_fd_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = Crosd::start_custom(dir.path(), &state, &[], |cmd| with_fd_limit(cmd, 256, 4096));
    assert_eq!(soft_fd_limit(d.child.as_ref().unwrap().id()), 4096);
    let log = d.log_text();
    assert!(
        log.contains("raised RLIMIT_NOFILE from 256 to its hard limit 4096"),
        "{log}"
    );
}

/// One control client on its own thread: connects, waits until all are connected, asks for
/// the actor list.
fn list_actors_raw(socket: &Path, all_connected: &std::sync::Barrier) -> Vec<String> {
    let mut s = raw_connection(socket);
    all_connected.wait();
    let req = Envelope::new(
        1,
        1,
        Addr::host("e2e"),
        Addr::host("bus"),
        Body::Bus(cros_messages::bus::BusRequest::ListActors {}),
    );
    framing::write_message(&mut s, &req, MAX_CONTROL_FRAME).unwrap();
    let reply: Envelope = framing::read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
    match reply.body {
        Body::BusReply(cros_messages::bus::BusReply::Actors { actors }) => {
            actors.into_iter().map(|a| a.addr.actor).collect()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hundred_concurrent_control_clients_all_get_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = Crosd::start(dir.path(), &[]);
    let all_connected = std::sync::Arc::new(std::sync::Barrier::new(100));
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let (socket, all) = (d.socket.clone(), all_connected.clone());
            std::thread::spawn(move || list_actors_raw(&socket, &all))
        })
        .collect();
    for c in clients {
        let actors = c.join().unwrap();
        assert!(actors.iter().any(|a| a == "concierge"), "{actors:?}");
    }
}

#[test]
fn clients_over_max_clients_are_refused_with_a_reason_and_served_once_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Crosd::start(dir.path(), &["--max-clients", "2"]);
    let held: Vec<UnixStream> = (0..2).map(|_| raw_connection(&d.socket)).collect();
    let out = d.crosmsg(&["list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("at most 2 control connections"),
        "{}",
        stderr(&out)
    );
    assert!(
        d.log_text().contains("refusing a control connection"),
        "{}",
        d.log_text()
    );
    drop(held);
    let start = Instant::now();
    while !d.crosmsg(&["list"]).status.success() {
        assert!(start.elapsed() < PATIENCE, "the slots never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With a hard limit of 64 descriptors, 200 connections that never say Hello exhaust crosd's
/// descriptors: the ones it cannot take are closed (not left hanging in the backlog), and once
/// the others go, crosd answers again: the accept loop did not give up.
#[test]
fn the_accept_loop_keeps_working_after_running_out_of_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = Crosd::start_custom(dir.path(), &state, &["--max-clients", "1000"], |cmd| {
        with_fd_limit(cmd, 64, 64)
    });
    let mut held = Vec::new();
    for _ in 0..200 {
        match UnixStream::connect(&d.socket) {
            Ok(s) => held.push(s),
            // A full backlog while crosd is busy closing: enough pressure already.
            Err(_) => break,
        }
    }
    let start = Instant::now();
    while !d.log_text().contains("out of file descriptors") {
        assert!(
            start.elapsed() < PATIENCE,
            "crosd never ran out: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Some connection was closed by crosd rather than left unanswered.
    let closed = held.iter_mut().any(|s| {
        s.set_nonblocking(true).unwrap();
        matches!(std::io::Read::read(s, &mut [0u8; 1]), Ok(0))
    });
    assert!(closed, "no connection was closed");
    drop(held);
    let start = Instant::now();
    while !d.crosmsg(&["list"]).status.success() {
        assert!(
            start.elapsed() < PATIENCE,
            "crosd stopped accepting: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
