//! In-process request/reply through the bus: a client future asks concierge (on its own
//! arbiter thread) `ListVms` and waits for the reply.
//!
//! `sequential`: one request in flight (latency). `pipelined`: many in flight (throughput, the
//! figure the issue targets: >= 1,000,000 pairs/s). `bus_ping`: the bus answers itself (no actor
//! hop). Before divan's table, a summary with pairs/s and latency percentiles is printed.

use actix::System;
use cros_actors::{BusConfig, BusHandle, HostConfig, start_host_actors};
use cros_messages::bus::BusRequest;
use cros_messages::concierge::ConciergeRequest;
use cros_messages::{Addr, Body};
use divan::Bencher;
use divan::counter::ItemsCount;
use futures_util::future::join_all;
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
    let config = HostConfig {
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
    };
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

fn list_vms() -> Body {
    Body::Concierge(ConciergeRequest::ListVms {})
}

async fn pipelined(bus: &BusHandle, from: &Addr, to: &Addr, n: usize, body: fn() -> Body) {
    let mut left = n;
    while left > 0 {
        let k = left.min(WINDOW);
        let replies = join_all((0..k).map(|_| bus.request(from, to, body()))).await;
        for r in replies {
            if let Err(e) = r {
                panic!("request failed: {e}");
            }
        }
        left -= k;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary() {
    let f = fixture();
    let (from, concierge) = (Addr::client(1), Addr::host("concierge"));
    f.sys.block_on(async {
        // Warm up, then one large pipelined run for throughput.
        pipelined(&f.bus, &from, &concierge, 100_000, list_vms).await;
        let n = 1_000_000;
        let t = Instant::now();
        pipelined(&f.bus, &from, &concierge, n, list_vms).await;
        let el = t.elapsed();
        println!(
            "bus pipelined ({WINDOW} in flight): {n} request/reply pairs in {el:?} = {:.0} pairs/s",
            n as f64 / el.as_secs_f64()
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
