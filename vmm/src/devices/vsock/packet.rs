//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and the parsing of descriptor chains into
//! packets.
//!
//! Everything here reads memory the guest controls: every descriptor's flags, address and length
//! are checked before use, and a bad chain is a `PacketError`, never a panic. Payloads are not
//! copied at parse time: a packet carries the validated guest ranges, and the muxer moves bytes
//! between those ranges and host sockets directly.

use std::io;
use std::os::unix::net::UnixStream;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, Permissions, ReadVolatile, VolatileMemoryError,
    WriteVolatile,
};

use super::error::PacketError;

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HEADER_SIZE: usize = 44;
/// Largest payload one packet may carry. Linux never sends more than 64 KiB per packet
/// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE), so anything larger is a malformed header.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Longest descriptor chain accepted for one packet. Linux uses a header descriptor plus at most
/// MAX_SKB_FRAGS+1 payload fragments; a much longer chain is a guest bug or an attack.
pub const MAX_CHAIN_DESCRIPTORS: usize = 64;

/// The well-known cid of the host (virtio 1.2, 5.10.4).
pub const HOST_CID: u64 = 2;

/// `type` field: stream sockets, the only type this device offers (no VIRTIO_VSOCK_F_SEQPACKET).
pub const TYPE_STREAM: u16 = 1;

/// `op` field values.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN `flags`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN `flags`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`, decoded from its little-endian wire form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A run of guest memory that was checked to lie inside guest RAM when the chain was parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A packet the guest put on the tx queue: its header and the guest ranges holding exactly
/// `header.len` payload bytes.
#[derive(Debug)]
pub struct TxPacket {
    pub header: PacketHeader,
    pub payload: Vec<GuestRange>,
}

/// Parses a tx descriptor chain. The header may span descriptors; every descriptor must be
/// device-readable and inside guest memory; `header.len` must fit both `MAX_PAYLOAD` and the
/// bytes the chain really holds.
pub fn parse_tx_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    descriptors: impl Iterator<Item = Descriptor>,
) -> Result<TxPacket, PacketError> {
    let mut header_bytes = [0u8; HEADER_SIZE];
    let mut header_filled = 0usize;
    let mut payload = Vec::new();
    let mut payload_available: u64 = 0;

    for (index, desc) in descriptors.enumerate() {
        if index >= MAX_CHAIN_DESCRIPTORS {
            return Err(PacketError::ChainTooLong {
                max: MAX_CHAIN_DESCRIPTORS,
            });
        }
        if desc.is_write_only() {
            return Err(PacketError::UnexpectedWriteOnly { index });
        }
        let len = desc.len() as usize;
        check_range(mem, desc.addr(), len, Permissions::Read)?;

        let mut used = 0usize;
        if header_filled < HEADER_SIZE {
            used = (HEADER_SIZE - header_filled).min(len);
            mem.read_slice(
                &mut header_bytes[header_filled..header_filled + used],
                desc.addr(),
            )
            .map_err(|_| PacketError::InvalidAddress {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            })?;
            header_filled += used;
        }
        // Only collect what a maximal payload could need: the chain itself may be longer.
        if used < len && payload_available < u64::from(MAX_PAYLOAD) {
            let addr = desc
                .addr()
                .checked_add(used as u64)
                .ok_or(PacketError::InvalidAddress {
                    addr: desc.addr().raw_value(),
                    len: desc.len(),
                })?;
            let rest = (len - used) as u32;
            payload.push(GuestRange { addr, len: rest });
            payload_available += u64::from(rest);
        }
    }

    if header_filled < HEADER_SIZE {
        return Err(PacketError::ShortHeader { len: header_filled });
    }
    let header = PacketHeader::from_bytes(&header_bytes);
    if header.len > MAX_PAYLOAD {
        return Err(PacketError::PayloadTooLarge {
            len: header.len,
            max: MAX_PAYLOAD,
        });
    }
    if u64::from(header.len) > payload_available {
        return Err(PacketError::PayloadExceedsChain {
            len: header.len,
            available: payload_available,
        });
    }
    truncate_ranges(&mut payload, header.len as usize);
    Ok(TxPacket { header, payload })
}

