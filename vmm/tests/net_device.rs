//! Device-model tests of virtio-net: a guest driver plays Linux's virtio_net over real guest
//! memory against the real device thread (under the Net seccomp filter `crosvm run` gives
//! it), and the host side is a real tap with a real IPv4 stack behind it. Each test runs in a
//! network namespace of its own (support/netns.rs): the tap, its address 10.77.0.1/24 and the
//! guest's 10.77.0.2 exist only there and vanish with it.

#[path = "support/netns.rs"]
mod netns;
mod support;

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cros_vmm::devices::net::{MAX_BUFFER_SIZE, NetConfig, NetStats};
use cros_vmm::devices::virtio::net_mmio::NetMmio;
use cros_vmm::devices::virtio::worker::{DeviceFailure, DeviceWorker, SharedVirtioDevice};
use cros_vmm::devices::virtio::{Activation, VirtioDevice, VirtioInterrupt};
use cros_vmm::event_channel::{EventReceiver, event_channel};
use cros_vmm::seccomp::{Filters, ThreadKind};
use cros_vmm::thread::ThreadSpec;
use support::guest_driver::{Desc, GuestQueue, Mem, WAIT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const TAP: &str = "crosdtap0";
const HOST_IP: [u8; 4] = [10, 77, 0, 1];
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x02];
const QSIZE: u16 = 256;
const MEM_SIZE: usize = 16 << 20;
/// Guest buffers start here; the rings live below.
const DATA: u64 = 0x10_0000;
const HDR: usize = 12;

/// A raw descriptor: (addr, len, flags, next).
type RawDesc = (u64, u32, u16, u16);

fn version_1() -> u64 {
    1 << VIRTIO_F_VERSION_1
}

fn bit(b: u32) -> u64 {
    1 << b
}

/// The guest: memory, its rx and tx queues, and the device thread serving them.
struct NetGuest {
    mem: Arc<Mem>,
    rxq: GuestQueue,
    txq: GuestQueue,
    kicks: Vec<EventFd>,
    call: EventFd,
    device: Arc<Mutex<NetMmio>>,
    worker: Option<DeviceWorker>,
    failures: EventReceiver<DeviceFailure>,
    /// Where the next buffer goes.
    next_buf: u64,
    rx_buf_of: Vec<(u64, u32)>,
}

impl NetGuest {
    /// A new namespace, the tap in it (up, 10.77.0.1/24, the guest's address resolved
    /// statically), and the device with the driver having accepted `features`.
    fn start(features: u64) -> NetGuest {
        netns::enter_new_netns();
        let net = NetConfig {
            tap: TAP.into(),
            mac: None,
        };
        let mut device = NetMmio::new(&net).expect("open the tap");
        netns::ip(&["addr", "add", "10.77.0.1/24", "dev", TAP]);
        netns::ip(&["link", "set", TAP, "up"]);
        netns::ip(&[
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "52:54:00:77:00:02",
            "dev",
            TAP,
            "nud",
            "permanent",
        ]);
        let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let rxq = GuestQueue::new(mem.clone(), 0x1_0000, QSIZE);
        let txq = GuestQueue::new(mem.clone(), 0x2_0000, QSIZE);
        let kicks: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        device.ack_features(features);
        device
            .activate(Activation {
                mem: (*mem).clone(),
                interrupt: VirtioInterrupt::new(call.try_clone().unwrap()),
                queues: vec![rxq.device_queue(), txq.device_queue()],
            })
            .expect("activate");
        let device = Arc::new(Mutex::new(device));
        let shared: SharedVirtioDevice = device.clone();
        let (failure_tx, failures) = event_channel().unwrap();
        let filters = Filters::build(true).expect("seccomp filters");
        let spec = ThreadSpec::new("net-test", ThreadKind::Net, &filters);
        let worker = DeviceWorker::spawn(
            spec,
            shared,
            kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            failure_tx,
            0,
        )
        .expect("device thread");
        NetGuest {
            mem,
            rxq,
            txq,
            kicks,
            call,
            device,
            worker: Some(worker),
            failures,
            next_buf: DATA,
            rx_buf_of: vec![(0, 0); usize::from(QSIZE)],
        }
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let at = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        assert!(self.next_buf <= MEM_SIZE as u64, "test guest memory full");
        at
    }

