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
//! per run, default 128 MiB; BENCH_ROUNDS=N the runs per figure, default 3).

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
        if got - fwd_sent >= GUEST_BUF_ALLOC as usize / 4 {
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

/// Median of `ROUNDS` runs: this machine's cores are shared, so single runs are noisy.
fn median(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..rounds()).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

fn main() {
    let total = total_bytes();
    println!(
        "vsock device-model throughput: {} MiB per run, median of {} runs, MB/s (10^6 bytes/s)",
        total >> 20,
        rounds()
    );
    println!(
        "{:>7} | {:>8} | {:>17} | {:>18} | {:>10} | {:>9} | {:>9}",
        "write",
        "AF_UNIX",
        "host→guest 4K rx",
        "host→guest 64K rx",
        "guest→host",
        "h→g/unix",
        "g→h/unix"
    );
    for write_size in [4 * KIB, 64 * KIB] {
        let unix = median(|| socketpair_throughput(write_size, total));
        let h2g_small = median(|| host_to_guest(write_size, (HEADER_SIZE + 4 * KIB) as u32, total));
        let h2g_big = median(|| host_to_guest(write_size, (HEADER_SIZE + 64 * KIB) as u32, total));
        let g2h = median(|| guest_to_host(write_size, total));
        println!(
            "{:>5}Ki | {:>8.0} | {:>17.0} | {:>18.0} | {:>10.0} | {:>8.0}% | {:>8.0}%",
            write_size / KIB,
            unix,
            h2g_small,
            h2g_big,
            g2h,
            100.0 * h2g_big / unix,
            100.0 * g2h / unix
        );
    }
    println!(
        "(h→g/unix uses the 64 KiB rx buffer column; Linux guests post 4 KiB rx buffers, which \
         is the 4K rx column)"
    );
}
