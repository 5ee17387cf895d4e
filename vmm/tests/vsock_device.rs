//! Device-model tests of the virtio-vsock device: a guest driver (tests/support/guest_driver.rs)
//! plays Linux's virtio_vsock driver over real guest memory against the real device thread,
//! and the host side is real Unix sockets.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cros_vmm::devices::vsock::packet::{
    HEADER_SIZE, HOST_CID, MAX_CHAIN_DESCRIPTORS, SHUTDOWN_RCV, SHUTDOWN_SEND, op,
};
use cros_vmm::devices::vsock::{MAX_CONNECTIONS, port_path};
use support::guest_driver::{GUEST_CID, Guest, WAIT, hdr};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::Bytes;

const BUF: u32 = 256 * 1024;

/// A raw descriptor: (addr, len, flags, next).
type RawDesc = (u64, u32, u16, u16);

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    (dir, uds)
}

/// `setup`, a host listener on `uds_<port>` for guest connections, and the device with its
/// guest driver (64 rx buffers of 4 KiB).
fn start_with_listener(port: u32) -> (tempfile::TempDir, PathBuf, UnixListener, Guest) {
    let (dir, uds) = setup();
    let listener = UnixListener::bind(port_path(&uds, port)).unwrap();
    let g = Guest::start(&uds, 64, 4096);
    (dir, uds, listener, g)
}

fn host_connect(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).expect("connect to the device's uds");
    s.set_read_timeout(Some(WAIT)).unwrap();
    // A refused client may already be closed: the reads that follow tell.
    let _ = writeln!(s, "CONNECT {port}");
    s
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            Err(e) => panic!("reading the OK line: {e}"),
        }
    }
    String::from_utf8(line).unwrap()
}

fn read_exact_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("host read");
    v
}

/// Asserts the host socket was closed by the device (EOF or reset), not left hanging.
fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("expected the socket closed, read {n} bytes"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected the socket closed, got {e}"),
    }
}

/// Host → guest connect: returns the host stream and the host-side port the guest saw.
fn establish_host_to_guest(
    g: &mut Guest,
    uds: &Path,
    guest_port: u32,
    buf_alloc: u32,
) -> (UnixStream, u32) {
    let mut s = host_connect(uds, guest_port);
    let req = g.recv_skip_credit();
    assert_eq!(req.hdr.op, op::REQUEST);
    assert_eq!(req.hdr.src_cid, HOST_CID);
    assert_eq!(req.hdr.dst_cid, GUEST_CID);
    assert_eq!(req.hdr.dst_port, guest_port);
    let host_port = req.hdr.src_port;
    g.send(hdr(op::RESPONSE, guest_port, host_port, buf_alloc, 0), &[]);
    assert_eq!(read_line(&mut s), format!("OK {host_port}\n"));
    (s, host_port)
}

/// Host → guest connect, then the host closes its socket: returns the host-side port and the
/// flags of the SHUTDOWN the guest then receives.
fn host_connects_then_closes(g: &mut Guest, uds: &Path, guest_port: u32) -> (u32, u32) {
    let (s, host_port) = establish_host_to_guest(g, uds, guest_port, BUF);
    drop(s);
    let p = g.recv_skip_credit();
    assert_eq!(p.hdr.op, op::SHUTDOWN, "{:?}", p.hdr);
    (host_port, p.hdr.flags)
}

/// Guest → host connect to a real listener on `uds_<port>`.
fn establish_guest_to_host(
    g: &mut Guest,
    listener: &UnixListener,
    guest_port: u32,
    port: u32,
    buf_alloc: u32,
) -> UnixStream {
    g.send(hdr(op::REQUEST, guest_port, port, buf_alloc, 0), &[]);
    let (mut s, _) = listener.accept().expect("host listener accept");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let resp = g.recv();
    assert_eq!(resp.hdr.op, op::RESPONSE, "{:?}", resp.hdr);
    assert_eq!((resp.hdr.src_port, resp.hdr.dst_port), (port, guest_port));
    assert_eq!(resp.hdr.buf_alloc, BUF);
    s.flush().unwrap();
    s
}

