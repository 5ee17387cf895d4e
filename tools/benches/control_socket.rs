//! Request/reply round trips over crosd's Unix control socket with one client: the real daemon
//! code (`Daemon::start` + `run_until`, as `crosd` runs it) on its own thread, the real blocking
//! client library, one request in flight at a time.
//!
//! Prints messages/s, p50 and p99 (the targets: p99 < 200 us, >= 50,000 round trips/s)
//! for `bus` Ping (answered by the bus itself) and concierge ListVms (one hop to the actor's
//! arbiter), then divan's table.

use cros_messages::bus::BusRequest;
use cros_messages::concierge::ConciergeRequest;
use cros_messages::{Addr, Body};
use cros_tools::client::Client;
use cros_tools::daemon::{Daemon, DaemonConfig};
use divan::Bencher;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon runs for the whole bench process; its temp dir lives as long.
fn daemon_socket() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let config = DaemonConfig::new(dir.join("state"), dir.join("run"));
        let socket = config.socket.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let daemon = Daemon::start(&config).await.expect("start daemon");
                ready_tx.send(()).expect("ready");
                daemon.run_until(std::future::pending()).await;
            })
        });
        ready_rx.recv().expect("daemon started");
        socket
    })
}

fn ping() -> Body {
    Body::Bus(BusRequest::Ping { seq: 1 })
}

fn list_vms() -> Body {
    Body::Concierge(ConciergeRequest::ListVms {})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn measure(name: &str, to: &Addr, body: fn() -> Body) {
    let mut client = Client::connect(daemon_socket()).expect("connect");
    for _ in 0..10_000 {
        client.call(to, body(), TIMEOUT).expect("warm-up");
    }
    let n = 100_000;
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        client.call(to, body(), TIMEOUT).expect("reply");
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    println!(
        "control socket, 1 client, {name}: {n} round trips in {total:?} = {:.0}/s, p50 {:?}, p99 {:?}, max {:?}",
        n as f64 / total.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[n - 1]
    );
}

fn main() {
    measure("bus Ping", &Addr::host("bus"), ping);
    measure("concierge ListVms", &Addr::host("concierge"), list_vms);
    divan::main();
}

#[divan::bench]
fn round_trip_bus_ping(bencher: Bencher) {
    let mut client = Client::connect(daemon_socket()).expect("connect");
    let bus = Addr::host("bus");
    bencher.bench_local(|| client.call(&bus, ping(), TIMEOUT).expect("reply"));
}

#[divan::bench]
fn round_trip_concierge_list_vms(bencher: Bencher) {
    let mut client = Client::connect(daemon_socket()).expect("connect");
    let concierge = Addr::host("concierge");
    bencher.bench_local(|| client.call(&concierge, list_vms(), TIMEOUT).expect("reply"));
}
