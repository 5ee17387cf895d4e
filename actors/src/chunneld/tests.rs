//! chunneld on a real bus: who may tell it what, garcon's ports becoming host listeners and
//! going away, and the client requests with their checks. The guest is a stand-in on the
//! VM's "vsock.sock" that speaks what the VMM and garcon speak (`CONNECT P`, Hello,
//! ForwardPort, Ack, then an echo), because a real one needs a booted VM (the containers e2e
//! test has that).

use super::*;
use crate::bus::BusConfig;
use crate::bus::clients::Peer;
use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{read_message, write_message};
use cros_messages::garcon::{GarconReply, GarconRequest};
use cros_messages::{Envelope, Hello};
use std::net::Ipv4Addr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener};

/// A user who is not an administrator (crosd's tests run as root or as the user crosd runs
/// as, both administrators).
const ALICE: u32 = 4242;
const MALLORY: u32 = 4343;
const GARCON_PORT: u32 = 10000;

fn chunneld() -> Addr {
    Addr::host("chunneld")
}

/// Serves every connection as garcon would: "port P: " and then the bytes back.
fn stand_in_guest(uds: &std::path::Path) {
    let listener = UnixListener::bind(uds).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut line = String::new();
                s.read_line(&mut line).await.unwrap();
                assert_eq!(line, format!("CONNECT {GARCON_PORT}\n"));
                s.get_mut().write_all(b"OK 1\n").await.unwrap();
                let _: Hello = read_message(&mut s, MAX_CONTROL_FRAME).await.unwrap();
                let me = Hello::new(Addr::host("garcon"));
                write_message(s.get_mut(), &me, MAX_CONTROL_FRAME)
                    .await
                    .unwrap();
                let req: Envelope = read_message(&mut s, MAX_CONTROL_FRAME).await.unwrap();
                let Body::Garcon(GarconRequest::ForwardPort { port }) = req.body else {
                    panic!("{:?}", req.body);
                };
                let ack = req.reply(2, Body::GarconReply(GarconReply::Ack {}));
                write_message(s.get_mut(), &ack, MAX_CONTROL_FRAME)
                    .await
                    .unwrap();
                let mut data = Vec::new();
                s.read_to_end(&mut data).await.unwrap();
                let s = s.get_mut();
                s.write_all(format!("port {port}: ").as_bytes())
                    .await
                    .unwrap();
                s.write_all(&data).await.unwrap();
            });
        }
    });
}