/// Sends `data` as one RW packet on `src → dst` (the guest's ports), with this driver's BUF
/// of buffer space and `fwd_cnt` bytes consumed.
fn send_rw(g: &mut Guest, src: u32, dst: u32, fwd_cnt: u32, data: &[u8]) {
    let mut p = hdr(op::RW, src, dst, BUF, fwd_cnt);
    p.len = data.len() as u32;
    g.send(p, data);
}

/// Receives RW packets on `(src, dst)` until `n` bytes arrived; returns them.
fn recv_data(g: &mut Guest, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let p = g.recv_skip_credit();
        assert_eq!(p.hdr.op, op::RW, "expected data, got {:?}", p.hdr);
        out.extend_from_slice(&p.data);
    }
    assert_eq!(out.len(), n, "received more than was sent");
    out
}

/// Raises this process's open-file soft limit to at least `want` (up to the hard limit).
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            assert!(
                lim.rlim_max >= want,
                "this test needs {want} open files; the hard limit is {}",
                lim.rlim_max
            );
            lim.rlim_cur = want;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn host_to_guest_connect_and_data_both_ways() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 64, 4096);
    let (mut s, host_port) = establish_host_to_guest(&mut g, &uds, 8888, BUF);

    s.write_all(b"hello guest").unwrap();
    assert_eq!(recv_data(&mut g, 11), b"hello guest");

    send_rw(&mut g, 8888, host_port, 11, b"hello host");
    assert_eq!(read_exact_n(&mut s, 10), b"hello host");

    // Larger transfers cross rx buffer boundaries intact.
    let big = pattern(100_000, 7);
    s.write_all(&big).unwrap();
    assert_eq!(recv_data(&mut g, big.len()), big);
}

#[test]
fn bytes_sent_with_the_connect_line_reach_the_guest_after_ok() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 64, 4096);
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"CONNECT 9001\nearly bytes").unwrap();
    let req = g.recv();
    assert_eq!((req.hdr.op, req.hdr.dst_port), (op::REQUEST, 9001));
    g.send(hdr(op::RESPONSE, 9001, req.hdr.src_port, BUF, 0), &[]);
    assert_eq!(read_line(&mut s), format!("OK {}\n", req.hdr.src_port));
    assert_eq!(recv_data(&mut g, 11), b"early bytes");
}

#[test]
fn guest_to_host_connect_reaches_uds_port_listener() {
    let (_dir, _uds, listener, mut g) = start_with_listener(7777);
    let mut s = establish_guest_to_host(&mut g, &listener, 50000, 7777, BUF);

    let msg = pattern(70_000, 3);
    for chunk in msg.chunks(32 * 1024) {
        send_rw(&mut g, 50000, 7777, 0, chunk);
    }
    assert_eq!(read_exact_n(&mut s, msg.len()), msg);

    s.write_all(b"reply from host").unwrap();
    assert_eq!(recv_data(&mut g, 15), b"reply from host");
}

#[test]
fn guest_connect_without_host_listener_gets_rst() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 16, 4096);
    g.send(hdr(op::REQUEST, 40000, 4242, BUF, 0), &[]);
    let p = g.recv();
    assert_eq!(p.hdr.op, op::RST);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (4242, 40000));
    assert_eq!(p.hdr.dst_cid, GUEST_CID);
}

#[test]
fn packet_for_unknown_connection_gets_rst() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 16, 4096);
    send_rw(&mut g, 1234, 5678, 0, b"data");
    let r = g.recv();
    assert_eq!(r.hdr.op, op::RST);
    assert_eq!((r.hdr.src_port, r.hdr.dst_port), (5678, 1234));
    // An RST for an unknown connection is not answered (no RST storms).
    g.send(hdr(op::RST, 1234, 5678, 0, 0), &[]);
    g.send(hdr(op::CREDIT_REQUEST, 1, 2, BUF, 0), &[]);
    let r = g.recv();
    assert_eq!((r.hdr.op, r.hdr.dst_port), (op::RST, 1));
}

#[test]
fn host_connect_to_port_without_guest_listener_is_closed() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 16, 4096);
    let mut s = host_connect(&uds, 9999);
    let req = g.recv();
    assert_eq!((req.hdr.op, req.hdr.dst_port), (op::REQUEST, 9999));
    // Linux answers a REQUEST to a port nobody listens on with RST.
    g.send(hdr(op::RST, 9999, req.hdr.src_port, 0, 0), &[]);
    assert_closed(&mut s);
}

