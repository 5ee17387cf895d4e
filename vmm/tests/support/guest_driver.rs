//! A small virtio-vsock guest driver for device-model tests and benchmarks: it owns guest memory,
//! lays out split virtqueues in it, and plays the guest's side of the rings (descriptors, avail
//! ring, used ring) against the real device thread, the way Linux's virtio_vsock driver does.
//! Nothing about the device is mocked: the device thread reads and writes this memory.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cros_vmm::devices::virtio::vsock_mmio::VsockMmio;
use cros_vmm::devices::virtio::worker::{DeviceFailure, DeviceWorker, SharedVirtioDevice};
use cros_vmm::devices::virtio::{Activation, VirtioDevice, VirtioInterrupt};
use cros_vmm::devices::vsock::VsockConfig;
use cros_vmm::devices::vsock::packet::{HEADER_SIZE, HOST_CID, PacketHeader, TYPE_STREAM, op};
use cros_vmm::event_channel::{EventReceiver, event_channel};
use cros_vmm::seccomp::{Filters, ThreadKind};
use cros_vmm::thread::ThreadSpec;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub type Mem = GuestMemoryMmap<()>;

pub const GUEST_CID: u64 = 3;
pub const MEM_SIZE: usize = 64 << 20;
pub const QUEUE_SIZE: u16 = 256;
/// Guest memory for buffers starts here; rings live below.
const DATA_BASE: u64 = 0x10_0000;
/// How long a test waits for the device before calling it a failure (not a performance bound).
pub const WAIT: Duration = Duration::from_secs(10);

static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// One descriptor the guest puts in a chain.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VRING_DESC_F_WRITE).
    pub write: bool,
}

/// The guest side of one split virtqueue.
pub struct GuestQueue {
    mem: Arc<Mem>,
    size: u16,
    desc_table: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    chain_of: Vec<Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
}

impl GuestQueue {
    pub fn new(mem: Arc<Mem>, base: u64, size: u16) -> Self {
        GuestQueue {
            mem,
            size,
            desc_table: base,
            avail: base + 16 * u64::from(size),
            used: (base + 16 * u64::from(size) + 6 + 2 * u64::from(size) + 3) & !3,
            free: (0..size).rev().collect(),
            chain_of: vec![Vec::new(); usize::from(size)],
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// The device's view of this queue, as a transport would configure it.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue size");
        q.set_size(self.size);
        q.set_desc_table_address(
            Some(self.desc_table as u32),
            Some((self.desc_table >> 32) as u32),
        );
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc_table + 16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).expect("descriptor write");
    }

    /// Publishes `head` on the avail ring.
    fn publish(&mut self, head: u16) {
        let slot = GuestAddress(self.avail + 4 + 2 * u64::from(self.avail_idx % self.size));
        self.mem.write_obj(head, slot).expect("avail ring write");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx,
                GuestAddress(self.avail + 2),
                Ordering::Release,
            )
            .expect("avail idx write");
    }

    /// Adds a well-formed chain; `None` when the ring has too few free descriptors.
    pub fn add_chain(&mut self, descs: &[Desc]) -> Option<u16> {
        if descs.is_empty() || self.free.len() < descs.len() {
            return None;
        }
        let indices: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = if d.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                indices[i + 1]
            } else {
                0
            };
            self.write_desc(indices[i], d.addr, d.len, flags, next);
        }
        let head = indices[0];
        self.chain_of[usize::from(head)] = indices;
        self.publish(head);
        Some(head)
    }

    /// Adds a chain of raw descriptors `(addr, len, flags, next)` exactly as given, for
    /// malformed-chain tests. A `next` below `raw.len()` names another descriptor of `raw`
    /// (so loops can be built); any other `next` is written literally.
    pub fn add_raw_chain(&mut self, raw: &[(u64, u32, u16, u16)]) -> u16 {
        let indices: Vec<u16> = (0..raw.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, (addr, len, flags, next)) in raw.iter().enumerate() {
            let next = if usize::from(*next) < raw.len() {
                indices[usize::from(*next)]
            } else {
                *next
            };
            self.write_desc(indices[i], *addr, *len, *flags, next);
        }
        let head = indices[0];
        self.chain_of[usize::from(head)] = indices;
        self.publish(head);
        head
    }

    /// Next used element, if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let used_idx: u16 = self
            .mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .expect("used idx read");
        if used_idx == self.last_used {
            return None;
        }
        let slot = GuestAddress(self.used + 4 + 8 * u64::from(self.last_used % self.size));
        let id: u32 = self.mem.read_obj(slot).expect("used elem id");
        let len: u32 = self
            .mem
            .read_obj(slot.unchecked_add_u64(4))
            .expect("used elem len");
        self.last_used = self.last_used.wrapping_add(1);
        let head = id as u16;
        let chain = std::mem::take(&mut self.chain_of[usize::from(head)]);
        self.free.extend(chain);
        Some((head, len))
    }

    /// Whether the device returned chains not yet popped.
    pub fn has_used(&self) -> bool {
        let used_idx: u16 = self
            .mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .expect("used idx read");
        used_idx != self.last_used
    }

    /// Number of chains the device has not returned yet.
    pub fn outstanding(&self) -> usize {
        usize::from(self.size) - self.free.len()
    }
}

