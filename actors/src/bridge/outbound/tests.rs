//! The host → guest bridge against a stand-in guest: a Unix socket that speaks the VMM's hybrid
//! vsock `CONNECT` protocol and, behind it, a maitred that answers like the real one (no VM runs
//! in a unit test; the e2e tests drive the real maitred through the same code).

use super::*;
use crate::bus::{BusConfig, BusHandle};
use cros_messages::maitred::{MaitredReply, MaitredRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// How the stand-in maitred behaves on each stream.
#[derive(Clone, Copy)]
enum Guest {
    /// Answers GetKernelVersion, as `maitred@<vm>`.
    Answers(&'static str),
    /// Handshakes, then never answers.
    Silent,
    /// Answers one request per stream, then closes it (a listener that restarts).
    OneThenClose,
}

/// Serves `uds` as a VM's hybrid vsock socket whose port 8888 is `guest`; counts streams.
fn stand_in_vm(uds: &std::path::Path, guest: Guest) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(uds).unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let count = streams.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_stream(s, guest));
        }
    });
    streams
}

async fn serve_stream(s: tokio::net::UnixStream, guest: Guest) {
    let mut s = BufReader::new(s);
    let mut line = String::new();
    if s.read_line(&mut line).await.is_err() || line != "CONNECT 8888\n" {
        return;
    }
    s.get_mut().write_all(b"OK 1025\n").await.unwrap();
    let mut s = s.into_inner();
    let vm = match guest {
        Guest::Answers(vm) => vm,
        _ => "termina",
    };
    if handshake(&mut s, &Addr::in_vm("maitred", vm))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let Ok(env) = read_message::<Envelope, _>(&mut s, MAX_CONTROL_FRAME).await else {
            return;
        };
        if let Guest::Silent = guest {
            continue;
        }
        let body = Body::MaitredReply(MaitredReply::KernelVersion {
            release: "6.1.0-test".into(),
            version: "#1".into(),
        });
        let reply = env.reply(1000 + env.id, body);
        if write_message(&mut s, &reply, MAX_CONTROL_FRAME)
            .await
            .is_err()
        {
            return;
        }
        if let Guest::OneThenClose = guest {
            return;
        }
    }
}

fn kernel_version() -> Body {
    Body::Maitred(MaitredRequest::GetKernelVersion {})
}

/// A bus with `maitred@termina` bridged to the stand-in VM at `uds`.
fn bridged_bus(uds: &std::path::Path) -> BusHandle {
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let maitred = Addr::in_vm("maitred", "termina");
    let bridge = GuestActorBridge::new(maitred.clone(), uds.to_path_buf(), 8888).start();
    bus.register(maitred, bridge.recipient());
    bus
}

async fn ask(bus: &BusHandle, deadline: Duration) -> Result<Body, CrosError> {
    bus.request_with_deadline(
        &Addr::host("concierge"),
        &Addr::in_vm("maitred", "termina"),
        kernel_version(),
        deadline,
    )
    .await
}

#[actix::test]
async fn requests_reach_the_guest_and_streams_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let streams = stand_in_vm(&uds, Guest::Answers("termina"));
    let bus = bridged_bus(&uds);
    for _ in 0..3 {
        let body = ask(&bus, Duration::from_secs(5)).await.unwrap();
        assert!(
            matches!(&body, Body::MaitredReply(MaitredReply::KernelVersion { release, .. }) if release == "6.1.0-test"),
            "{body:?}"
        );
    }
    assert_eq!(
        streams.load(Ordering::SeqCst),
        1,
        "one stream serves requests in turn"
    );
}

#[actix::test]
async fn a_silent_guest_is_a_timeout_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    stand_in_vm(&uds, Guest::Silent);
    let bus = bridged_bus(&uds);
    let err = ask(&bus, Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(err.message.contains("maitred@termina"), "{err}");
}

#[actix::test]
async fn a_guest_that_restarts_its_listener_is_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let streams = stand_in_vm(&uds, Guest::OneThenClose);
    let bus = bridged_bus(&uds);
    for _ in 0..3 {
        ask(&bus, Duration::from_secs(5)).await.unwrap();
        // Let the guest's close reach the kept stream before it is reused.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(streams.load(Ordering::SeqCst), 3);
}

#[actix::test]
async fn a_port_answered_by_another_actor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    // This VM's port 8888 claims to be maitred of another VM.
    stand_in_vm(&uds, Guest::Answers("other"));
    let bus = bridged_bus(&uds);
    let err = ask(&bus, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("maitred@other"), "{err}");
}

#[actix::test]
async fn no_listener_is_an_unavailable_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let bus = bridged_bus(&uds);
    let err = ask(&bus, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("vsock.sock"), "{err}");
}