struct World {
    bus: BusHandle,
    _dir: tempfile::TempDir,
    uds: String,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bus = BusHandle::new(BusConfig::default()).unwrap();
        let c = Chunneld::new(bus.clone(), SharedState::default()).start();
        bus.register(chunneld(), c.recipient());
        let uds = dir.path().join("vsock.sock");
        stand_in_guest(&uds);
        for (n, uid) in [(1, ALICE), (2, MALLORY)] {
            bus.clients().add_peer(
                Addr::client(n),
                Peer {
                    uid,
                    gid: uid,
                    pid: None,
                },
            );
        }
        Self {
            bus,
            uds: uds.to_string_lossy().into_owned(),
            _dir: dir,
        }
    }

    async fn ask(&self, from: &Addr, req: ChunneldRequest) -> Result<ChunneldReply, CrosError> {
        match self
            .bus
            .request(from, &chunneld(), Body::Chunneld(req))
            .await?
        {
            Body::ChunneldReply(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    async fn cicerone_says(&self, req: ChunneldRequest) {
        self.ask(&cicerone(), req).await.unwrap();
    }

    /// termina (Alice's) runs with penguin's garcon connected.
    async fn penguin_ready(&self) {
        self.cicerone_says(ChunneldRequest::NotifyVmStarted {
            vm: "termina".into(),
            owner_uid: ALICE,
            vsock_socket: self.uds.clone(),
        })
        .await;
        self.cicerone_says(ChunneldRequest::NotifyContainerReady {
            vm: "termina".into(),
            container: "penguin".into(),
            garcon_port: GARCON_PORT,
        })
        .await;
    }

    async fn ports(&self, ports: &[u16]) {
        self.cicerone_says(ChunneldRequest::UpdateListeningPorts {
            vm: "termina".into(),
            container: "penguin".into(),
            ports: ports.to_vec(),
        })
        .await;
    }

    async fn list(&self, from: &Addr, vm: &str) -> Result<Vec<PortForward>, CrosError> {
        match self
            .ask(from, ChunneldRequest::ListForwards { vm: vm.into() })
            .await?
        {
            ChunneldReply::Forwards { forwards } => Ok(forwards),
            other => panic!("{other:?}"),
        }
    }
}

fn alice() -> Addr {
    Addr::client(1)
}

fn mallory() -> Addr {
    Addr::client(2)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn through(port: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    c.write_all(payload).await?;
    c.shutdown().await?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).await?;
    Ok(out)
}

/// Whether 127.0.0.1:`port` refuses connections once the aborted accept loops have run
/// (a count of scheduler turns, not a time).
async fn closed_soon(port: u16) -> bool {
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_err()
        {
            return true;
        }
    }
    false
}

#[actix::test]
async fn garcons_ports_open_and_close_host_listeners() {
    let w = World::new();
    w.penguin_ready().await;
    let port = free_port();
    w.ports(&[port, 22, port]).await;
    let list = w.list(&alice(), "termina").await.unwrap();
    assert_eq!(
        list.len(),
        1,
        "port 22 is privileged, {port} once: {list:?}"
    );
    assert_eq!(
        (list[0].container_port, list[0].host_port, list[0].manual),
        (port, port, false)
    );
    assert!(
        matches!(&list[0].state, ForwardState::Listening { addrs } if addrs.contains(&format!("127.0.0.1:{port}"))),
        "{list:?}"
    );
    assert_eq!(
        through(port, b"hello").await.unwrap(),
        format!("port {port}: hello").as_bytes()
    );
    // The server in the container closed: so does the host listener.
    w.ports(&[]).await;
    assert!(closed_soon(port).await, "{port} still accepts");
    assert!(w.list(&alice(), "").await.unwrap().is_empty());

    // A stopped VM takes its forwards with it.
    w.ports(&[port]).await;
    w.cicerone_says(ChunneldRequest::NotifyVmStopped {
        vm: "termina".into(),
    })
    .await;
    assert!(
        closed_soon(port).await,
        "{port} still accepts after the VM stopped"
    );
    let e = w.list(&alice(), "termina").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

#[actix::test]
async fn a_stopped_container_loses_its_forwards_manual_ones_too() {
    let w = World::new();
    w.penguin_ready().await;
    let (auto, manual) = (free_port(), free_port());
    w.ports(&[auto]).await;
    let added = w
        .ask(
            &alice(),
            ChunneldRequest::AddForward {
                vm: "termina".into(),
                container: "penguin".into(),
                port: 80,
                host_port: manual,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&added, ChunneldReply::Added { forward } if forward.manual && forward.host_port == manual),
        "{added:?}"
    );
    assert_eq!(
        through(manual, b"x").await.unwrap(),
        b"port 80: x".as_slice()
    );
    // garcon's next list keeps the manual one.
    w.ports(&[]).await;
    assert_eq!(w.list(&alice(), "termina").await.unwrap().len(), 1);
    w.cicerone_says(ChunneldRequest::NotifyContainerStopped {
        vm: "termina".into(),
        container: "penguin".into(),
    })
    .await;
    assert!(closed_soon(manual).await);
    assert!(w.list(&alice(), "termina").await.unwrap().is_empty());
    // Not running: neither garcon's ports nor a manual add can reach it.
    let e = w
        .ask(
            &alice(),
            ChunneldRequest::AddForward {
                vm: "termina".into(),
                container: "penguin".into(),
                port: 80,
                host_port: manual,
            },
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("is not running"), "{e}");
}

#[actix::test]
async fn only_cicerone_says_what_runs() {
    let w = World::new();
    let e = w
        .ask(
            &alice(),
            ChunneldRequest::NotifyVmStarted {
                vm: "termina".into(),
                owner_uid: ALICE,
                vsock_socket: w.uds.clone(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    let guest = Addr::in_vm("garcon", "termina");
    w.penguin_ready().await;
    let e = w
        .ask(
            &guest,
            ChunneldRequest::UpdateListeningPorts {
                vm: "termina".into(),
                container: "penguin".into(),
                ports: vec![free_port()],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    // A guest cannot use the client requests either.
    let e = w
        .ask(
            &guest,
            ChunneldRequest::ListForwards {
                vm: "termina".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

#[actix::test]
async fn only_the_owner_sees_and_changes_a_vms_forwards() {
    let w = World::new();
    w.penguin_ready().await;
    let port = free_port();
    w.ports(&[port]).await;
    assert!(w.list(&mallory(), "").await.unwrap().is_empty());
    let e = w.list(&mallory(), "termina").await.unwrap_err();
    assert!(e.message.contains("no VM named \"termina\""), "{e}");
    let remove = ChunneldRequest::RemoveForward {
        vm: "termina".into(),
        container: "penguin".into(),
        port,
    };
    let e = w.ask(&mallory(), remove.clone()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = w
        .ask(
            &mallory(),
            ChunneldRequest::AddForward {
                vm: "termina".into(),
                container: "penguin".into(),
                port: 22,
                host_port: free_port(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    // The owner may, and removing an automatic forward closes it.
    assert_eq!(w.list(&alice(), "").await.unwrap().len(), 1);
    let removed = w.ask(&alice(), remove.clone()).await.unwrap();
    assert!(
        matches!(removed, ChunneldReply::Removed { .. }),
        "{removed:?}"
    );
    assert!(closed_soon(port).await);
    let e = w.ask(&alice(), remove).await.unwrap_err();
    assert!(e.message.contains("is not forwarded"), "{e}");
}

#[actix::test]
async fn bad_manual_forwards_are_refused_with_the_reason() {
    let w = World::new();
    w.penguin_ready().await;
    let add = |container: &str, port: u16, host_port: u16| ChunneldRequest::AddForward {
        vm: "termina".into(),
        container: container.into(),
        port,
        host_port,
    };
    let e = w.ask(&alice(), add("penguin", 0, 0)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    let e = w.ask(&alice(), add("nope", 80, 0)).await.unwrap_err();
    assert!(
        e.message.contains("\"nope\"") && e.message.contains("not running"),
        "{e}"
    );
    let e = w.ask(&alice(), add("../x", 80, 0)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    // Port 80 on host port 80 (host_port 0 means the same number): privileged.
    let e = w.ask(&alice(), add("penguin", 80, 0)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    // A host port someone holds: the bind error, and no entry left behind.
    let holder = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let held = holder.local_addr().unwrap().port();
    let e = w.ask(&alice(), add("penguin", 80, held)).await.unwrap_err();
    assert!(
        e.message.contains(&format!("127.0.0.1:{held}")) && e.message.contains("in use"),
        "{e}"
    );
    assert!(w.list(&alice(), "termina").await.unwrap().is_empty());
    // Automatic: listed as taken, the other port still forwarded.
    let free = free_port();
    w.ports(&[held, free]).await;
    let list = w.list(&alice(), "termina").await.unwrap();
    let state = |p: u16| &list.iter().find(|f| f.container_port == p).unwrap().state;
    assert!(
        matches!(state(held), ForwardState::Taken { reason } if reason.contains("in use")),
        "{list:?}"
    );
    assert!(
        matches!(state(free), ForwardState::Listening { .. }),
        "{list:?}"
    );
    assert_eq!(holder.local_addr().unwrap().port(), held);
}

#[test]
fn automatic_ports_are_unprivileged_unique_and_bounded() {
    let c = Container {
        vm: "termina".into(),
        container: "penguin".into(),
    };
    assert_eq!(auto_ports(&c, &[8080, 22, 8080, 1024, 1023]), [1024, 8080]);
    let many: Vec<u16> = (2000..3000).rev().collect();
    let got = auto_ports(&c, &many);
    assert_eq!(got.len(), MAX_AUTO_FORWARDS);
    assert_eq!(got[0], 2000);
}
