//! Guest → host connections against the listener, from stand-in guests (Unix sockets writing what
//! a guest could write; the e2e tests drive the real maitred and vm_syslog through the same code).

use super::*;
use crate::bus::{BusConfig, Deliver, channel_sink};
use actix::{Actor, Context, Handler, MessageResult};
use cros_messages::maitred::MaitredEvent;
use cros_messages::vmlog::{LogRecord, VmlogReply, VmlogRequest};
use std::path::Path;

fn vm_ready() -> Body {
    Body::MaitredEvent(MaitredEvent::VmReady {})
}

fn records() -> Body {
    Body::VmlogForwarder(VmlogRequest::Records {
        records: Vec::<LogRecord>::new(),
    })
}

/// Port 7777 as concierge's StartupListener, for VM `termina`, served at `dir/vsock.sock_7777`.
fn startup_port(dir: &Path, bus: &BusHandle) -> std::path::PathBuf {
    serve_port(dir, bus, startup())
}

fn startup() -> GuestPort {
    GuestPort {
        port: 7777,
        guest_actor: "maitred",
        host_actor: "concierge",
        allowed: |b| matches!(b, Body::MaitredEvent(MaitredEvent::VmReady {})),
    }
}

fn serve_port(dir: &Path, bus: &BusHandle, port: GuestPort) -> std::path::PathBuf {
    serve_port_with(dir, bus, port, Limits::default())
}

fn serve_port_with(
    dir: &Path,
    bus: &BusHandle,
    port: GuestPort,
    limits: Limits,
) -> std::path::PathBuf {
    let uds = dir.join("vsock.sock");
    let listener = crate::bridge::vsock::listen_guest_port(&uds, port.port).unwrap();
    tokio::task::spawn_local(serve(listener, bus.clone(), "termina".into(), port, limits));
    dir.join(format!("vsock.sock_{}", port.port))
}

/// A guest connection that introduced itself as `actor`.
async fn dial(path: &Path, actor: Addr) -> UnixStream {
    let mut s = UnixStream::connect(path).await.unwrap();
    handshake(&mut s, &actor).await.unwrap();
    s
}

fn maitred() -> Addr {
    Addr::in_vm("maitred", "termina")
}

fn subscribe(bus: &BusHandle) -> tokio::sync::mpsc::UnboundedReceiver<Envelope> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe(
        Addr::host("concierge"),
        vec!["MaitredEvent".into()],
        channel_sink(tx),
    );
    rx
}

#[actix::test]
async fn vm_ready_is_published_from_the_vm_the_socket_belongs_to() {
    let dir = tempfile::tempdir().unwrap();
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let mut events = subscribe(&bus);
    let path = startup_port(dir.path(), &bus);
    let mut s = dial(&path, maitred()).await;
    // It claims to come from another VM's maitred: the bridge knows better.
    let env = Envelope::new(
        1,
        0,
        Addr::in_vm("maitred", "other"),
        Addr::host("x"),
        vm_ready(),
    );
    write_message(&mut s, &env, MAX_CONTROL_FRAME)
        .await
        .unwrap();
    let got = events.recv().await.unwrap();
    assert_eq!((got.from, got.body), (maitred(), vm_ready()));
}

#[actix::test]
async fn a_connection_posing_as_another_actor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let mut events = subscribe(&bus);
    let path = startup_port(dir.path(), &bus);
    let mut s = dial(&path, Addr::in_vm("vm_syslog", "termina")).await;
    let env = Envelope::new(1, 0, maitred(), Addr::host("concierge"), vm_ready());
    // The bridge has hung up: the write or a read sees the end.
    let _ = write_message(&mut s, &env, MAX_CONTROL_FRAME).await;
    let end = read_message::<Envelope, _>(&mut s, MAX_CONTROL_FRAME).await;
    assert!(end.is_err(), "{end:?}");
    assert!(events.try_recv().is_err(), "nothing was published");
}

#[actix::test]
async fn a_silent_connection_holds_up_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let mut events = subscribe(&bus);
    let path = startup_port(dir.path(), &bus);
    // Connects and never says Hello.
    let _silent = UnixStream::connect(&path).await.unwrap();
    let mut s = dial(&path, maitred()).await;
    let env = Envelope::new(1, 0, maitred(), Addr::host("concierge"), vm_ready());
    write_message(&mut s, &env, MAX_CONTROL_FRAME)
        .await
        .unwrap();
    assert_eq!(events.recv().await.unwrap().body, vm_ready());
}

#[actix::test]
async fn connections_above_the_cap_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let path = startup_port(dir.path(), &bus);
    let mut open = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_PORT {
        open.push(dial(&path, maitred()).await);
    }
    let mut extra = UnixStream::connect(&path).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::io::AsyncReadExt::read(&mut extra, &mut buf).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // One closes: a new connection is served again.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    dial(&path, maitred()).await;
}

/// Stands in for vmlog_forwarder: answers Records with Stored.
struct Forwarder;

impl Actor for Forwarder {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Forwarder {
    type Result = MessageResult<Deliver>;
    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> Self::Result {
        assert_eq!(msg.env.from, Addr::in_vm("vm_syslog", "termina"));
        MessageResult(Body::VmlogReply(VmlogReply::Written { count: 0 }))
    }
}

#[actix::test]
async fn allowed_requests_reach_the_host_actor_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    bus.register(Addr::host("vmlog_forwarder"), Forwarder.start().recipient());
    let port = GuestPort {
        port: 9999,
        guest_actor: "vm_syslog",
        host_actor: "vmlog_forwarder",
        allowed: |b| matches!(b, Body::VmlogForwarder(VmlogRequest::Records { .. })),
    };
    let path = serve_port(dir.path(), &bus, port);
    let me = Addr::in_vm("vm_syslog", "termina");
    let mut s = dial(&path, me.clone()).await;
    for (id, body) in [
        (1, records()),
        (
            2,
            Body::Concierge(cros_messages::concierge::ConciergeRequest::StopAllVms {}),
        ),
    ] {
        let env = Envelope::new(id, id, me.clone(), Addr::host("concierge"), body);
        write_message(&mut s, &env, MAX_CONTROL_FRAME)
            .await
            .unwrap();
        let reply: Envelope = read_message(&mut s, MAX_CONTROL_FRAME).await.unwrap();
        assert_eq!(reply.reply_to, Some(id));
        match (id, reply.body) {
            (1, Body::VmlogReply(VmlogReply::Written { .. })) => {}
            (2, Body::Error(e)) => {
                assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
                assert!(e.message.contains("Concierge::StopAllVms"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[actix::test]
async fn a_connection_that_stays_silent_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let limits = Limits {
        idle: Duration::from_millis(100),
        ..Limits::default()
    };
    let path = serve_port_with(dir.path(), &bus, startup(), limits);
    let mut s = dial(&path, maitred()).await;
    let end = tokio::time::timeout(
        Duration::from_secs(5),
        read_message::<Envelope, _>(&mut s, MAX_CONTROL_FRAME),
    )
    .await;
    assert!(matches!(end, Ok(Err(_))), "closed by the host: {end:?}");
}