trait AddU64 {
    fn unchecked_add_u64(self, n: u64) -> Self;
}
impl AddU64 for GuestAddress {
    fn unchecked_add_u64(self, n: u64) -> Self {
        GuestAddress(self.0 + n)
    }
}

/// A received packet.
#[derive(Debug, Clone)]
pub struct Packet {
    pub hdr: PacketHeader,
    pub data: Vec<u8>,
}

/// The guest: memory, the rx and tx queues, and the running device thread.
pub struct Guest {
    pub mem: Arc<Mem>,
    pub rxq: GuestQueue,
    pub txq: GuestQueue,
    kicks: Vec<EventFd>,
    /// The device's interrupt, as its irqfd would be.
    call: EventFd,
    rx_buf_size: u32,
    /// rx buffer address of each posted chain head.
    rx_buf_of: Vec<u64>,
    rx_bufs: Vec<u64>,
    tx_slots: Vec<u64>,
    tx_slot_of: Vec<Option<usize>>,
    tx_free_slots: Vec<usize>,
    tx_slot_size: u32,
    pub thread: Option<DeviceWorker>,
    failures: EventReceiver<DeviceFailure>,
    /// Dropped here, after the device thread: the device removes its host socket file,
    /// which the vsock thread's filter does not allow.
    _device: SharedVirtioDevice,
}

/// Every thread kind's seccomp filter, with the handler that reports a denied call (the test
/// process then exits 159 with the call's number on stderr).
fn filters() -> Filters {
    Filters::build(true).expect("seccomp filters")
}

impl Guest {
    /// Starts a device listening on `uds` and a guest with `rx_buffers` rx buffers of
    /// `rx_buf_size` bytes (header included) posted.
    pub fn start(uds: &Path, rx_buffers: u16, rx_buf_size: u32) -> Guest {
        let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory"));
        let rxq = GuestQueue::new(mem.clone(), 0x1_0000, QUEUE_SIZE);
        let txq = GuestQueue::new(mem.clone(), 0x2_0000, QUEUE_SIZE);
        let evq = GuestQueue::new(mem.clone(), 0x3_0000, QUEUE_SIZE);
        let mut device = VsockMmio::new(&VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.to_path_buf(),
        })
        .expect("vsock device");
        let kicks: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let queues = vec![rxq.device_queue(), txq.device_queue(), evq.device_queue()];
        device
            .activate(Activation {
                mem: (*mem).clone(),
                interrupt: VirtioInterrupt::new(call.try_clone().unwrap()),
                queues,
            })
            .expect("activate");
        let device: SharedVirtioDevice = std::sync::Arc::new(std::sync::Mutex::new(device));
        let (failure_tx, failures) = event_channel().unwrap();
        // Under the filter `crosvm run` gives the vsock thread, so every test of the device
        // also shows that the filter allows what the device does.
        let spec = ThreadSpec::new("vsock-test", ThreadKind::Vsock, &filters());
        let thread = DeviceWorker::spawn(
            spec,
            device.clone(),
            kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            failure_tx,
            0,
        )
        .expect("device thread");

