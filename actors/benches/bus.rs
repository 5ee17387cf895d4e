//! In-process request/reply through the bus: a client future asks concierge `ListVms` and waits
//! for the reply.
//!
//! `sequential`: one request in flight (latency). `pipelined`: many in flight (throughput, the
//! figure the issue targets: >= 1,000,000 pairs/s), with the host actors placed as crosd places
//! them (`start_host_actors`: on the caller's arbiter). `own_thread`: concierge on an arbiter of
//! its own (a thread hop each way), for comparison. `bus_ping`: the bus answers itself (no actor).
//! Before divan's table, a summary with pairs/s and latency percentiles is printed for both
//! placements.

use actix::System;
use cros_actors::concierge::Concierge;
use cros_actors::{BusConfig, BusHandle, HostConfig, spawn_supervised, start_host_actors};
use cros_messages::bus::BusRequest;
use cros_messages::concierge::ConciergeRequest;
use cros_messages::{Addr, Body};
use divan::Bencher;
use divan::counter::ItemsCount;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::time::{Duration, Instant};

/// Requests in flight at once in the pipelined runs.
const WINDOW: usize = 256;
const BATCH: usize = 4096;

fn main() {
    summary();
    divan::main();
}

struct Fixture {
    sys: actix::SystemRunner,
    bus: BusHandle,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = System::new();
    let config = HostConfig::new(dir.path().join("state"), dir.path().join("run"));
    let bus = sys.block_on(async {
        let bus = BusHandle::new(BusConfig::default()).expect("bus");
        start_host_actors(&bus, &config).await.expect("host actors");
        bus
    });
    Fixture {
        sys,
        bus,
        _dir: dir,
    }
}

/// A bus with only concierge, on an arbiter thread of its own.
fn own_thread_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = System::new();
    let config = HostConfig::new(dir.path().join("state"), dir.path().join("run"));
    let bus = sys.block_on(async {
        let bus = BusHandle::new(BusConfig::default()).expect("bus");
        let bus2 = bus.clone();
        spawn_supervised(&bus, Addr::host("concierge"), move || {
            Concierge::new(bus2.clone(), config.clone())
        })
        .await
        .expect("concierge");
        // The benchmark's client, as a control connection registers it.
        let peer = cros_actors::bus::clients::Peer {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pid: None,
        };
        bus.clients().add_peer(Addr::client(1), peer);
        bus
    });
    Fixture {
        sys,
        bus,
        _dir: dir,
    }
}

fn list_vms() -> Body {
    Body::Concierge(ConciergeRequest::ListVms {})
}

/// Keeps `WINDOW` requests in flight (a sliding window: a new request goes out as each reply
/// comes in, so the client and the actor work at the same time) until `n` have completed.
async fn pipelined(bus: &BusHandle, from: &Addr, to: &Addr, n: usize, body: fn() -> Body) {
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < n.min(WINDOW) {
        in_flight.push(bus.request(from, to, body()));
        sent += 1;
    }
    while let Some(reply) = in_flight.next().await {
        if let Err(e) = reply {
            panic!("request failed: {e}");
        }
        if sent < n {
            in_flight.push(bus.request(from, to, body()));
            sent += 1;
        }
    }
}

/// CPU time (user + system, all threads) this process has used.
fn cpu_time() -> Duration {
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary() {
    summary_of(
        "crosd layout: host actors on the caller's arbiter",
        fixture(),
    );
    summary_of(
        "concierge on an arbiter thread of its own",
        own_thread_fixture(),
    );
}

fn summary_of(placement: &str, f: Fixture) {
    println!("-- {placement}");
    let (from, concierge) = (Addr::client(1), Addr::host("concierge"));
    f.sys.block_on(async {
        // Warm up, then one large pipelined run for throughput.
        pipelined(&f.bus, &from, &concierge, 100_000, list_vms).await;
        let n = 1_000_000;
        let (t, cpu) = (Instant::now(), cpu_time());
        pipelined(&f.bus, &from, &concierge, n, list_vms).await;
        let (el, cpu) = (t.elapsed(), cpu_time() - cpu);
        println!(
            "bus pipelined ({WINDOW} in flight): {n} request/reply pairs in {el:?} = {:.0} pairs/s; \
             CPU {:.0} ns per pair, both threads together (ceiling if 2 cores were ours alone: ~{:.0} pairs/s)",
            n as f64 / el.as_secs_f64(),
            cpu.as_nanos() as f64 / n as f64,
            2.0 * n as f64 / cpu.as_secs_f64()
        );
        let mut lat = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            let t = Instant::now();
            f.bus
                .request(&from, &concierge, list_vms())
                .await
                .expect("reply");
            lat.push(t.elapsed());
        }
        lat.sort();
        let total: Duration = lat.iter().sum();
        println!(
            "bus sequential (1 in flight): {:.0} pairs/s, p50 {:?}, p99 {:?}, max {:?}",
            lat.len() as f64 / total.as_secs_f64(),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat[lat.len() - 1]
        );
    });
    f.bus.shutdown();
}

#[divan::bench]
fn sequential(bencher: Bencher) {
    let f = fixture();
    let (from, to) = (Addr::client(1), Addr::host("concierge"));
    bencher.bench_local(|| {
        f.sys
            .block_on(f.bus.request(&from, &to, list_vms()))
            .expect("reply")
    });
    f.bus.shutdown();
}

#[divan::bench]
fn pipelined_concierge(bencher: Bencher) {
    let f = fixture();
    let (from, to) = (Addr::client(1), Addr::host("concierge"));
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        f.sys
            .block_on(pipelined(&f.bus, &from, &to, BATCH, list_vms))
    });
    f.bus.shutdown();
}

#[divan::bench]
fn pipelined_concierge_own_thread(bencher: Bencher) {
    let f = own_thread_fixture();
    let (from, to) = (Addr::client(1), Addr::host("concierge"));
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        f.sys
            .block_on(pipelined(&f.bus, &from, &to, BATCH, list_vms))
    });
    f.bus.shutdown();
}

#[divan::bench]
fn pipelined_bus_ping(bencher: Bencher) {
    let f = fixture();
    let (from, to) = (Addr::client(1), f.bus.addr().clone());
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        f.sys.block_on(pipelined(&f.bus, &from, &to, BATCH, || {
            Body::Bus(BusRequest::Ping { seq: 1 })
        }))
    });
    f.bus.shutdown();
}
