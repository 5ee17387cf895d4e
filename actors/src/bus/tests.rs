//! Bus tests: real actors on real arbiters, real mailboxes, a real trace file.

use super::*;
use crate::config::HostConfig;
use crate::host::start_host_actors;
use crate::supervisor::spawn_supervised;
use actix::{Actor, Context, Handler, ResponseFuture};
use cros_messages::ErrorKind;
use cros_messages::concierge::{ConciergeEvent, ConciergeReply};
use cros_messages::trace::TraceReader;

/// A test actor (`echo`): answers Ping with Pong, panics on Ping 666, and never answers
/// Ping 999 (for the deadline test).
struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Echo {
    type Result = ResponseFuture<Body>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        match msg.env.body {
            Body::Bus(BusRequest::Ping { seq: 666 }) => panic!("echo was told to crash"),
            Body::Bus(BusRequest::Ping { seq: 999 }) => Box::pin(std::future::pending()),
            Body::Bus(BusRequest::Ping { seq }) => {
                Box::pin(async move { Body::BusReply(BusReply::Pong { seq }) })
            }
            other => Box::pin(async move { CrosError::invalid(other.type_name()).into() }),
        }
    }
}

fn ping(seq: u64) -> Body {
    Body::Bus(BusRequest::Ping { seq })
}

fn me() -> Addr {
    Addr::client(1)
}

async fn bus_with_echo() -> BusHandle {
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    spawn_supervised(&bus, Addr::host("echo"), || Echo)
        .await
        .unwrap();
    bus
}

#[actix::test]
async fn routes_request_to_registered_actor_and_back() {
    let bus = bus_with_echo().await;
    let reply = bus.request(&me(), &Addr::host("echo"), ping(7)).await;
    assert_eq!(reply, Ok(Body::BusReply(BusReply::Pong { seq: 7 })));
    bus.shutdown();
}