/// A guest buffer from the rx queue, checked to be device-writable guest memory large enough for
/// at least a header.
#[derive(Debug)]
pub struct RxBuffer {
    pub ranges: Vec<GuestRange>,
    pub capacity: usize,
}

impl RxBuffer {
    /// Payload bytes this buffer can take after the header.
    pub fn payload_capacity(&self) -> usize {
        self.capacity.saturating_sub(HEADER_SIZE)
    }
}

/// Parses an rx descriptor chain: every descriptor must be device-writable and inside guest
/// memory, and the chain must hold at least a header.
pub fn parse_rx_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    descriptors: impl Iterator<Item = Descriptor>,
) -> Result<RxBuffer, PacketError> {
    let mut ranges = Vec::new();
    let mut capacity = 0usize;
    for (index, desc) in descriptors.enumerate() {
        if index >= MAX_CHAIN_DESCRIPTORS {
            return Err(PacketError::ChainTooLong {
                max: MAX_CHAIN_DESCRIPTORS,
            });
        }
        if !desc.is_write_only() {
            return Err(PacketError::UnexpectedReadOnly { index });
        }
        let len = desc.len() as usize;
        check_range(mem, desc.addr(), len, Permissions::Write)?;
        // Cap what we track: a packet never needs more than header + MAX_PAYLOAD.
        if capacity < HEADER_SIZE + MAX_PAYLOAD as usize && len > 0 {
            ranges.push(GuestRange {
                addr: desc.addr(),
                len: desc.len(),
            });
            capacity += len;
        }
    }
    if capacity < HEADER_SIZE {
        return Err(PacketError::ShortRxBuffer { len: capacity });
    }
    let capacity = capacity.min(HEADER_SIZE + MAX_PAYLOAD as usize);
    truncate_ranges(&mut ranges, capacity);
    Ok(RxBuffer { ranges, capacity })
}

fn check_range<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: usize,
    access: Permissions,
) -> Result<(), PacketError> {
    let end_ok = addr.raw_value().checked_add(len as u64).is_some();
    if !end_ok || (len > 0 && !mem.check_range(addr, len, access)) {
        return Err(PacketError::InvalidAddress {
            addr: addr.raw_value(),
            len: len as u32,
        });
    }
    Ok(())
}

/// Keeps the first `total` bytes of `ranges`.
fn truncate_ranges(ranges: &mut Vec<GuestRange>, total: usize) {
    let mut left = total;
    let mut keep = 0;
    for r in ranges.iter_mut() {
        if left == 0 {
            break;
        }
        let take = (r.len as usize).min(left);
        r.len = take as u32;
        left -= take;
        keep += 1;
    }
    ranges.truncate(keep);
}

/// Walks `ranges` starting `skip` bytes in, calling `f` with each sub-range of at most `max`
/// bytes in total; `f` returns how many bytes it handled, and a short count stops the walk.
fn for_each_subrange(
    ranges: &[GuestRange],
    mut skip: usize,
    max: usize,
    mut f: impl FnMut(GuestAddress, usize) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = 0usize;
    for r in ranges {
        if done >= max {
            break;
        }
        let rlen = r.len as usize;
        if skip >= rlen {
            skip -= rlen;
            continue;
        }
        let want = (rlen - skip).min(max - done);
        let addr = r.addr.unchecked_add(skip as u64);
        skip = 0;
        let n = match f(addr, want) {
            Ok(n) => n,
            Err(e) if done > 0 && e.kind() == io::ErrorKind::WouldBlock => return Ok(done),
            Err(e) => return Err(e),
        };
        done += n;
        if n < want {
            break;
        }
    }
    Ok(done)
}