#[test]
fn host_connect_the_guest_never_answers_is_closed_after_the_connect_timeout() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 16, 4096);
    let mut s = host_connect(&uds, 8888);
    let req = g.recv();
    assert_eq!(req.hdr.op, op::REQUEST);
    // No answer: the device gives up, closes the host socket and resets the guest side.
    assert_closed(&mut s);
    let rst = g.recv();
    assert_eq!((rst.hdr.op, rst.hdr.src_port), (op::RST, req.hdr.src_port));
}

#[test]
fn malformed_connect_lines_are_closed() {
    let (_dir, uds) = setup();
    let _g = Guest::start(&uds, 16, 4096);
    for line in [
        &b"HELLO 12\n"[..],
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 1111111111111111111111111111111111",
    ] {
        let mut s = UnixStream::connect(&uds).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(line).unwrap();
        assert_closed(&mut s);
    }
    // A client that sends nothing is closed after the connect timeout.
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert_closed(&mut s);
}

#[test]
fn host_to_guest_credit_exhaustion_and_recovery() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 64, 4096);
    // The guest can hold 3000 bytes.
    let (mut s, host_port) = establish_host_to_guest(&mut g, &uds, 8888, 3000);
    let msg = pattern(10_000, 9);
    s.write_all(&msg).unwrap();

    let first = recv_data(&mut g, 3000);
    assert_eq!(first, msg[..3000]);
    // Out of credit: asking for credit gets a CREDIT_UPDATE and no data ahead of it.
    g.send(hdr(op::CREDIT_REQUEST, 8888, host_port, 3000, 0), &[]);
    let p = g.recv();
    assert_eq!(
        p.hdr.op,
        op::CREDIT_UPDATE,
        "device sent past the guest's credit: {:?}",
        p.hdr
    );

    // The guest consumed everything: the rest flows, never more than 3000 bytes ahead.
    let mut got = first;
    let mut fwd = 3000u32;
    while got.len() < msg.len() {
        g.send(hdr(op::CREDIT_UPDATE, 8888, host_port, 3000, fwd), &[]);
        let mut chunk = Vec::new();
        while chunk.len() < 3000.min(msg.len() - got.len()) {
            let p = g.recv_skip_credit();
            assert_eq!(p.hdr.op, op::RW);
            chunk.extend_from_slice(&p.data);
            assert!(chunk.len() <= 3000, "device sent past the guest's credit");
        }
        fwd += chunk.len() as u32;
        got.extend(chunk);
    }
    assert_eq!(got, msg);
}

#[test]
fn guest_to_host_credit_exhaustion_and_recovery() {
    let (_dir, _uds, listener, mut g) = start_with_listener(7000);
    let mut s = establish_guest_to_host(&mut g, &listener, 40001, 7000, BUF);

    // The host does not read: the guest may still send everything the device advertised.
    let msg = pattern(BUF as usize, 1);
    for chunk in msg.chunks(64 * 1024) {
        send_rw(&mut g, 40001, 7000, 0, chunk);
    }
    g.wait_tx_drained();
    // The host reads it all; the device tells the guest the space is free again.
    assert_eq!(read_exact_n(&mut s, msg.len()), msg);
    let mut seen_fwd = 0;
    while seen_fwd < BUF {
        let p = g.recv();
        assert_eq!(p.hdr.op, op::CREDIT_UPDATE, "{:?}", p.hdr);
        seen_fwd = p.hdr.fwd_cnt;
    }
    assert_eq!(seen_fwd, BUF);
    // And the connection keeps working.
    send_rw(&mut g, 40001, 7000, 0, b"again");
    assert_eq!(read_exact_n(&mut s, 5), b"again");
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let (_dir, _uds, listener, mut g) = start_with_listener(7001);
    let mut s = establish_guest_to_host(&mut g, &listener, 40002, 7001, BUF);
    // Fill the host socket's own buffer plus our whole credit, then one packet more.
    let chunk = vec![0xabu8; 64 * 1024];
    let mut got_rst = false;
    for _ in 0..64 {
        send_rw(&mut g, 40002, 7001, 0, &chunk);
        g.wait_tx_drained();
        if let Some(p) = g.try_recv(Duration::from_millis(0))
            && p.hdr.op == op::RST
        {
            got_rst = true;
            break;
        }
    }
    if !got_rst {
        let p = g.recv_skip_credit();
        assert_eq!(p.hdr.op, op::RST);
    }
    // The host side was shut down too: after the buffered bytes, end of stream.
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).unwrap();
}