#[actix::test]
async fn unknown_actor_is_not_found() {
    let bus = bus_with_echo().await;
    let err = bus
        .request(
            &me(),
            &Addr::in_vm("maitred", "termina"),
            Body::Maitred(cros_messages::maitred::MaitredRequest::GetKernelVersion {}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains("maitred@termina"), "{err}");
    bus.shutdown();
}

#[actix::test]
async fn wrong_family_for_a_known_actor_is_refused_before_delivery() {
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let err = bus
        .request(
            &me(),
            &Addr::host("concierge"),
            Body::Bus(BusRequest::ListActors {}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(err.message.contains("Concierge"), "{err}");
}

#[actix::test]
async fn replies_and_events_are_not_routed_as_requests() {
    let bus = bus_with_echo().await;
    let err = bus
        .request(
            &me(),
            &Addr::host("echo"),
            Body::BusReply(BusReply::Pong { seq: 1 }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    bus.shutdown();
}

#[actix::test]
async fn missing_reply_is_a_timeout_not_a_hang() {
    let bus = bus_with_echo().await;
    let err = bus
        .request_with_deadline(
            &me(),
            &Addr::host("echo"),
            ping(999),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.message.contains("echo"), "{err}");
    // The actor is still there for the next request.
    assert!(
        bus.request(&me(), &Addr::host("echo"), ping(1))
            .await
            .is_ok()
    );
    bus.shutdown();
}

#[actix::test]
async fn bus_answers_list_and_ping_itself() {
    let bus = bus_with_echo().await;
    let bus_addr = bus.addr().clone();
    let reply = bus
        .request(&me(), &bus_addr, Body::Bus(BusRequest::ListActors {}))
        .await
        .unwrap();
    let Body::BusReply(BusReply::Actors { actors }) = reply else {
        panic!("unexpected {reply:?}")
    };
    let names: Vec<String> = actors.iter().map(|a| a.addr.to_string()).collect();
    assert_eq!(names, ["bus", "echo"]);
    assert_eq!(
        bus.request(&me(), &bus_addr, ping(3)).await,
        Ok(Body::BusReply(BusReply::Pong { seq: 3 }))
    );
    // Subscribe without a connection has nowhere to send events.
    let err = bus
        .request(
            &me(),
            &bus_addr,
            Body::Bus(BusRequest::Subscribe { prefixes: vec![] }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    bus.shutdown();
}

#[actix::test]
async fn supervisor_restarts_a_panicked_actor_and_counts_it() {
    let bus = bus_with_echo().await;
    let echo = Addr::host("echo");
    let err = bus.request(&me(), &echo, ping(666)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("echo"), "{err}");
    // The restart happens on echo's arbiter; wait for it (bounded) through the public API.
    let mut restarted = None;
    for _ in 0..200 {
        let info = bus.actors().into_iter().find(|a| a.addr == echo).unwrap();
        if info.restarts == 1
            && let Ok(reply) = bus.request(&me(), &echo, ping(5)).await
        {
            restarted = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(restarted, Some(Body::BusReply(BusReply::Pong { seq: 5 })));
    bus.shutdown();
}

#[actix::test]
async fn events_reach_matching_subscribers_only() {
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let (all_tx, mut all_rx) = tokio::sync::mpsc::unbounded_channel();
    let (vm_tx, mut vm_rx) = tokio::sync::mpsc::unbounded_channel();
    let (disk_tx, mut disk_rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe(Addr::client(1), vec![], channel_sink(all_tx));
    bus.subscribe(
        Addr::client(2),
        vec!["ConciergeEvent::VmStarting".into()],
        channel_sink(vm_tx),
    );
    bus.subscribe(
        Addr::client(3),
        vec!["ConciergeEvent::DiskImageProgress".into()],
        channel_sink(disk_tx),
    );
    let event = Body::ConciergeEvent(ConciergeEvent::VmStartingUp {
        name: "termina".into(),
    });
    bus.publish(&Addr::host("concierge"), event.clone());
    let got = all_rx.recv().await.unwrap();
    assert_eq!(got.body, event);
    assert_eq!(got.to, Addr::client(1));
    assert_eq!(got.from, Addr::host("concierge"));
    assert_eq!(vm_rx.recv().await.unwrap().to, Addr::client(2));
    assert!(disk_rx.try_recv().is_err());
    // A subscriber whose channel closed is dropped at the next publish.
    drop(all_rx);
    bus.publish(&Addr::host("concierge"), event);
    assert_eq!(bus.subscriber_count(), 2);
}

#[actix::test]
async fn host_actors_answer_through_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let config = HostConfig::new(dir.path().join("state"), dir.path().join("run"));
    start_host_actors(&bus, &config).await.unwrap();
    // concierge answers a client only for a connection's peer (see bus::clients).
    let peer = super::clients::Peer {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        pid: None,
    };
    bus.clients().add_peer(me(), peer);
    let names: Vec<String> = bus.actors().iter().map(|a| a.addr.to_string()).collect();
    assert_eq!(
        names,
        [
            "bus",
            "chunneld",
            "cicerone",
            "concierge",
            "imageloader",
            "patchpanel",
            "seneschal",
            "vmlog_forwarder"
        ]
    );
    let reply = bus
        .request(
            &me(),
            &Addr::host("concierge"),
            Body::request_from_json(cros_messages::ActorKind::Concierge, r#"{"ListVms":{}}"#)
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply,
        Ok(Body::ConciergeReply(ConciergeReply::Vms { vms: vec![] }))
    );
    let err = bus
        .request(
            &me(),
            &Addr::host("concierge"),
            Body::request_from_json(
                cros_messages::ActorKind::Concierge,
                r#"{"GetVmInfo":{"name":"termina"}}"#,
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    bus.shutdown();
}

#[actix::test]
async fn trace_records_requests_and_replies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.trace");
    let bus = BusHandle::new(BusConfig {
        trace: Some(path.clone()),
        ..BusConfig::default()
    })
    .unwrap();
    spawn_supervised(&bus, Addr::host("echo"), || Echo)
        .await
        .unwrap();
    bus.request(&me(), &Addr::host("echo"), ping(1))
        .await
        .unwrap();
    bus.shutdown();
    let records: Vec<_> = TraceReader::new(std::fs::File::open(&path).unwrap())
        .unwrap()
        .map(|r| r.unwrap().1)
        .collect();
    let types: Vec<&str> = records.iter().map(|r| r.msg_type.as_str()).collect();
    assert_eq!(types, ["Bus::Ping", "BusReply::Pong"]);
    let request = records[0].decode_envelope().unwrap();
    let reply = records[1].decode_envelope().unwrap();
    assert_eq!(reply.reply_to, Some(request.id));
    assert_eq!(reply.from, Addr::host("echo"));
    assert_eq!(reply.to, me());
    assert!(records[1].mono_ns >= records[0].mono_ns);
}

#[actix::test]
async fn colocated_actor_panics_without_taking_its_thread_down() {
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let echo = Addr::host("echo");
    crate::supervisor::spawn_supervised_on(&bus, echo.clone(), &actix::Arbiter::current(), || Echo)
        .await
        .unwrap();
    assert!(bus.request(&me(), &echo, ping(1)).await.is_ok());
    let err = bus.request(&me(), &echo, ping(666)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    // This test runs on the same thread as echo: reaching here means the panic stayed in
    // echo's task. Wait (bounded) for the restart.
    let mut restarted = false;
    for _ in 0..200 {
        if bus.request(&me(), &echo, ping(2)).await.is_ok() {
            restarted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(restarted);
    let info = bus.actors().into_iter().find(|a| a.addr == echo).unwrap();
    assert_eq!(info.restarts, 1);
}

/// Answers every Ping with Pong 1 (a stand-in for a trace responder).
struct One;

impl Actor for One {
    type Context = Context<Self>;
}

impl Handler<Deliver> for One {
    type Result = ResponseFuture<Body>;

    fn handle(&mut self, _msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        Box::pin(async { Body::BusReply(BusReply::Pong { seq: 1 }) })
    }
}

#[actix::test]
async fn a_pinned_route_outlives_registrations_and_unregistrations() {
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    let addr = Addr::host("echo");
    bus.pin(addr.clone(), One.start().recipient());
    bus.register(addr.clone(), Echo.start().recipient());
    bus.unregister(&addr);
    assert!(bus.is_registered(&addr));
    let reply = bus.request(&me(), &addr, ping(7)).await;
    assert_eq!(reply, Ok(Body::BusReply(BusReply::Pong { seq: 1 })));
}

#[test]
fn a_request_that_names_its_timeout_gets_it_and_others_the_default() {
    let bus = BusHandle::new(BusConfig {
        default_deadline: Duration::from_secs(7),
        ..BusConfig::default()
    })
    .unwrap();
    let start: cros_messages::concierge::ConciergeRequest =
        serde_json::from_str(r#"{"StartVm":{"name":"t","timeout_secs":100}}"#).unwrap();
    assert_eq!(
        bus.deadline_for(&Body::Concierge(start)),
        Duration::from_secs(100) + cros_messages::envelope::REQUEST_TIMEOUT_SLACK
    );
    assert_eq!(bus.deadline_for(&ping(1)), Duration::from_secs(7));
}