    /// Posts `n` rx buffers of `len` bytes and kicks.
    fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let addr = self.alloc(len);
            let head = self
                .rxq
                .add_chain(&[Desc {
                    addr,
                    len,
                    write: true,
                }])
                .expect("rx ring space");
            self.rx_buf_of[usize::from(head)] = (addr, len);
        }
        self.kicks[0].write(1).unwrap();
    }

    /// Queues `frame` (header included) in one readable descriptor and kicks.
    fn send(&mut self, frame: &[u8]) -> u16 {
        let addr = self.alloc(frame.len() as u32);
        self.mem.write_slice(frame, GuestAddress(addr)).unwrap();
        let head = self
            .txq
            .add_chain(&[Desc {
                addr,
                len: frame.len() as u32,
                write: false,
            }])
            .expect("tx ring space");
        self.kicks[1].write(1).unwrap();
        head
    }

    /// Queues a raw chain `(addr, len, flags, next)` on tx and kicks.
    fn send_raw(&mut self, raw: &[RawDesc]) -> u16 {
        let head = self.txq.add_raw_chain(raw);
        self.kicks[1].write(1).unwrap();
        head
    }

    fn wait<T>(&mut self, what: &str, mut f: impl FnMut(&mut Self) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {WAIT:?}; stats {:?}",
                self.stats()
            );
            let _ = self.call.read();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The next used tx chain: (head, len).
    fn tx_used(&mut self) -> (u16, u32) {
        self.wait("a tx chain back", |g| g.txq.pop_used())
    }

    /// The next used rx chain's (head, len, bytes written).
    fn rx_used(&mut self) -> (u16, u32, Vec<u8>) {
        let (head, len) = self.wait("an rx buffer used", |g| g.rxq.pop_used());
        let (addr, cap) = self.rx_buf_of[usize::from(head)];
        let mut data = vec![0u8; len.min(cap) as usize];
        self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
        (head, len, data)
    }

    /// The next frame the guest receives (header included), gathered over `num_buffers`
    /// buffers.
    fn recv_frame(&mut self) -> Vec<u8> {
        let (_, _, mut frame) = self.rx_used();
        assert!(frame.len() >= HDR, "used rx buffer shorter than the header");
        let num_buffers = u16::from_le_bytes([frame[10], frame[11]]);
        for _ in 1..num_buffers {
            frame.extend(self.rx_used().2);
        }
        frame
    }

    /// The next received frame that is our UDP datagram to `port` (the host stack may send
    /// others: ARP, for one).
    fn recv_udp(&mut self, port: u16) -> Vec<u8> {
        loop {
            let f = self.recv_frame();
            if is_udp_to(&f[HDR..], port) {
                return f;
            }
        }
    }

    fn stats(&self) -> NetStats {
        self.device.lock().unwrap().stats().clone()
    }

    /// The device failure the device thread reported.
    fn failure(&mut self) -> DeviceFailure {
        self.wait("a device failure", |g| g.failures.drain().pop())
    }
}