#[test]
fn guest_shutdown_half_closes_then_rst_closes() {
    let (_dir, _uds, listener, mut g) = start_with_listener(7002);
    let mut s = establish_guest_to_host(&mut g, &listener, 40003, 7002, BUF);

    send_rw(&mut g, 40003, 7002, 0, b"bye");
    let mut sd = hdr(op::SHUTDOWN, 40003, 7002, BUF, 0);
    sd.flags = SHUTDOWN_SEND;
    g.send(sd, &[]);
    // The host reads the data then end of stream, and can still answer.
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    s.write_all(b"ack").unwrap();
    assert_eq!(recv_data(&mut g, 3), b"ack");

    // Full close from the guest: the device answers RST and closes the host socket.
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    g.send(sd, &[]);
    let r = g.recv_skip_credit();
    assert_eq!(r.hdr.op, op::RST);
    // The device closed its end: the host can no longer write.
    let err = s.write_all(b"more").expect_err("device end must be closed");
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
}

#[test]
fn host_close_sends_guest_shutdown() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 64, 4096);
    let (host_port, flags) = host_connects_then_closes(&mut g, &uds, 8888);
    assert_eq!(flags, SHUTDOWN_SEND | SHUTDOWN_RCV);
    // The guest finishes the close with RST; the connection is gone: data now gets RST.
    g.send(hdr(op::RST, 8888, host_port, 0, 0), &[]);
    send_rw(&mut g, 8888, host_port, 0, b"x");
    assert_eq!(g.recv().hdr.op, op::RST);
}

#[test]
fn guest_rst_closes_the_host_socket() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 64, 4096);
    let (mut s, host_port) = establish_host_to_guest(&mut g, &uds, 8888, BUF);
    g.send(hdr(op::RST, 8888, host_port, 0, 0), &[]);
    assert_closed(&mut s);
}

