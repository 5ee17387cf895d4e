//! maitred's request service, run on the host as a real process (`maitred --listen unix:PATH`,
//! not PID 1) and driven over its real socket protocol. Booting it as a VM's init is covered by
//! the termina end-to-end tests.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, read_message, write_message};
use cros_messages::maitred::{MaitredReply, MaitredRequest};
use cros_messages::{Addr, Body, Envelope, ErrorKind};

struct Maitred {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Maitred {
    fn start() -> Maitred {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("maitred.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_maitred"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .spawn()
            .unwrap();
        // Readiness, not a timing assertion: the socket file exists from bind(), but connects
        // are refused until listen().
        let start = Instant::now();
        while UnixStream::connect(&sock).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "maitred never listened on its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Maitred {
            child,
            sock,
            _dir: dir,
        }
    }

    fn connect(&self) -> UnixStream {
        connect(&self.sock)
    }
}

impl Drop for Maitred {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let peer = handshake(&mut s, &Addr::host("concierge")).unwrap();
    assert_eq!(peer.actor.actor, "maitred");
    s
}

fn call(s: &mut UnixStream, id: u64, body: Body) -> Body {
    let env = Envelope::new(id, 9, Addr::host("concierge"), Addr::host("maitred"), body);
    write_message(s, &env, MAX_CONTROL_FRAME).unwrap();
    let reply: Envelope = read_message(s, MAX_CONTROL_FRAME).unwrap();
    assert_eq!(reply.reply_to, Some(id));
    assert_eq!(reply.trace, 9);
    reply.body
}

fn req(r: MaitredRequest) -> Body {
    Body::Maitred(r)
}

#[test]
fn kernel_version_is_the_running_kernel() {
    let m = Maitred::start();
    let mut s = m.connect();
    let host = String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    match call(&mut s, 1, req(MaitredRequest::GetKernelVersion {})) {
        Body::MaitredReply(MaitredReply::KernelVersion { release, .. }) => {
            assert_eq!(release, host.trim())
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn launch_process_reports_exit_codes_and_missing_programs() {
    let m = Maitred::start();
    let mut s = m.connect();
    let launch = |argv: &[&str]| {
        req(MaitredRequest::LaunchProcess {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("CROSD_X".into(), "7".into())],
            respawn: false,
            wait_for_exit: true,
        })
    };
    match call(&mut s, 1, launch(&["/bin/sh", "-c", "exit $CROSD_X"])) {
        Body::MaitredReply(MaitredReply::ProcessLaunched { exit_code, pid }) => {
            assert_eq!(exit_code, Some(7));
            assert!(pid > 0);
        }
        other => panic!("unexpected {other:?}"),
    }
    match call(&mut s, 2, launch(&["/nonexistent/prog"])) {
        Body::Error(e) => {
            assert_eq!(e.kind, ErrorKind::NotFound);
            assert!(e.message.contains("/nonexistent/prog"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    match call(&mut s, 3, launch(&[])) {
        Body::Error(e) => assert_eq!(e.kind, ErrorKind::InvalidArgument),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn bad_requests_get_errors_and_the_connection_goes_on() {
    let m = Maitred::start();
    let mut s = m.connect();
    let mount = |target: &str, flags: u64| {
        req(MaitredRequest::Mount {
            source: "tmpfs".into(),
            target: target.into(),
            fstype: "tmpfs".into(),
            flags,
            options: String::new(),
            create_target: false,
            mkfs_if_needed: false,
        })
    };
    for (id, body, needle) in [
        (1, mount("relative/dir", 0), "absolute"),
        (2, mount("/mnt/../etc", 0), "absolute"),
        (3, mount("/mnt/x", libc::MS_BIND), "flags"),
        (
            4,
            Body::Concierge(cros_messages::concierge::ConciergeRequest::ListVms {}),
            "Concierge::ListVms",
        ),
        (
            5,
            req(MaitredRequest::SetTimezone {
                name: "../../etc/passwd".into(),
            }),
            "timezone",
        ),
        (
            6,
            req(MaitredRequest::SetTime {
                secs: 1,
                nanos: 2_000_000_000,
            }),
            "out of range",
        ),
    ] {
        match call(&mut s, id, body) {
            Body::Error(e) => {
                assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
                assert!(e.message.contains(needle), "{e} should mention {needle}");
            }
            other => panic!("request {id}: unexpected {other:?}"),
        }
    }
    // A whole frame of garbage: an error reply, and the stream stays usable.
    s.write_all(&5u32.to_le_bytes()).unwrap();
    s.write_all(&[0xff; 5]).unwrap();
    let reply: Envelope = read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
    assert!(
        matches!(reply.body, Body::Error(ref e) if e.kind == ErrorKind::InvalidArgument),
        "{reply:?}"
    );
    assert!(matches!(
        call(&mut s, 7, req(MaitredRequest::GetKernelVersion {})),
        Body::MaitredReply(_)
    ));
}

#[test]
fn oversized_frame_closes_only_that_connection() {
    let m = Maitred::start();
    let mut bad = m.connect();
    bad.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut bad, &mut buf).unwrap(),
        0,
        "server closes the connection"
    );
    let mut good = m.connect();
    assert!(matches!(
        call(&mut good, 1, req(MaitredRequest::GetKernelVersion {})),
        Body::MaitredReply(_)
    ));
}

#[test]
fn shutdown_is_acknowledged_then_the_process_ends() {
    let mut m = Maitred::start();
    let mut s = m.connect();
    assert_eq!(
        call(&mut s, 1, req(MaitredRequest::Shutdown {})),
        Body::MaitredReply(MaitredReply::Ack {})
    );
    let start = Instant::now();
    loop {
        if let Some(status) = m.child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "maitred did not exit after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
