//! guest_fault: a TEST TOOL, never part of termina's images. The fault suite
//! (tests/tests/faults.rs) copies it into a running guest over vsh and runs it to misbehave
//! toward the host the way a hostile guest could:
//!
//! - `connect PORT COUNT`: opens COUNT vsock connections to host port PORT and holds them open
//!   (silent: no Hello), then says how many opened and how many the host closed.
//! - `flood PORT ACTOR VM SECONDS`: introduces itself as ACTOR@VM and writes vmlog Records
//!   requests flat out for SECONDS (replies drained but ignored), reconnecting whenever the host
//!   drops it.
//! - `junk PORT SECONDS`: writes frames of garbage (no Hello) flat out for SECONDS, reconnecting
//!   whenever the host drops it.
//!
//! Each mode prints one `key=value …` line on stdout.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, write_message};
use cros_messages::vmlog::{LogRecord, Severity, VmlogRequest};
use cros_messages::{Addr, Body, Envelope};
use vsock::{VMADDR_CID_HOST, VsockStream};

fn usage() -> ! {
    eprintln!(
        "guest_fault (test tool): connect PORT COUNT | flood PORT ACTOR VM SECONDS | junk PORT SECONDS"
    );
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(arg: Option<&String>) -> T {
    arg.and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())
}

/// As many descriptors as the hard limit allows: COUNT can exceed the default 1024.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn connect_many(port: u32, count: usize) {
    raise_nofile();
    let mut open = Vec::with_capacity(count);
    let mut failed = 0usize;
    let mut first_error = String::from("none");
    for _ in 0..count {
        match VsockStream::connect_with_cid_port(VMADDR_CID_HOST, port) {
            Ok(s) => open.push(s),
            Err(e) => {
                if failed == 0 {
                    first_error = e.to_string().replace(' ', "_");
                }
                failed += 1;
            }
        }
    }
    // A connection the host closed reads end-of-file at once; one it keeps would block.
    let mut closed = 0usize;
    for s in &open {
        let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
        let mut b = [0u8; 1];
        if matches!((&*s).read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    println!(
        "opened={} failed={failed} closed_by_host={closed} first_error={first_error}",
        open.len()
    );
}

/// One batch of records, about 64 KiB.
fn records_frame(me: &Addr, id: u64) -> Envelope {
    let records = (0..64)
        .map(|i| LogRecord {
            time_ns: id * 64 + i,
            severity: Severity::Info,
            source: "guest_fault".into(),
            message: "x".repeat(1000),
        })
        .collect();
    Envelope::new(
        id,
        0,
        me.clone(),
        Addr::host("vmlog_forwarder"),
        Body::VmlogForwarder(VmlogRequest::Records { records }),
    )
}

fn flood(port: u32, me: Addr, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let (mut connections, mut frames, mut dropped) = (0u64, 0u64, 0u64);
    while Instant::now() < until {
        let Ok(mut s) = VsockStream::connect_with_cid_port(VMADDR_CID_HOST, port) else {
            dropped += 1;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        connections += 1;
        if handshake(&mut s, &me).is_err() {
            dropped += 1;
            continue;
        }
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        // Replies are read and thrown away so the host is never stalled by us not reading.
        if let Ok(mut r) = s.try_clone() {
            std::thread::spawn(move || {
                let mut sink = [0u8; 64 << 10];
                while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
        while Instant::now() < until {
            let env = records_frame(&me, frames);
            if write_message(&mut s, &env, MAX_CONTROL_FRAME).is_err() {
                dropped += 1;
                break;
            }
            frames += 1;
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    println!("connections={connections} frames={frames} dropped={dropped}");
}

fn junk(port: u32, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let (mut connections, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
    // A length prefix that claims a frame, then bytes that decode as nothing.
    let mut frame = (60_000u32).to_le_bytes().to_vec();
    frame.extend((0..60_000u32).map(|i| (i * 7 + 13) as u8));
    while Instant::now() < until {
        let Ok(mut s) = VsockStream::connect_with_cid_port(VMADDR_CID_HOST, port) else {
            dropped += 1;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        connections += 1;
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        while Instant::now() < until {
            if s.write_all(&frame).is_err() {
                dropped += 1;
                break;
            }
            bytes += frame.len() as u64;
        }
    }
    println!("connections={connections} bytes={bytes} dropped={dropped}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("connect") => connect_many(num(args.get(1)), num(args.get(2))),
        Some("flood") => {
            let (Some(actor), Some(vm)) = (args.get(2), args.get(3)) else {
                usage()
            };
            flood(
                num(args.get(1)),
                Addr::in_vm(actor.as_str(), vm.as_str()),
                num(args.get(4)),
            )
        }
        Some("junk") => junk(num(args.get(1)), num(args.get(2))),
        _ => usage(),
    }
}