/// Every malformed chain is consumed (returned to the guest) and dropped, and the device keeps
/// serving well-formed traffic afterwards.
///
/// The header the broken chains point at is a valid REQUEST to a port nobody listens on: were a
/// chain wrongly accepted, the device would answer it with an RST to port 1. After each chain a
/// well-formed probe (to an unknown connection, so answered with RST to its own port) is sent;
/// replies come in order, so the first reply must be the probe's.
#[test]
fn malformed_tx_chains_are_dropped_without_harm() {
    let (_dir, _uds, listener, mut g) = start_with_listener(7003);
    let base = g.scratch();
    let write_header = |g: &mut Guest, len: u32| {
        let mut h = hdr(op::REQUEST, 1, 7999, BUF, 0);
        h.len = len;
        g.mem
            .write_slice(&h.to_bytes(), vm_memory::GuestAddress(base))
            .unwrap();
    };
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let h = HEADER_SIZE as u32;
    let out_of_range = support::guest_driver::MEM_SIZE as u64 + 0x1000;
    let n = MAX_CHAIN_DESCRIPTORS + 1;
    let too_long: Vec<RawDesc> = (0..n)
        .map(|i| {
            if i + 1 < n {
                (base + i as u64, 1, next, (i + 1) as u16)
            } else {
                (base + i as u64, 1, 0, 0)
            }
        })
        .collect();
    // (header len, chain, what is wrong)
    let cases: Vec<(u32, Vec<RawDesc>, &str)> = vec![
        (0, vec![(base, 20, 0, 0)], "header shorter than 44 bytes"),
        (
            0,
            vec![(base, h, write, 0)],
            "header in a device-writable descriptor",
        ),
        (
            0,
            vec![(out_of_range, h, 0, 0)],
            "header outside guest memory",
        ),
        (0, vec![(u64::MAX - 10, h, 0, 0)], "address + length wraps"),
        (
            100,
            vec![(base, h, next, 1), (out_of_range, 100, 0, 0)],
            "payload outside guest memory",
        ),
        (
            100,
            vec![(base, h, next, 1), (base + 0x1000, 100, write, 0)],
            "payload device-writable",
        ),
        (0, vec![(base, 0, 0, 0)], "zero-length descriptor"),
        (0, vec![(base, 1, next, 0)], "descriptor looping to itself"),
        (
            100,
            vec![(base, h, 0, 0)],
            "len larger than the chain holds",
        ),
        (
            70_000,
            vec![(base, h, next, 1), (base + 0x1000, 70_000, 0, 0)],
            "len over the 64 KiB packet limit",
        ),
        (0, too_long, "chain longer than the device accepts"),
    ];
    for (i, (len, raw, what)) in cases.iter().enumerate() {
        write_header(&mut g, *len);
        g.txq.add_raw_chain(raw);
        g.kick_tx();
        g.wait_tx_drained();
        let probe_port = 100 + i as u32;
        g.send(hdr(op::CREDIT_REQUEST, probe_port, 7998, BUF, 0), &[]);
        let r = g.recv();
        assert_eq!(
            (r.hdr.op, r.hdr.dst_port),
            (op::RST, probe_port),
            "{what}: the chain was not dropped"
        );
    }

    // A `next` past the descriptor table ends the chain; what came before it is a whole packet.
    write_header(&mut g, 0);
    g.txq.add_raw_chain(&[(base, h, next, 9999)]);
    g.kick_tx();
    let r = g.recv();
    assert_eq!((r.hdr.op, r.hdr.dst_port), (op::RST, 1));

    // The device still works.
    let mut s = establish_guest_to_host(&mut g, &listener, 40010, 7003, BUF);
    send_rw(&mut g, 40010, 7003, 0, b"ok");
    assert_eq!(read_exact_n(&mut s, 2), b"ok");
}

#[test]
fn bad_ops_and_types_reset_or_drop() {
    let (_dir, _uds, listener, mut g) = start_with_listener(7004);

    // Unknown socket type (SEQPACKET, which we do not offer): RST.
    let mut seq = hdr(op::REQUEST, 40020, 7004, BUF, 0);
    seq.type_ = 2;
    g.send(seq, &[]);
    assert_eq!(g.recv().hdr.op, op::RST);

    // Wrong cids: dropped silently (the next reply belongs to the following packet).
    let mut spoof = hdr(op::REQUEST, 40021, 7004, BUF, 0);
    spoof.src_cid = 99;
    g.send(spoof, &[]);
    let mut to_other = hdr(op::REQUEST, 40022, 7004, BUF, 0);
    to_other.dst_cid = 5;
    g.send(to_other, &[]);

    // An unknown op on an established connection resets it and closes the host side.
    let mut s = establish_guest_to_host(&mut g, &listener, 40023, 7004, BUF);
    g.send(hdr(0x55, 40023, 7004, BUF, 0), &[]);
    let r = g.recv_skip_credit();
    assert_eq!((r.hdr.op, r.hdr.dst_port), (op::RST, 40023));
    assert_closed(&mut s);

    // A REQUEST on an established connection resets it too.
    let mut s = establish_guest_to_host(&mut g, &listener, 40024, 7004, BUF);
    g.send(hdr(op::REQUEST, 40024, 7004, BUF, 0), &[]);
    assert_eq!(g.recv_skip_credit().hdr.op, op::RST);
    assert_closed(&mut s);
}

