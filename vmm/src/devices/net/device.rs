//! The virtio-net device (virtio 1.2, 5.1) with a tap host side: its identity, features,
//! config space, and the rx/tx queue work both transports run (our virtio-mmio adapter,
//! `devices::virtio::net_mmio`, and the vhost-user backend, `vhost_user::net`).
//!
//! Features follow Firecracker's net device: checksum offload both ways (CSUM, GUEST_CSUM),
//! TCP segmentation and UDP fragmentation offload both ways (HOST_/GUEST_ TSO4, TSO6, UFO),
//! mergeable rx buffers (MRG_RXBUF), and MAC when one is configured. MRG_RXBUF because without
//! it a Linux driver that takes GUEST_TSO posts "big packet" buffers of 64 KiB each, one per
//! frame: a 256-entry ring then holds about 14 frames (each chain 19 descriptors) and every
//! small frame pins 64 KiB; with it the driver posts page-sized buffers and we spread a large
//! frame over as many as it needs (the header's `num_buffers`).
//!
//! Rx: a frame is read from the tap when it is readable (edge-triggered: we read until EAGAIN
//! or until the guest has no buffers, and go on when the guest adds some) and written into
//! the guest's buffers; a frame that cannot be placed yet waits in `rx_frame`. Tx: the queue is
//! drained, each chain checked and written to the tap as one frame, by writev straight from
//! guest memory. What a single frame or
//! chain does wrong drops that frame and is counted; a broken queue or a tap that vanished is
//! a [`NetError`], which stops the device until the driver resets it.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemory, Permissions};

use super::chain::{Direction, Segment, segments};
use super::error::{FrameError, NetError};
use super::header::{HEADER_SIZE, NetHeader, set_num_buffers};
use super::tap::{Tap, TapIo, tap_vanished};
use crate::devices::virtio::UsedQueues;

/// Virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = crate::devices::virtio::DEVICE_ID_NET;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// One rx/tx queue pair (no VIRTIO_NET_F_MQ, no control queue).
pub const NUM_QUEUES: usize = 2;
/// Queue size we offer (Firecracker's and Linux's usual 256).
pub const QUEUE_SIZE: u16 = 256;
/// The largest frame, header included, either way: a 64 KiB segmentation-offload frame plus
/// its Ethernet and virtio-net headers (65536 + 14 + 12), Firecracker's limit.
pub const MAX_BUFFER_SIZE: usize = 65562;

/// A MAC address (`aa:bb:cc:dd:ee:ff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::InvalidMac(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(mac))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A network device: which tap, which MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap interface (opened, or created, in the VMM's network namespace).
    pub tap: String,
    /// The guest's MAC (VIRTIO_NET_F_MAC); without one the guest driver picks a random one.
    pub mac: Option<MacAddr>,
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    /// Parses `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = None;
        for opt in s.split(',') {
            if let Some(name) = opt.strip_prefix("tap=") {
                tap = Some(name.to_owned());
            } else if let Some(m) = opt.strip_prefix("mac=") {
                mac = Some(m.parse::<MacAddr>().map_err(|e| e.to_string())?);
            } else {
                return Err(format!(
                    "network device option {opt:?} in {s:?} is not one of tap=NAME, mac=MAC"
                ));
            }
        }
        let tap = tap
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("network device {s:?} names no tap (expected tap=NAME)"))?;
        Ok(Self { tap, mac })
    }
}

/// What woke the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// The guest added rx buffers.
    RxKick,
    /// The guest queued frames.
    TxKick,
    /// The tap has frames to read (or failed).
    Tap,
}

/// Frames passed and dropped, each way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_dropped: u64,
    /// Chains returned unused because they were malformed.
    pub bad_chains: u64,
    /// The last frame or chain error, for logs and tests.
    pub last_error: Option<FrameError>,
}

/// Where placing one rx frame ended.
enum Placed {
    Delivered,
    /// The guest has not posted enough buffers; the frame waits.
    NoBuffers,
    Dropped(FrameError),
}

pub struct NetDevice {
    tap: Tap,
    mac: Option<MacAddr>,
    acked: u64,
    /// The TUN_F_* flags the acked features call for, not yet given to the tap: set on the
    /// device thread at its next event (a vCPU thread, which acks features, may not ioctl).
    offload_pending: Option<u32>,
    rx_frame: Vec<u8>,
    /// Bytes of `rx_frame` holding a frame read from the tap and not yet placed (0: none).
    rx_pending: usize,
    stats: NetStats,
}

