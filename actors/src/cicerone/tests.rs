//! cicerone on a real bus: its VM table, who may ask what, and garcon's token check. The
//! guest side (tremplin, garcon) is the end-to-end suite's (tests/tests/containers.rs); here no
//! VM runs, so nothing answers for `tremplin@<vm>` unless a test says so.

use super::*;
use crate::bus::BusConfig;
use crate::bus::clients::Peer;
use actix::Message;
use cros_messages::ErrorKind;
use cros_messages::cicerone::CiceroneRequest;

fn started(vm: &str, token: &str, owner_uid: u32) -> Body {
    Body::Cicerone(CiceroneRequest::NotifyVmStarted {
        vm: vm.into(),
        cid: 3,
        token: token.into(),
        pid: 1,
        owner_uid,
        vsock_socket: String::new(),
    })
}

fn concierge() -> Addr {
    Addr::host("concierge")
}

/// A bus with cicerone on it and a client connection of user `uid`.
fn bus_with_cicerone(uid: u32) -> (BusHandle, Addr) {
    let (bus, client, _) = bus_with_cicerone_actor(uid);
    (bus, client)
}

/// The token cicerone holds for a container (it is in no reply: it goes to the container only).
struct TokenOf(&'static str, &'static str);

impl Message for TokenOf {
    type Result = Option<String>;
}

impl Handler<TokenOf> for Cicerone {
    type Result = Option<String>;

    fn handle(&mut self, TokenOf(vm, c): TokenOf, _: &mut Context<Self>) -> Option<String> {
        Some(self.vms.get(vm)?.containers.get(c)?.token.clone())
    }
}

fn bus_with_cicerone_actor(uid: u32) -> (BusHandle, Addr, actix::Addr<Cicerone>) {
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let cicerone = Cicerone::new(bus.clone()).start();
    bus.register(Cicerone::me(), cicerone.clone().recipient());
    let client = Addr::client(7);
    bus.clients().add_peer(
        client.clone(),
        Peer {
            uid,
            gid: uid,
            pid: None,
        },
    );
    (bus, client, cicerone)
}

async fn ask(bus: &BusHandle, from: &Addr, body: Body) -> Result<Body, CrosError> {
    bus.request_with_deadline(
        from,
        &Cicerone::me(),
        body,
        std::time::Duration::from_secs(5),
    )
    .await
}

fn list(vm: &str) -> Body {
    Body::Cicerone(CiceroneRequest::ListRunningContainers { vm: vm.into() })
}

