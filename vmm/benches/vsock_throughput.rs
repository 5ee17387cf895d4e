//! Throughput of the vsock device model: host → guest and guest → host through the real device
//! thread, with the test guest driver (tests/support/guest_driver.rs) playing the guest over
//! guest memory and a real Unix socket on the host side; beside AF_UNIX socketpair throughput
//! measured in the same run as the reference.
//!
//! The guest driver leaves payloads where the device put them (host → guest) and sends tx
//! buffers it filled once (guest → host): the guest application's own copy is not the device's
//! work, so each path costs what AF_UNIX costs (a copy in, a copy out) plus the device.
//!
//! Run: `cargo bench -p cros-vmm --bench vsock_throughput` (BENCH_MIB=N sets the bytes moved
//! per run, default 128 MiB; BENCH_ROUNDS=N the runs per figure, default 5).

#[path = "../tests/support/guest_driver.rs"]
mod guest_driver;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use cros_vmm::devices::vsock::packet::{HEADER_SIZE, op};
use guest_driver::{Guest, hdr};

const KIB: usize = 1024;
const GUEST_BUF_ALLOC: u32 = 256 * 1024;

fn total_bytes() -> usize {
    std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(128)
        << 20
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// Reads until `total` bytes arrived.
fn drain(mut s: impl Read, total: usize) {
    let mut buf = vec![0u8; 64 * KIB];
    let mut got = 0;
    while got < total {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "stream ended after {got} of {total} bytes");
        got += n;
    }
}

fn socketpair_throughput(write_size: usize, total: usize) -> f64 {
    let (mut a, b) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || drain(b, total));
    let chunk = vec![0x42u8; write_size];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = write_size.min(total - sent);
        a.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    reader.join().unwrap();
    mb_per_s(total, start.elapsed().as_secs_f64())
}

fn connect_host_to_guest(g: &mut Guest, uds: &Path) -> (UnixStream, u32) {
    let mut s = UnixStream::connect(uds).unwrap();
    s.write_all(b"CONNECT 5001\n").unwrap();
    let req = g.recv();
    assert_eq!(req.hdr.op, op::REQUEST);
    let host_port = req.hdr.src_port;
    g.send(hdr(op::RESPONSE, 5001, host_port, GUEST_BUF_ALLOC, 0), &[]);
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert!(line.starts_with(b"OK "));
    (s, host_port)
}

/// Host writes `total` bytes in `write_size` writes; the guest consumes them and returns credit
/// with a CREDIT_UPDATE once a quarter of its buffer was consumed.
fn host_to_guest(write_size: usize, rx_buf_size: u32, total: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let mut g = Guest::start(&uds, 128, rx_buf_size);
    let (s, host_port) = connect_host_to_guest(&mut g, &uds);
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut s = s;
        let chunk = vec![0x42u8; write_size];
        let mut sent = 0;
        while sent < total {
            let n = write_size.min(total - sent);
            s.write_all(&chunk[..n]).unwrap();
            sent += n;
        }
        s
    });
    let mut got = 0usize;
    let mut fwd_sent = 0usize;
    while got < total {
        let h = g.recv_header_only();
        if h.op != op::RW {
            continue;
        }
        got += h.len as usize;
        // Like Linux, handle the whole batch of used buffers before returning credit.
        if got - fwd_sent >= GUEST_BUF_ALLOC as usize / 4 && !g.rxq.has_used() {
            g.send(
                hdr(
                    op::CREDIT_UPDATE,
                    5001,
                    host_port,
                    GUEST_BUF_ALLOC,
                    got as u32,
                ),
                &[],
            );
            fwd_sent = got;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(writer.join().unwrap());
    g.stop();
    mb_per_s(total, elapsed)
}

/// The guest sends `total` bytes in `write_size` packets within the device's credit; a host
/// listener on `uds_7000` reads them.
fn guest_to_host(write_size: usize, total: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let listener =
        std::os::unix::net::UnixListener::bind(cros_vmm::devices::vsock::port_path(&uds, 7000))
            .unwrap();
    let mut g = Guest::start(&uds, 128, (HEADER_SIZE + 4 * KIB) as u32);
    g.send(hdr(op::REQUEST, 40000, 7000, GUEST_BUF_ALLOC, 0), &[]);
    let (s, _) = listener.accept().unwrap();
    assert_eq!(g.recv().hdr.op, op::RESPONSE);
    let reader = std::thread::spawn(move || drain(s, total));
    let start = Instant::now();
    g.send_stream_uncopied(40000, 7000, total, write_size);
    reader.join().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    g.stop();
    mb_per_s(total, elapsed)
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5)
}

/// Best and median of a figure's runs.
fn summary(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() - 1], v[v.len() / 2])
}

fn main() {
    let total = total_bytes();
    let rounds = rounds();
    println!(
        "vsock device-model throughput: {} MiB per run, {rounds} rounds (each round runs every \
         figure once, so load from other processes hits all alike); MB/s (10^6 bytes/s), \
         best / median",
        total >> 20,
    );
    println!(
        "{:>7} | {:>11} | {:>17} | {:>17} | {:>11} | {:>15} | {:>15}",
        "write",
        "AF_UNIX",
        "host→guest 4K rx",
        "host→guest 64K rx",
        "guest→host",
        "h→g/unix",
        "g→h/unix"
    );
    for write_size in [4 * KIB, 64 * KIB] {
        let mut runs: [Vec<f64>; 4] = Default::default();
        for _ in 0..rounds {
            runs[0].push(socketpair_throughput(write_size, total));
            runs[1].push(host_to_guest(
                write_size,
                (HEADER_SIZE + 4 * KIB) as u32,
                total,
            ));
            runs[2].push(host_to_guest(
                write_size,
                (HEADER_SIZE + 64 * KIB) as u32,
                total,
            ));
            runs[3].push(guest_to_host(write_size, total));
        }
        let [unix, h2g_small, h2g_big, g2h] = runs.map(summary);
        let pct = |a: (f64, f64), b: (f64, f64)| {
            format!("{:>5.0}% / {:>3.0}%", 100.0 * a.0 / b.0, 100.0 * a.1 / b.1)
        };
        let fig = |a: (f64, f64)| format!("{:>5.0} / {:>5.0}", a.0, a.1);
        println!(
            "{:>5}Ki | {:>11} | {:>17} | {:>17} | {:>11} | {:>15} | {:>15}",
            write_size / KIB,
            fig(unix),
            fig(h2g_small),
            fig(h2g_big),
            fig(g2h),
            pct(h2g_big, unix),
            pct(g2h, unix)
        );
    }
    println!(
        "h→g/unix uses the 64 KiB rx buffer column (Linux guests post 4 KiB rx buffers: the 4K \
         rx column); the guest advertises 256 KiB of credit (Linux's default) and returns it \
         every 64 KiB consumed."
    );
}