impl NetDevice {
    /// Opens the tap `config.tap` (in the calling thread's network namespace).
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        Ok(Self::with_tap(Tap::open(&config.tap)?, config.mac))
    }

    pub fn with_tap(tap: Tap, mac: Option<MacAddr>) -> Self {
        Self {
            tap,
            mac,
            acked: 0,
            offload_pending: None,
            rx_frame: vec![0; MAX_BUFFER_SIZE],
            rx_pending: 0,
            stats: NetStats::default(),
        }
    }

    /// The feature bits offered.
    pub fn features(&self) -> u64 {
        let bits = [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_F_VERSION_1,
        ];
        let mac = self.mac.map_or(0, |_| 1 << VIRTIO_NET_F_MAC);
        bits.iter().fold(mac, |f, &b| f | 1 << b)
    }

    /// The driver accepted `features` (masked to what we offer); the tap's offloads follow
    /// at the device thread's next event.
    pub fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
        self.offload_pending = Some(tap_offload(self.acked));
    }

    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// `struct virtio_net_config`: the MAC (the rest, status and beyond, belongs to features we
    /// do not offer and reads as zeros).
    pub fn config_space(&self) -> Vec<u8> {
        self.mac.map_or([0; 6], |m| m.0).to_vec()
    }

    /// The tap's descriptor, for the device thread's epoll set (edge-triggered).
    pub fn tap_fd(&self) -> std::os::fd::RawFd {
        self.tap.raw_fd()
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Whether a frame read from the tap waits for rx buffers.
    pub fn has_pending_rx(&self) -> bool {
        self.rx_pending > 0
    }

    /// Back to the initial state (a driver reset): features and the waiting frame go; the tap
    /// stays open, its offloads as they were until the next driver acks its own.
    pub fn reset(&mut self) {
        self.acked = 0;
        self.offload_pending = None;
        self.rx_pending = 0;
    }

    /// Runs what `event` calls for. Tx is drained on every event (with EVENT_IDX the guest
    /// may queue frames without a kick while we are busy), then rx is filled.
    pub fn handle_event<M: GuestMemory>(
        &mut self,
        event: NetEvent,
        mem: &M,
        rxq: &mut Queue,
        txq: &mut Queue,
    ) -> Result<UsedQueues, NetError> {
        if let Some(flags) = self.offload_pending.take() {
            self.tap.set_offload(flags)?;
            tracing::info!(
                "virtio-net: driver features {:#x}, tap {} offloads {flags:#x}",
                self.acked,
                self.tap.name()
            );
        }
        tracing::trace!(?event, "virtio-net event");
        let tx = self.process_tx(mem, txq)?;
        let rx = self.process_rx(mem, rxq)?;
        Ok(UsedQueues { rx, tx })
    }

    fn tap_error(&self, reason: std::io::Error) -> NetError {
        let name = self.tap.name().to_owned();
        if tap_vanished(&reason) {
            NetError::TapVanished { name, reason }
        } else {
            NetError::TapIo { name, reason }
        }
    }

    fn drop_frame(&mut self, rx: bool, e: FrameError) {
        tracing::debug!(rx, "virtio-net: frame dropped: {e}");
        if rx {
            self.stats.rx_dropped += 1;
        } else {
            self.stats.tx_dropped += 1;
        }
        self.stats.last_error = Some(e);
    }

    /// Sends every frame on the tx queue to the tap; returns whether any chain was used.
    pub fn process_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        txq: &mut Queue,
    ) -> Result<bool, NetError> {
        let mut used = false;
        while let Some(chain) = txq.iter(mem).map_err(NetError::Queue)?.next() {
            let head = chain.head_index();
            let result = self.transmit(chain, mem);
            // Every chain goes back, sent or not: tx buffers are never written.
            txq.add_used(mem, head, 0).map_err(NetError::Queue)?;
            used = true;
            match result {
                Ok(()) => self.stats.tx_frames += 1,
                Err(TxError::Frame(e)) => {
                    if matches!(
                        e,
                        FrameError::WriteOnlyInTx { .. }
                            | FrameError::InvalidAddress { .. }
                            | FrameError::BrokenChain
                    ) {
                        self.stats.bad_chains += 1;
                    }
                    self.drop_frame(false, e);
                }
                Err(TxError::Device(e)) => return Err(e),
            }
        }
        Ok(used)
    }

    /// Writes one tx chain to the tap as one frame, straight from guest memory (writev over
    /// the chain's buffers: no copy), once the chain and its header are checked. The guest
    /// could change the header after the check; that only harms its own frame (the kernel
    /// validates the header it reads again).
    fn transmit<M: GuestMemory>(
        &mut self,
        chain: virtio_queue::DescriptorChain<&M>,
        mem: &M,
    ) -> Result<(), TxError> {
        let (segs, total) = segments(chain, mem, Direction::Readable, MAX_BUFFER_SIZE as u64)?;
        let mut header = [0u8; HEADER_SIZE];
        if read_at(mem, &segs, &mut header) < HEADER_SIZE {
            return Err(FrameError::ShortFrame {
                len: total as usize,
            }
            .into());
        }
        NetHeader::parse(&header)?.check(self.acked, false)?;
        let mut guards = Vec::with_capacity(segs.len());
        for seg in &segs {
            let bad = || FrameError::InvalidAddress {
                addr: seg.addr.0,
                len: seg.len,
            };
            let slices = mem
                .get_slices(seg.addr, seg.len as usize, Permissions::Read)
                .map_err(|_| bad())?;
            for slice in slices {
                guards.push(slice.map_err(|_| bad())?.ptr_guard());
            }
        }
        let iovs: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: g.len(),
            })
            .collect();
        // The guards keep the mappings alive (and their dirty tracking, were there any) until
        // writev has read them.
        let result = self.tap.write_frame_vectored(&iovs);
        drop(guards);
        match result {
            Ok(TapIo::Done(_)) => Ok(()),
            Ok(TapIo::WouldBlock) => Err(FrameError::TapRefused {
                reason: "its queue is full".into(),
            }
            .into()),
            Err(e) if tap_vanished(&e) => Err(TxError::Device(self.tap_error(e))),
            // EIO: the interface is down; EINVAL: the kernel refused the header. One frame.
            Err(e) => Err(FrameError::TapRefused {
                reason: e.to_string(),
            }
            .into()),
        }
    }

    /// Moves frames from the tap into the guest's rx buffers until the tap has none or the
    /// guest has no room; returns whether any chain was used.
    pub fn process_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        rxq: &mut Queue,
    ) -> Result<bool, NetError> {
        let mut used = false;
        loop {
            if self.rx_pending == 0 {
                match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(TapIo::Done(n)) => self.rx_pending = n,
                    Ok(TapIo::WouldBlock) => return Ok(used),
                    Err(e) => return Err(self.tap_error(e)),
                }
                let checked = NetHeader::parse(&self.rx_frame[..self.rx_pending])
                    .and_then(|h| h.check(self.acked, true));
                if let Err(e) = checked {
                    self.rx_pending = 0;
                    self.drop_frame(true, e);
                    continue;
                }
            }
            let (placed, any_used) = self.place_rx(mem, rxq)?;
            used |= any_used;
            match placed {
                Placed::Delivered => {
                    self.rx_pending = 0;
                    self.stats.rx_frames += 1;
                }
                Placed::NoBuffers => return Ok(used),
                Placed::Dropped(e) => {
                    self.rx_pending = 0;
                    self.drop_frame(true, e);
                }
            }
        }
    }

    /// Writes the waiting frame into as many rx chains as it needs (one without
    /// MRG_RXBUF). Malformed chains go back unused (length 0) after the frame's. Returns the
    /// outcome and whether any chain was used.
    fn place_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        rxq: &mut Queue,
    ) -> Result<(Placed, bool), NetError> {
        let mergeable = self.acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let len = self.rx_pending;
        let start = rxq.next_avail();
        let mut placed: Vec<(u16, u32)> = Vec::new();
        let mut first: Vec<Segment> = Vec::new();
        let mut bad: Vec<u16> = Vec::new();
        let mut written = 0usize;
        let outcome = loop {
            if written >= len {
                break Placed::Delivered;
            }
            let Some(chain) = rxq.iter(mem).map_err(NetError::Queue)?.next() else {
                break Placed::NoBuffers;
            };
            let head = chain.head_index();
            let segs = match segments(chain, mem, Direction::Writable, u64::MAX) {
                Ok((_, cap)) if cap < HEADER_SIZE as u64 => {
                    Err(FrameError::ShortRxBuffer { len: cap as u32 })
                }
                Ok((_, cap)) if !mergeable && cap < len as u64 => {
                    // Keep the chain for a frame it can hold.
                    rxq.go_to_previous_position();
                    break Placed::Dropped(FrameError::FrameExceedsBuffer { len, capacity: cap });
                }
                other => other.map(|(segs, _)| segs),
            };
            let segs = match segs {
                Ok(segs) => segs,
                Err(e) => {
                    self.stats.bad_chains += 1;
                    self.stats.last_error = Some(e);
                    bad.push(head);
                    continue;
                }
            };
            let n = write_segments(mem, &segs, &self.rx_frame[written..len]);
            if placed.is_empty() {
                first = segs;
            }
            placed.push((head, n as u32));
            written += n;
        };
        if let Placed::NoBuffers = outcome {
            // Nothing is published: the chains (bad ones too) are looked at again next time.
            rxq.set_next_avail(start);
            return Ok((outcome, false));
        }
        if let Placed::Delivered = outcome {
            let mut num_buffers = [0u8; HEADER_SIZE];
            set_num_buffers(&mut num_buffers, placed.len() as u16);
            write_at(mem, &first, 10, &num_buffers[10..]);
        }
        let any = !placed.is_empty() || !bad.is_empty();
        let placed = if let Placed::Delivered = outcome {
            placed
        } else {
            Vec::new()
        };
        for (head, n) in placed {
            rxq.add_used(mem, head, n).map_err(NetError::Queue)?;
        }
        for head in bad {
            rxq.add_used(mem, head, 0).map_err(NetError::Queue)?;
        }
        Ok((outcome, any))
    }
}