impl Drop for NetGuest {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A virtio-net header (flags, gso_type) and an Ethernet/IPv4/UDP frame from the guest to the
/// host's `port`, carrying `payload` (UDP checksum 0: none).
fn guest_udp_frame(host_mac: [u8; 6], port: u16, payload: &[u8], flags: u8, gso: u8) -> Vec<u8> {
    let mut f = vec![flags, gso, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.extend(host_mac);
    f.extend(GUEST_MAC);
    f.extend([0x08, 0x00]);
    let ip_len = 20 + 8 + payload.len();
    let mut ip = vec![
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend(GUEST_IP);
    ip.extend(HOST_IP);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    let udp_len = 8 + payload.len();
    f.extend(4000u16.to_be_bytes());
    f.extend(port.to_be_bytes());
    f.extend((udp_len as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}

/// Whether the Ethernet frame `f` is IPv4 UDP to `port`.
fn is_udp_to(f: &[u8], port: u16) -> bool {
    f.len() >= 14 + 20 + 8
        && f[12..14] == [0x08, 0x00]
        && f[14 + 9] == 17
        && f[14 + 20 + 2..14 + 20 + 4] == port.to_be_bytes()
}

/// A UDP socket on the host side, bound to 10.77.0.1.
fn host_socket() -> UdpSocket {
    let s = UdpSocket::bind("10.77.0.1:0").expect("bind 10.77.0.1");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn host_port(s: &UdpSocket) -> u16 {
    s.local_addr().unwrap().port()
}

/// Sends a frame from the guest that the host socket `s` must receive (the device still
/// works); returns the payload received.
fn guest_to_host(g: &mut NetGuest, s: &UdpSocket, payload: &[u8]) {
    let frame = guest_udp_frame(netns::mac_of(TAP), host_port(s), payload, 0, 0);
    g.send(&frame);
    assert_eq!(g.tx_used().1, 0, "tx chains are returned with length 0");
    let mut buf = [0u8; 2048];
    let (n, from) = s
        .recv_from(&mut buf)
        .expect("the host receives the guest's datagram");
    assert_eq!(&buf[..n], payload);
    assert_eq!(from.to_string(), "10.77.0.2:4000");
}

#[test]
fn udp_both_ways_between_the_guest_queues_and_the_host_stack() {
    let mut g = NetGuest::start(version_1());
    let s = host_socket();
    guest_to_host(&mut g, &s, b"hello from the guest");

    g.post_rx(16, 2048);
    s.send_to(b"hello from the host", "10.77.0.2:5000").unwrap();
    let f = g.recv_udp(5000);
    assert_eq!(u16::from_le_bytes([f[10], f[11]]), 1, "num_buffers");
    assert_eq!(f[0], 0, "no partial checksum without GUEST_CSUM");
    assert_eq!(&f[HDR..HDR + 6], &GUEST_MAC);
    assert!(f.ends_with(b"hello from the host"));
    let stats = g.stats();
    assert_eq!(stats.tx_frames, 1);
    assert!(stats.rx_frames >= 1);
    assert_eq!(
        (stats.tx_dropped, stats.rx_dropped, stats.bad_chains),
        (0, 0, 0)
    );
}

/// GUEST_CSUM acked: the tap is told (TUNSETOFFLOAD, on the device thread) and the host stack
/// hands over frames with partial checksums, flagged NEEDS_CSUM in the header.
#[test]
fn guest_checksum_offload_reaches_the_tap() {
    let mut g = NetGuest::start(version_1() | bit(VIRTIO_NET_F_GUEST_CSUM));
    let s = host_socket();
    g.post_rx(16, 2048);
    // Once a frame got through, the device thread has handled an event, and the offloads are
    // set before any event is handled.
    s.send_to(b"first", "10.77.0.2:5001").unwrap();
    g.recv_udp(5001);
    s.send_to(b"partial checksum please", "10.77.0.2:5001")
        .unwrap();
    let f = g.recv_udp(5001);
    assert_eq!(f[0] & 1, 1, "VIRTIO_NET_HDR_F_NEEDS_CSUM: {:?}", &f[..HDR]);
}

/// MRG_RXBUF: a frame larger than one buffer is spread over several, `num_buffers` saying
/// how many, and reassembles to what the host sent.
#[test]
fn mergeable_rx_buffers_carry_a_frame_larger_than_one_buffer() {
    let mut g = NetGuest::start(version_1() | bit(VIRTIO_NET_F_MRG_RXBUF));
    let s = host_socket();
    g.post_rx(64, 256);
    let payload: Vec<u8> = (0..1400u32).map(|i| (i * 7) as u8).collect();
    s.send_to(&payload, "10.77.0.2:5002").unwrap();
    let f = g.recv_udp(5002);
    let frame_len = HDR + 14 + 20 + 8 + payload.len();
    assert_eq!(f.len(), frame_len);
    assert_eq!(
        usize::from(u16::from_le_bytes([f[10], f[11]])),
        frame_len.div_ceil(256)
    );
    assert!(f.ends_with(&payload));
}

/// Without MRG_RXBUF a frame must fit one buffer: one that does not is dropped and counted,
/// the buffer stays posted, and the next frame that fits lands in it.
#[test]
fn a_frame_bigger_than_the_rx_buffer_is_dropped_and_the_buffer_kept() {
    let mut g = NetGuest::start(version_1());
    let s = host_socket();
    g.post_rx(1, 600);
    s.send_to(&[0x55; 1200], "10.77.0.2:5003").unwrap();
    g.wait("the big frame dropped", |g| {
        (g.stats().rx_dropped > 0).then_some(())
    });
    assert!(!g.rxq.has_used(), "the too-small buffer was used");
    s.send_to(b"small", "10.77.0.2:5003").unwrap();
    let f = g.recv_udp(5003);
    assert!(f.ends_with(b"small"));
    assert!(
        matches!(
            g.stats().last_error,
            Some(cros_vmm::devices::net::FrameError::FrameExceedsBuffer { capacity: 600, .. })
        ),
        "{:?}",
        g.stats()
    );
}

/// Malformed tx chains are returned (length 0), dropped and counted; the device serves on.
#[test]
fn bad_tx_chains_are_dropped_and_the_device_serves_on() {
    let mut g = NetGuest::start(version_1());
    let s = host_socket();
    let host_mac = netns::mac_of(TAP);
    let good = guest_udp_frame(host_mac, host_port(&s), b"x", 0, 0);
    let at = g.alloc(good.len() as u32);
    g.mem.write_slice(&good, GuestAddress(at)).unwrap();
    let len = good.len() as u32;
    let write = VRING_DESC_F_WRITE as u16;
    let next = VRING_DESC_F_NEXT as u16;
    let big = g.alloc(MAX_BUFFER_SIZE as u32 + 1);
    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        ("a device-writable descriptor", vec![(at, len, write, 0)]),
        (
            "outside guest memory",
            vec![(MEM_SIZE as u64 - 8, len, 0, 0)],
        ),
        ("a next index outside the queue", vec![(at, len, next, 999)]),
        ("a loop", vec![(at, 6, next, 1), (at + 6, 6, next, 0)]),
        ("shorter than the header", vec![(at, 8, 0, 0)]),
        (
            "over 65562 bytes",
            vec![(big, MAX_BUFFER_SIZE as u32 + 1, 0, 0)],
        ),
    ];
    let n = cases.len() as u64;
    for (what, raw) in cases {
        let head = g.send_raw(&raw);
        let (used, used_len) = g.tx_used();
        assert_eq!((used, used_len), (head, 0), "{what}");
    }
    let stats = g.stats();
    assert_eq!(stats.tx_dropped, n, "{stats:?}");
    assert_eq!(stats.tx_frames, 0);
    assert!(g.failures.drain().is_empty(), "no device failure");
    guest_to_host(&mut g, &s, b"still working");
}

/// Tx frames asking for offloads the driver did not accept never reach the tap.
#[test]
fn tx_offloads_that_were_not_negotiated_are_refused() {
    let mut g = NetGuest::start(version_1());
    let s = host_socket();
    let mac = netns::mac_of(TAP);
    g.send(&guest_udp_frame(mac, host_port(&s), b"csum", 1, 0));
    g.send(&guest_udp_frame(mac, host_port(&s), b"tso", 0, 1));
    g.tx_used();
    g.tx_used();
    assert_eq!(g.stats().tx_dropped, 2);
    guest_to_host(&mut g, &s, b"plain");
}

/// CSUM and HOST_TSO4 acked: a frame with NEEDS_CSUM goes to the tap and the host stack,
/// which completes the checksum, delivers it.
#[test]
fn tx_checksum_offload_is_completed_by_the_host() {
    let mut g = NetGuest::start(version_1() | bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4));
    let s = host_socket();
    let payload = b"checksum me";
    let mut f = guest_udp_frame(netns::mac_of(TAP), host_port(&s), payload, 1, 0);
    // csum_start: the UDP header; csum_offset: its checksum field; the field holds the
    // pseudo-header sum, as Linux leaves it for the device.
    let csum_start = (14 + 20) as u16;
    f[6..8].copy_from_slice(&csum_start.to_le_bytes());
    f[8..10].copy_from_slice(&6u16.to_le_bytes());
    let udp_len = (8 + payload.len()) as u16;
    let mut pseudo = Vec::new();
    pseudo.extend(GUEST_IP);
    pseudo.extend(HOST_IP);
    pseudo.extend([0, 17]);
    pseudo.extend(udp_len.to_be_bytes());
    let partial = !checksum(&pseudo);
    let at = HDR + 14 + 20 + 6;
    f[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    g.send(&f);
    g.tx_used();
    let mut buf = [0u8; 64];
    let (n, _) = s
        .recv_from(&mut buf)
        .expect("the datagram passed the host's checksum");
    assert_eq!(&buf[..n], payload);
}

/// Malformed rx chains are returned unused (length 0) and counted; the frame goes to the next
/// good buffer.
#[test]
fn bad_rx_chains_are_returned_empty_and_the_frame_takes_the_next_buffer() {
    let mut g = NetGuest::start(version_1());
    let s = host_socket();
    let at = g.alloc(2048);
    let write = VRING_DESC_F_WRITE as u16;
    let bad = [
        g.rxq.add_raw_chain(&[(at, 2048, 0, 0)]),
        g.rxq
            .add_raw_chain(&[(MEM_SIZE as u64 - 16, 2048, write, 0)]),
        g.rxq.add_raw_chain(&[(at, 8, write, 0)]),
    ];
    g.post_rx(1, 2048);
    s.send_to(b"after the bad ones", "10.77.0.2:5004").unwrap();
    let mut returned = Vec::new();
    let mut frame = None;
    while returned.len() < bad.len() || frame.is_none() {
        let (head, len, data) = g.rx_used();
        if len == 0 {
            returned.push(head);
        } else if is_udp_to(&data[HDR..], 5004) {
            frame = Some(data);
        } else {
            g.post_rx(1, 2048);
        }
    }
    assert!(frame.unwrap().ends_with(b"after the bad ones"));
    returned.sort();
    let mut want = bad.to_vec();
    want.sort();
    assert_eq!(returned, want);
    assert_eq!(g.stats().bad_chains, 3);
}

/// An avail index more than a queue ahead is a broken queue: the device stops and reports a
/// failure (the transport then sets DEVICE_NEEDS_RESET).
#[test]
fn a_broken_avail_ring_is_a_device_failure() {
    let mut g = NetGuest::start(version_1());
    // The tx avail ring's idx (GuestQueue: the avail ring follows 256 descriptors).
    let avail_idx = GuestAddress(0x2_0000 + 16 * u64::from(QSIZE) + 2);
    g.mem.write_obj(QSIZE + 5, avail_idx).unwrap();
    g.kicks[1].write(1).unwrap();
    let failure = g.failure();
    assert!(failure.reason.contains("virtio-net"), "{failure:?}");
}

/// The tap deleted under the device: the next tap event or kick is a device failure that
/// names the tap, never a panic.
#[test]
fn a_tap_that_vanishes_is_a_device_failure_naming_it() {
    let mut g = NetGuest::start(version_1());
    g.post_rx(4, 2048);
    netns::ip(&["link", "del", TAP]);
    g.kicks[0].write(1).unwrap();
    let failure = g.failure();
    assert!(
        failure.reason.contains(TAP) && failure.reason.contains("gone"),
        "{failure:?}"
    );
}

/// A tap name the kernel cannot take is refused by name when the device is built.
#[test]
fn bad_tap_names_are_refused() {
    for name in ["", "has space", "a-name-longer-than-15", "a/b"] {
        let e = NetMmio::new(&NetConfig {
            tap: name.into(),
            mac: None,
        })
        .err()
        .unwrap_or_else(|| panic!("tap name {name:?} accepted"));
        assert!(e.to_string().contains("not an interface name"), "{e}");
    }
}