#[test]
fn malformed_rx_buffers_are_returned_unused() {
    let (_dir, uds) = setup();
    // No rx buffers posted by the driver itself: this test posts its own.
    let mut g = Guest::start(&uds, 0, 4096);
    let base = g.scratch();
    let write = VRING_DESC_F_WRITE as u16;
    let out_of_range = support::guest_driver::MEM_SIZE as u64 + 0x1000;
    // Read-only, too small for a header, outside memory.
    g.rxq.add_raw_chain(&[(base, 4096, 0, 0)]);
    g.rxq.add_raw_chain(&[(base, 10, write, 0)]);
    g.rxq.add_raw_chain(&[(out_of_range, 4096, write, 0)]);
    // Make the device want to send something (an RST for an unknown connection).
    g.send(hdr(op::CREDIT_REQUEST, 1, 2, BUF, 0), &[]);
    g.kick_rx();
    let mut returned = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while returned.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(u) = g.rxq.pop_used() {
            returned.push(u);
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(returned.len(), 3, "bad rx buffers must be handed back");
    assert!(returned.iter().all(|(_, len)| *len == 0));
    // A good buffer then carries the RST.
    g.rxq.add_raw_chain(&[(base, 4096, write, 0)]);
    g.kick_rx();
    let deadline = std::time::Instant::now() + WAIT;
    let (_, len) = loop {
        if let Some(u) = g.rxq.pop_used() {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "no rx packet");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(len as usize, HEADER_SIZE);
    let mut raw = [0u8; HEADER_SIZE];
    g.mem
        .read_slice(&mut raw, vm_memory::GuestAddress(base))
        .unwrap();
    let h = cros_vmm::devices::vsock::packet::PacketHeader::from_bytes(&raw);
    assert_eq!((h.op, h.dst_port), (op::RST, 1));
}

#[test]
fn connection_cap_refuses_past_the_limit_with_rst() {
    // Two fds per connection live in this process (the device's and the accepted one).
    raise_fd_limit(2 * MAX_CONNECTIONS as u64 + 256);
    let (_dir, uds) = setup();
    let listener = UnixListener::bind(port_path(&uds, 7005)).unwrap();
    let mut g = Guest::start(&uds, 128, 4096);
    // Accept host-side connections as they come so the listener backlog never fills.
    let acceptor = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(listener.accept().unwrap().0);
        }
        held
    });
    for i in 0..MAX_CONNECTIONS as u32 {
        g.send(hdr(op::REQUEST, 10_000 + i, 7005, BUF, 0), &[]);
        let r = g.recv();
        assert_eq!(
            (r.hdr.op, r.hdr.dst_port),
            (op::RESPONSE, 10_000 + i),
            "connection {i}"
        );
    }
    let held = acceptor.join().unwrap();
    assert_eq!(held.len(), MAX_CONNECTIONS);
    g.send(hdr(op::REQUEST, 20_000, 7005, BUF, 0), &[]);
    let r = g.recv();
    assert_eq!((r.hdr.op, r.hdr.dst_port), (op::RST, 20_000));
    // Host clients past the cap are closed too.
    let mut s = host_connect(&uds, 8888);
    assert_closed(&mut s);
    // Closing one connection frees a slot.
    g.send(hdr(op::RST, 10_000, 7005, 0, 0), &[]);
    let l2 = UnixListener::bind(port_path(&uds, 7006)).unwrap();
    g.send(hdr(op::REQUEST, 20_001, 7006, BUF, 0), &[]);
    let _accepted = l2.accept().unwrap();
    let r = g.recv();
    assert_eq!((r.hdr.op, r.hdr.dst_port), (op::RESPONSE, 20_001));
}