        // Buffers: rx buffers first, then tx slots of 64 KiB + header.
        let mut next = DATA_BASE;
        let mut rx_bufs = Vec::new();
        for _ in 0..rx_buffers {
            rx_bufs.push(next);
            next += u64::from(rx_buf_size);
        }
        let tx_slot_size = HEADER_SIZE as u32 + 64 * 1024;
        let tx_slot_count = 64;
        let mut tx_slots = Vec::new();
        for _ in 0..tx_slot_count {
            tx_slots.push(next);
            next += u64::from(tx_slot_size);
        }
        assert!(
            next <= MEM_SIZE as u64,
            "guest memory too small for buffers"
        );

        let mut g = Guest {
            mem,
            rxq,
            txq,
            kicks,
            call,
            rx_buf_size,
            rx_buf_of: vec![0; usize::from(QUEUE_SIZE)],
            rx_bufs: rx_bufs.clone(),
            tx_slots,
            tx_slot_of: vec![None; usize::from(QUEUE_SIZE)],
            tx_free_slots: (0..tx_slot_count).rev().collect(),
            tx_slot_size,
            thread: Some(thread),
            failures,
            _device: device,
        };
        for addr in rx_bufs {
            g.post_rx(addr);
        }
        g.kick_rx();
        g
    }

    fn post_rx(&mut self, addr: u64) {
        let head = self
            .rxq
            .add_chain(&[Desc {
                addr,
                len: self.rx_buf_size,
                write: true,
            }])
            .expect("rx ring space");
        self.rx_buf_of[usize::from(head)] = addr;
    }

    pub fn kick_rx(&self) {
        self.kicks[0].write(1).unwrap();
    }

    pub fn kick_tx(&self) {
        self.kicks[1].write(1).unwrap();
    }

    /// Waits until `fd` is readable or `timeout` passes.
    fn wait_fd(fd: &EventFd, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            let _ = fd.read();
            true
        } else {
            false
        }
    }

    /// Receives the next packet within `timeout`, re-posting its buffer.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Packet> {
        self.try_recv_inner(timeout, true)
    }

    /// Like `recv`, but leaves the payload in guest memory (`data` is empty; `hdr.len` tells the
    /// size): benchmarks measure the device, not the guest application's copy.
    pub fn recv_header_only(&mut self) -> PacketHeader {
        self.try_recv_inner(WAIT, false)
            .expect("no packet from the device")
            .hdr
    }

    fn try_recv_inner(&mut self, timeout: Duration, copy_payload: bool) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((head, len)) = self.rxq.pop_used() {
                let addr = self.rx_buf_of[usize::from(head)];
                let mut hdr = [0u8; HEADER_SIZE];
                self.mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
                let hdr = PacketHeader::from_bytes(&hdr);
                assert!(
                    len as usize >= HEADER_SIZE,
                    "device used an rx buffer with len {len}"
                );
                assert_eq!(
                    len as usize,
                    HEADER_SIZE + hdr.len as usize,
                    "used length must be header + payload"
                );
                let mut data = Vec::new();
                if copy_payload {
                    data.resize(hdr.len as usize, 0);
                    self.mem
                        .read_slice(&mut data, GuestAddress(addr + HEADER_SIZE as u64))
                        .unwrap();
                }
                self.post_rx(addr);
                // Like Linux, refill a batch and kick once: only when no more used buffers wait.
                if !self.rxq.has_used() {
                    self.kick_rx();
                }
                return Some(Packet { hdr, data });
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            Self::wait_fd(&self.call, (deadline - now).min(Duration::from_millis(50)));
        }
    }

    pub fn recv(&mut self) -> Packet {
        self.try_recv(WAIT).expect("no packet from the device")
    }

    /// Receives the next packet that is not a CREDIT_UPDATE.
    pub fn recv_skip_credit(&mut self) -> Packet {
        loop {
            let p = self.recv();
            if p.hdr.op != op::CREDIT_UPDATE {
                return p;
            }
        }
    }

    /// Reclaims tx chains the device returned.
    pub fn reclaim_tx(&mut self) -> usize {
        let mut n = 0;
        while let Some((head, _)) = self.txq.pop_used() {
            if let Some(slot) = self.tx_slot_of[usize::from(head)].take() {
                self.tx_free_slots.push(slot);
            }
            n += 1;
        }
        n
    }

    /// Waits until the device consumed every tx chain.
    pub fn wait_tx_drained(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.reclaim_tx();
            if self.txq.outstanding() == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "device did not consume the tx queue"
            );
            Self::wait_fd(&self.call, Duration::from_millis(50));
        }
    }

    /// Sends a packet the usual Linux way: a header descriptor, then a payload descriptor.
    pub fn send(&mut self, hdr: PacketHeader, data: &[u8]) {
        self.send_inner(hdr, data, true)
    }

    /// Sends a packet whose payload is whatever the tx slot holds (`hdr.len` bytes; the slot is
    /// not rewritten): benchmarks measure the device, not the guest application's copy.
    pub fn send_uncopied(&mut self, hdr: PacketHeader) {
        let len = hdr.len as usize;
        self.send_inner(hdr, &ZEROES[..len], false)
    }

    fn send_inner(&mut self, hdr: PacketHeader, data: &[u8], copy_payload: bool) {
        let slot = loop {
            self.reclaim_tx();
            if let Some(s) = self.tx_free_slots.pop() {
                break s;
            }
            Self::wait_fd(&self.call, Duration::from_millis(50));
        };
        let base = self.tx_slots[slot];
        assert!(data.len() <= (self.tx_slot_size as usize - HEADER_SIZE));
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(base))
            .unwrap();
        if copy_payload {
            self.mem
                .write_slice(data, GuestAddress(base + HEADER_SIZE as u64))
                .unwrap();
        }
        let mut descs = vec![Desc {
            addr: base,
            len: HEADER_SIZE as u32,
            write: false,
        }];
        if !data.is_empty() {
            descs.push(Desc {
                addr: base + HEADER_SIZE as u64,
                len: data.len() as u32,
                write: false,
            });
        }
        let head = loop {
            if let Some(h) = self.txq.add_chain(&descs) {
                break h;
            }
            self.reclaim_tx();
            Self::wait_fd(&self.call, Duration::from_millis(50));
        };
        self.tx_slot_of[usize::from(head)] = Some(slot);
        self.kick_tx();
    }

    /// Sends `data` on connection `src → dst` in packets of at most `chunk` bytes, never more than
    /// the device's advertised credit ahead of its `fwd_cnt` (as Linux does). `on_other` sees
    /// every packet that is not for this connection.
    pub fn send_stream(
        &mut self,
        src: u32,
        dst: u32,
        data: &[u8],
        chunk: usize,
        on_other: impl FnMut(&mut Guest, Packet),
    ) {
        self.send_stream_inner(src, dst, data.len(), Some(data), chunk, on_other)
    }

    /// `send_stream` of `len` bytes without writing payloads (see `send_uncopied`).
    pub fn send_stream_uncopied(&mut self, src: u32, dst: u32, len: usize, chunk: usize) {
        self.send_stream_inner(src, dst, len, None, chunk, |_, _| {});
    }

    fn send_stream_inner(
        &mut self,
        src: u32,
        dst: u32,
        total: usize,
        data: Option<&[u8]>,
        chunk: usize,
        mut on_other: impl FnMut(&mut Guest, Packet),
    ) {
        let mut sent = 0usize;
        let mut peer_fwd: u32 = 0;
        let mut peer_buf: u32 = 256 * 1024;
        while sent < total {
            let n = chunk.min(total - sent);
            let in_flight = (sent as u32).wrapping_sub(peer_fwd);
            if in_flight as usize + n <= peer_buf as usize {
                let mut h = hdr(op::RW, src, dst, 256 * 1024, 0);
                h.len = n as u32;
                match data {
                    Some(d) => self.send(h, &d[sent..sent + n]),
                    None => self.send_uncopied(h),
                }
                sent += n;
                continue;
            }
            let p = self.recv();
            if p.hdr.dst_port == src && p.hdr.src_port == dst {
                peer_fwd = p.hdr.fwd_cnt;
                peer_buf = p.hdr.buf_alloc;
                assert_ne!(p.hdr.op, op::RST, "device reset the stream");
            } else {
                on_other(self, p);
            }
        }
    }

    /// A tx slot's guest address, for tests that hand-build chains.
    pub fn scratch(&self) -> u64 {
        self.tx_slots[self.tx_slots.len() - 1]
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop();
            let failures = self.failures.drain();
            assert!(failures.is_empty(), "the device failed: {failures:?}");
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop();
        }
    }
}

/// A header from the guest (cid 3) to the host (cid 2).
pub fn hdr(op_: u16, src_port: u32, dst_port: u32, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: op_,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}