/// A tx frame that was dropped, or a device failure met while sending it.
enum TxError {
    Frame(FrameError),
    Device(NetError),
}

impl From<FrameError> for TxError {
    fn from(e: FrameError) -> Self {
        TxError::Frame(e)
    }
}

/// Writes as much of `data` as fits into `segs` (validated to lie in `mem`); returns how much.
fn write_segments<M: GuestMemory>(mem: &M, segs: &[Segment], data: &[u8]) -> usize {
    let mut at = 0;
    for seg in segs {
        if at >= data.len() {
            break;
        }
        let n = (seg.len as usize).min(data.len() - at);
        if mem.write_slice(&data[at..at + n], seg.addr).is_err() {
            break;
        }
        at += n;
    }
    at
}

/// Reads the first `buf.len()` bytes of the buffer `segs` describe; returns how many there were.
fn read_at<M: GuestMemory>(mem: &M, segs: &[Segment], buf: &mut [u8]) -> usize {
    let mut at = 0;
    for seg in segs {
        if at >= buf.len() {
            break;
        }
        let n = (seg.len as usize).min(buf.len() - at);
        if mem.read_slice(&mut buf[at..at + n], seg.addr).is_err() {
            break;
        }
        at += n;
    }
    at
}

/// Writes `data` at byte `offset` of the buffer `segs` describe.
fn write_at<M: GuestMemory>(mem: &M, segs: &[Segment], mut offset: usize, mut data: &[u8]) {
    for seg in segs {
        let len = seg.len as usize;
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(data.len());
        let _ = mem.write_slice(&data[..n], seg.addr.unchecked_add(offset as u64));
        data = &data[n..];
        offset = 0;
        if data.is_empty() {
            return;
        }
    }
}