/// A host peer that stops reading (guest → host) and a guest that stops reading (host → guest)
/// only stall their own connection.
#[test]
fn a_stalled_peer_does_not_stall_other_connections() {
    let (_dir, uds, listener, mut g) = start_with_listener(7007);
    let _stalled_host = establish_guest_to_host(&mut g, &listener, 41000, 7007, BUF);
    let mut live = establish_guest_to_host(&mut g, &listener, 41001, 7007, BUF);
    // Host → guest: the guest gives connection `slow` 4 KiB of credit and never consumes.
    let (mut slow_h2g, _) = establish_host_to_guest(&mut g, &uds, 8000, 4096);
    slow_h2g.set_nonblocking(true).unwrap();
    let junk = vec![0x11u8; 256 * 1024];
    let _ = slow_h2g.write(&junk);

    // Fill the stalled host reader's socket buffer and all our credit.
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..(BUF as usize / chunk.len()) {
        send_rw(&mut g, 41000, 7007, 0, &chunk);
    }
    g.wait_tx_drained();

    // The other connection still carries 1 MiB each way.
    let msg = pattern(1 << 20, 5);
    let reader = {
        let mut live2 = live.try_clone().unwrap();
        let n = msg.len();
        std::thread::spawn(move || read_exact_n(&mut live2, n))
    };
    let mut slow_bytes = 0usize;
    g.send_stream(41001, 7007, &msg, 64 * 1024, |_, p| {
        if p.hdr.op == op::RW {
            assert_eq!(p.hdr.dst_port, 8000);
            slow_bytes += p.data.len();
        }
    });
    assert_eq!(reader.join().unwrap(), msg);

    let writer = {
        let mut live2 = live.try_clone().unwrap();
        let m = msg.clone();
        std::thread::spawn(move || live2.write_all(&m).unwrap())
    };
    let mut got = Vec::new();
    while got.len() < msg.len() {
        let p = g.recv();
        match (p.hdr.op, p.hdr.dst_port) {
            (op::RW, 41001) => {
                got.extend_from_slice(&p.data);
                g.send(
                    hdr(op::CREDIT_UPDATE, 41001, 7007, BUF, got.len() as u32),
                    &[],
                );
            }
            (op::RW, 8000) => slow_bytes += p.data.len(),
            (op::CREDIT_UPDATE, _) => {}
            other => panic!("unexpected packet {other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(got, msg);
    assert!(
        slow_bytes <= 4096,
        "device sent {slow_bytes} bytes past a 4096-byte credit"
    );
    live.flush().unwrap();
}

#[test]
fn stale_uds_file_is_replaced_and_live_one_refused() {
    let (_dir, uds) = setup();
    {
        let _stale = UnixListener::bind(&uds).unwrap();
    }
    // The socket file is left behind by a listener that is gone: the device takes the path.
    let g = Guest::start(&uds, 4, 4096);
    // A second device on the same live path is refused with a clear error.
    let err = cros_vmm::devices::vsock::VsockDevice::new(&cros_vmm::devices::vsock::VsockConfig {
        guest_cid: 4,
        uds_path: uds.clone(),
    })
    .err()
    .expect("second device on a live socket must fail");
    assert!(err.to_string().contains("vsock.sock"), "{err}");
    drop(g);
    // A reserved cid is refused.
    let err = cros_vmm::devices::vsock::VsockDevice::new(&cros_vmm::devices::vsock::VsockConfig {
        guest_cid: 2,
        uds_path: uds,
    })
    .err()
    .expect("cid 2 must be refused");
    assert!(err.to_string().contains("cid 2"), "{err}");
}

#[test]
fn shutdown_the_guest_never_finishes_is_reset_after_the_timeout() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 64, 4096);
    let (host_port, _) = host_connects_then_closes(&mut g, &uds, 8888);
    // The guest never answers with RST: the device resets the connection itself.
    let r = g.recv_skip_credit();
    assert_eq!(
        (r.hdr.op, r.hdr.src_port, r.hdr.dst_port),
        (op::RST, host_port, 8888)
    );
    // The connection is gone: data on it now gets an RST as an unknown connection.
    send_rw(&mut g, 8888, host_port, 0, b"x");
    assert_eq!(g.recv().hdr.op, op::RST);
}

#[test]
fn host_half_close_after_data_reaches_the_guest_after_the_data() {
    let (_dir, uds) = setup();
    let mut g = Guest::start(&uds, 64, 4096);
    for round in 0..20u32 {
        let (mut s, host_port) = establish_host_to_guest(&mut g, &uds, 8888 + round, BUF);
        // Data and end of stream back to back: the device may see both in one wakeup.
        let msg = pattern(1000 + round as usize, round as u8);
        s.write_all(&msg).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(recv_data(&mut g, msg.len()), msg);
        let p = g.recv_skip_credit();
        assert_eq!(
            (p.hdr.op, p.hdr.flags & SHUTDOWN_SEND),
            (op::SHUTDOWN, SHUTDOWN_SEND),
            "round {round}: {:?}",
            p.hdr
        );
        // The host can still read what the guest sends back.
        send_rw(&mut g, 8888 + round, host_port, msg.len() as u32, b"ok");
        assert_eq!(read_exact_n(&mut s, 2), b"ok");
        g.send(hdr(op::RST, 8888 + round, host_port, 0, 0), &[]);
    }
}