#[actix::test]
async fn only_concierge_fills_the_vm_table_and_a_late_stop_of_an_old_run_is_ignored() {
    let (bus, client) = bus_with_cicerone(0);
    let err = ask(&bus, &client, started("termina", "t1", 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    assert!(err.message.contains("client-7"), "{err}");
    let err = ask(&bus, &client, list("termina")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");

    ask(&bus, &concierge(), started("termina", "t2", 0))
        .await
        .unwrap();
    let stop = |token: &str| {
        Body::Cicerone(CiceroneRequest::NotifyVmStopped {
            vm: "termina".into(),
            token: token.into(),
        })
    };
    ask(&bus, &concierge(), stop("t1")).await.unwrap();
    let sv = CiceroneRequest::StartLxd {
        vm: "termina".into(),
    };
    // Still known (no tremplin answers, so StartLxd waits for TremplinReady and gives up).
    let err = bus
        .request_with_deadline(
            &client,
            &Cicerone::me(),
            Body::Cicerone(sv.clone()),
            std::time::Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    ask(&bus, &concierge(), stop("t2")).await.unwrap();
    let err = ask(&bus, &client, Body::Cicerone(sv)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[actix::test]
async fn a_user_reaches_only_the_containers_of_its_own_vms() {
    let (bus, client) = bus_with_cicerone(4321);
    ask(&bus, &concierge(), started("rootvm", "t", 0))
        .await
        .unwrap();
    ask(&bus, &concierge(), started("uservm", "u", 4321))
        .await
        .unwrap();
    let err = ask(&bus, &client, list("rootvm")).await.unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::NotFound,
        "as if it did not exist: {err}"
    );
    // Its own VM gets through to tremplin (which does not run here).
    let err = ask(&bus, &client, list("uservm")).await.unwrap_err();
    assert!(err.message.contains("tremplin@uservm"), "{err}");
    // Guests never manage containers.
    let guest = Addr::in_vm("garcon", "uservm");
    let err = ask(&bus, &guest, list("uservm")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[actix::test]
async fn bad_names_and_user_names_are_refused_before_anything_is_asked() {
    let (bus, client) = bus_with_cicerone(0);
    ask(&bus, &concierge(), started("termina", "t", 0))
        .await
        .unwrap();
    let err = ask(
        &bus,
        &client,
        Body::Cicerone(CiceroneRequest::StartLxdContainer {
            vm: "termina".into(),
            container: "../etc".into(),
            privilege_level: Default::default(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(err.message.contains("../etc"), "{err}");
    let err = ask(
        &bus,
        &client,
        Body::Cicerone(CiceroneRequest::SetUpLxdContainerUser {
            vm: "termina".into(),
            container: "penguin".into(),
            username: "root:x:0".into(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(err.message.contains("root:x:0"), "{err}");
}

#[actix::test]
async fn an_unreachable_image_server_is_one_clear_error() {
    let (bus, client) = bus_with_cicerone(0);
    ask(&bus, &concierge(), started("termina", "t", 0))
        .await
        .unwrap();
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = ask(
        &bus,
        &client,
        Body::Cicerone(CiceroneRequest::CreateLxdContainer {
            vm: "termina".into(),
            container: "penguin".into(),
            image_server: format!("http://127.0.0.1:{port}"),
            image_alias: "busybox".into(),
            rootfs_path: String::new(),
            metadata_path: String::new(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(
        err.message.contains(&format!(
            "image server http://127.0.0.1:{port} is unreachable"
        )),
        "{err}"
    );
    assert!(!err.message.contains('\n'), "one line: {err}");
}

#[actix::test]
async fn container_ready_needs_the_token_of_a_container_of_that_vm() {
    let (bus, client, cicerone) = bus_with_cicerone_actor(0);
    ask(&bus, &concierge(), started("termina", "t", 0))
        .await
        .unwrap();
    ask(&bus, &concierge(), started("other", "o", 0))
        .await
        .unwrap();
    // StartLxdContainer records the container's token before it asks tremplin (which is not
    // there: the request fails, the token stays).
    let start = Body::Cicerone(CiceroneRequest::StartLxdContainer {
        vm: "termina".into(),
        container: "penguin".into(),
        privilege_level: Default::default(),
    });
    assert!(ask(&bus, &client, start).await.is_err());
    let token = cicerone
        .send(TokenOf("termina", "penguin"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token.len(), 36, "a v4 UUID: {token}");
    let ready = |token: &str| {
        Body::Cicerone(CiceroneRequest::ContainerReady {
            token: token.into(),
            garcon_port: 10000,
        })
    };
    for (from, token) in [
        (Addr::in_vm("garcon", "termina"), "not-the-token"),
        (Addr::in_vm("garcon", "termina"), ""),
        // Another VM's garcon with termina's token: the token is only good in its VM.
        (Addr::in_vm("garcon", "other"), token.as_str()),
        (Addr::in_vm("maitred", "termina"), token.as_str()),
        (client.clone(), token.as_str()),
    ] {
        let err = ask(&bus, &from, ready(token)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied, "{from}: {err}");
    }
    let garcon = Addr::in_container("garcon", "termina", "penguin");
    assert!(!bus.is_registered(&garcon));
    let garcon_vm = Addr::in_vm("garcon", "termina");
    let err = ask(&bus, &garcon_vm, ready_on(&token, 80))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    ask(&bus, &garcon_vm, ready(&token)).await.unwrap();
    assert!(
        bus.is_registered(&garcon),
        "garcon@termina/penguin is on the bus"
    );
    // The VM stops: its containers' garcons go with it.
    ask(
        &bus,
        &concierge(),
        Body::Cicerone(CiceroneRequest::NotifyVmStopped {
            vm: "termina".into(),
            token: String::new(),
        }),
    )
    .await
    .unwrap();
    assert!(!bus.is_registered(&garcon));
}

fn ready_on(token: &str, garcon_port: u32) -> Body {
    Body::Cicerone(CiceroneRequest::ContainerReady {
        token: token.into(),
        garcon_port,
    })
}

/// chunneld's forwards of termina, as a host actor sees them (None: no VM termina).
async fn forwards(bus: &BusHandle) -> Option<Vec<u16>> {
    use cros_messages::chunneld::{ChunneldReply, ChunneldRequest};
    let req = Body::Chunneld(ChunneldRequest::ListForwards {
        vm: "termina".into(),
    });
    match bus
        .request(&concierge(), &Addr::host("chunneld"), req)
        .await
    {
        Ok(Body::ChunneldReply(ChunneldReply::Forwards { forwards })) => {
            Some(forwards.iter().map(|f| f.container_port).collect())
        }
        _ => None,
    }
}

/// Waits (a bounded number of short turns) until chunneld's forwards of termina are `want`:
/// cicerone tells chunneld in the background.
async fn forwards_become(bus: &BusHandle, want: Option<Vec<u16>>) {
    let mut got = None;
    for _ in 0..100 {
        got = forwards(bus).await;
        if got == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("chunneld's forwards of termina: {got:?}, wanted {want:?}");
}

#[actix::test]
async fn garcons_listening_ports_reach_chunneld_by_token_and_go_with_the_vm() {
    use cros_messages::garcon::GarconEvent;
    let (bus, client, cicerone) = bus_with_cicerone_actor(0);
    let chunneld = crate::chunneld::Chunneld::new(bus.clone(), Default::default()).start();
    bus.register(Addr::host("chunneld"), chunneld.recipient());
    ask(&bus, &concierge(), started("termina", "t", 0))
        .await
        .unwrap();
    forwards_become(&bus, Some(vec![])).await;
    let start = Body::Cicerone(CiceroneRequest::StartLxdContainer {
        vm: "termina".into(),
        container: "penguin".into(),
        privilege_level: Default::default(),
    });
    assert!(ask(&bus, &client, start).await.is_err());
    let token = cicerone
        .send(TokenOf("termina", "penguin"))
        .await
        .unwrap()
        .unwrap();
    let garcon_vm = Addr::in_vm("garcon", "termina");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let event = |token: &str| {
        Body::GarconEvent(GarconEvent::ListeningPorts {
            token: token.into(),
            ports: vec![port],
        })
    };
    // Before ContainerReady, and with a token of no container: nothing is forwarded.
    bus.publish(&garcon_vm, event(&token));
    bus.publish(&garcon_vm, event("not-the-token"));
    ask(&bus, &garcon_vm, ready_on(&token, 10000))
        .await
        .unwrap();
    bus.publish(&garcon_vm, event("not-the-token"));
    forwards_become(&bus, Some(vec![])).await;
    bus.publish(&garcon_vm, event(&token));
    forwards_become(&bus, Some(vec![port])).await;
    ask(
        &bus,
        &concierge(),
        Body::Cicerone(CiceroneRequest::NotifyVmStopped {
            vm: "termina".into(),
            token: String::new(),
        }),
    )
    .await
    .unwrap();
    forwards_become(&bus, None).await;
}