fn mem_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("guest memory access: {e}"),
    )
}

fn volatile_err(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => mem_err(other),
    }
}

/// How many bytes one non-blocking socket transfer moved, or `None` when the socket would
/// block after `so_far` bytes had already moved (the transfer then ends with those).
fn moved(so_far: usize, result: Result<usize, VolatileMemoryError>) -> io::Result<Option<usize>> {
    match result.map_err(volatile_err) {
        Ok(n) => Ok(Some(n)),
        Err(e) if so_far > 0 && e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Which way a socket transfer moves guest bytes.
#[derive(Clone, Copy)]
pub enum StreamDirection {
    /// The guest's bytes to the socket: returns how many the socket took; `WouldBlock` only
    /// when it took none.
    GuestToStream,
    /// The socket's bytes into the guest: returns the count (0 means end of stream);
    /// `WouldBlock` when no byte was ready.
    StreamToGuest,
}

/// Moves at most `max` bytes between the guest ranges (from `skip` bytes in) and `stream`
/// without blocking; stops at the first short transfer.
pub fn stream_io<M: GuestMemory + ?Sized>(
    mem: &M,
    (ranges, skip, max): (&[GuestRange], usize, usize),
    mut stream: &UnixStream,
    direction: StreamDirection,
) -> io::Result<usize> {
    let permissions = match direction {
        StreamDirection::GuestToStream => Permissions::Read,
        StreamDirection::StreamToGuest => Permissions::Write,
    };
    for_each_subrange(ranges, skip, max, |addr, len| {
        let mut done = 0usize;
        for slice in mem.get_slices(addr, len, permissions).map_err(mem_err)? {
            let mut slice = slice.map_err(mem_err)?;
            let result = match direction {
                StreamDirection::GuestToStream => stream.write_volatile(&slice),
                StreamDirection::StreamToGuest => stream.read_volatile(&mut slice),
            };
            let Some(n) = moved(done, result)? else {
                return Ok(done);
            };
            done += n;
            if n < slice.len() {
                break;
            }
        }
        Ok(done)
    })
}

/// Copies bytes `skip..skip+len` of the guest ranges into a host buffer.
pub fn copy_from_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    ranges: &[GuestRange],
    skip: usize,
    out: &mut Vec<u8>,
    len: usize,
) -> io::Result<usize> {
    for_each_subrange(ranges, skip, len, |addr, len| {
        let start = out.len();
        out.resize(start + len, 0);
        mem.read_slice(&mut out[start..], addr).map_err(mem_err)?;
        Ok(len)
    })
}

/// Writes `bytes` into the guest ranges starting `skip` bytes in. The caller checked the
/// buffer is large enough.
pub fn write_bytes_to_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    ranges: &[GuestRange],
    skip: usize,
    bytes: &[u8],
) -> io::Result<usize> {
    let mut offset = 0usize;
    for_each_subrange(ranges, skip, bytes.len(), |addr, len| {
        mem.write_slice(&bytes[offset..offset + len], addr)
            .map_err(mem_err)?;
        offset += len;
        Ok(len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_wire_bytes() {
        let h = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 8888,
            len: 77,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 3,
            buf_alloc: 1 << 18,
            fwd_cnt: 0xdead_beef,
        };
        let bytes = h.to_bytes();
        assert_eq!(&bytes[0..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[30..32], &op::RW.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&bytes), h);
    }

    #[test]
    fn truncate_keeps_exact_prefix() {
        let mut r = vec![
            GuestRange {
                addr: GuestAddress(0x1000),
                len: 10,
            },
            GuestRange {
                addr: GuestAddress(0x2000),
                len: 10,
            },
        ];
        truncate_ranges(&mut r, 15);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].len, 5);
        truncate_ranges(&mut r, 0);
        assert!(r.is_empty());
    }
}