/// The tap offloads (TUN_F_*) for the guest features `acked`: the host stack may hand the
/// guest partial checksums and unsegmented frames only as far as the guest takes them.
pub fn tap_offload(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (bit, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if has(bit) {
            flags |= flag;
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_option_parsing() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, None);
        let n: NetConfig = "tap=t1,mac=52:54:00:12:34:5A".parse().unwrap();
        assert_eq!(n.mac, Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x5a])));
        assert_eq!(n.mac.unwrap().to_string(), "52:54:00:12:34:5a");
        assert!("mac=52:54:00:12:34:56".parse::<NetConfig>().is_err());
        assert!("tap=".parse::<NetConfig>().is_err());
        assert!("tap=t,mac=52:54:00:12:34".parse::<NetConfig>().is_err());
        assert!(
            "tap=t,mac=52:54:00:12:34:56:78"
                .parse::<NetConfig>()
                .is_err()
        );
        assert!("tap=t,mac=zz:54:00:12:34:56".parse::<NetConfig>().is_err());
        let e = "tap=t,vhost=on".parse::<NetConfig>().unwrap_err();
        assert!(e.contains("\"vhost=on\""), "{e}");
    }

    #[test]
    fn offloads_follow_the_guest_features() {
        assert_eq!(tap_offload(0), 0);
        // TSO without GUEST_CSUM is meaningless: the kernel needs TUN_F_CSUM for it.
        assert_eq!(tap_offload(1 << VIRTIO_NET_F_GUEST_TSO4), 0);
        let all = (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6)
            | (1 << VIRTIO_NET_F_GUEST_UFO);
        assert_eq!(
            tap_offload(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO
        );
    }
}
