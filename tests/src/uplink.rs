//! A simulated uplink for the network tests: a second network namespace joined to the caller's
//! by a veth pair, with the caller's default route through it and a small HTTP server in it.
//!
//! The caller's namespace must be one it made ([`crate::net_vm::netns::enter_new_netns`]); the
//! uplink's is made by a thread of its own (network namespaces are per thread), which then
//! serves HTTP forever and takes the namespace with it when the test process exits. Both ends
//! use addresses from 198.51.100.0/24 (TEST-NET-2, documentation only): nothing routes there
//! beyond the uplink, which has no route of its own, so no packet can leave the two namespaces.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::mpsc;

use crate::net_vm::netns;

/// The caller's end of the veth pair: its address towards the uplink, and what the uplink sees
/// as the source of anything NATed out of the caller's namespace.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The uplink's end: the caller's default gateway, and where the HTTP server listens.
pub const UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const HTTP_PORT: u16 = 8080;
const HOST_DEV: &str = "uplink0";
const UPLINK_DEV: &str = "wan0";

/// What the server answers to every request: this line, then `from <peer address>`.
pub const GREETING: &str = "hello from the uplink";

pub struct Uplink {
    /// `http://198.51.100.2:8080/`.
    pub url: String,
}

impl Uplink {
    /// Makes the uplink namespace and the veth pair, routes the caller's namespace through it
    /// and starts the HTTP server; returns once the server listens.
    pub fn start() -> Uplink {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("uplink".into())
            .spawn(move || {
                netns::enter_new_netns();
                tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
                // The caller moves the veth's far end in here.
                go_rx.recv().unwrap();
                let addr = format!("{UPLINK_ADDR}/24");
                netns::ip(&["addr", "add", &addr, "dev", UPLINK_DEV]);
                netns::ip(&["link", "set", UPLINK_DEV, "up"]);
                let listener = TcpListener::bind((UPLINK_ADDR, HTTP_PORT)).unwrap();
                ready_tx.send(()).unwrap();
                serve(listener);
            })
            .unwrap();
        let tid = tid_rx.recv().expect("the uplink thread made its namespace");
        // `netns PID` names the namespace of task PID, a thread's id as well as a process's.
        netns::ip(&[
            "link",
            "add",
            HOST_DEV,
            "type",
            "veth",
            "peer",
            "name",
            UPLINK_DEV,
            "netns",
            &tid.to_string(),
        ]);
        netns::ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", HOST_DEV]);
        netns::ip(&["link", "set", HOST_DEV, "up"]);
        netns::ip(&["route", "add", "default", "via", &UPLINK_ADDR.to_string()]);
        go_tx.send(()).unwrap();
        ready_rx.recv().expect("the uplink's HTTP server listens");
        Uplink {
            url: format!("http://{UPLINK_ADDR}:{HTTP_PORT}/"),
        }
    }
}

/// Answers every request with [`GREETING`] and the peer's address, one connection at a time.
fn serve(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let peer = stream
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        // The request's head, up to its empty line; the body of a GET is empty.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line == "\r\n" || line == "\n" {
                break;
            }
            line.clear();
        }
        let body = format!("{GREETING}\nfrom {peer}\n");
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
