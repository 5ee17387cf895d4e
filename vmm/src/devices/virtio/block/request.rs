//! Parsing and executing one virtio-blk request (virtio 1.2, section 5.2.6): a device-readable
//! header, data buffers, and a one-byte device-writable status at the end. Everything in the
//! chain is guest-controlled: a request that does not follow the layout gets IOERR, or is
//! dropped when it has nowhere to put a status.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Length of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Most segments one discard or write-zeroes request may carry (advertised in the config).
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Most sectors one segment may cover (advertised in the config): 2 GiB.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
const SEGMENT_LEN: usize = 16;
/// virtio_blk_discard_write_zeroes.flags: the device may unmap (only for write-zeroes).
const SEGMENT_FLAG_UNMAP: u32 = 1;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

const HEADER_LEN: u32 = 16;
/// The buffer of zeros written where write-zeroes cannot punch a hole.
const CHUNK: usize = 64 * 1024;
/// Longest chain we accept; virtio-queue already stops at the queue size and on loops.
pub const MAX_DESCRIPTORS: usize = 1024;

/// The backing file as the device sees it.
pub struct Disk {
    pub file: File,
    pub capacity_bytes: u64,
    pub read_only: bool,
    pub id: [u8; ID_BYTES],
}

/// The parts of a chain, checked for shape but not yet executed.
#[derive(Debug)]
pub struct Request {
    pub kind: u32,
    pub sector: u64,
    pub data: Vec<Descriptor>,
    pub status_addr: GuestAddress,
}

/// Why a chain is not a request.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No device-writable status byte at the end: nothing can be reported.
    NoStatus,
    /// The header is missing, short, device-writable or unreadable; IOERR goes to the status.
    BadHeader(GuestAddress),
}

/// Splits `descs` (the chain in order) into header, data and status.
pub fn parse(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<Request, ParseError> {
    let Some((status, rest)) = descs.split_last() else {
        return Err(ParseError::NoStatus);
    };
    // A last descriptor that still points to a next one means the chain was cut short (too
    // long, or over 4 GiB in total, which virtio-queue stops at): its real end is unknown.
    if !status.is_write_only() || status.len() < 1 || status.has_next() {
        return Err(ParseError::NoStatus);
    }
    let status_addr = status.addr();
    let Some((header, data)) = rest.split_first() else {
        return Err(ParseError::BadHeader(status_addr));
    };
    if header.is_write_only() || header.len() < HEADER_LEN {
        return Err(ParseError::BadHeader(status_addr));
    }
    let kind: u32 = mem
        .read_obj(header.addr())
        .map_err(|_| ParseError::BadHeader(status_addr))?;
    let sector: u64 = header
        .addr()
        .checked_add(8)
        .and_then(|a| mem.read_obj(a).ok())
        .ok_or(ParseError::BadHeader(status_addr))?;
    Ok(Request {
        kind,
        sector,
        data: data.to_vec(),
        status_addr,
    })
}

/// Executes `req` against `disk`; returns the status and the bytes written into guest buffers
/// (not counting the status byte).
pub fn execute(mem: &GuestMemoryMmap, disk: &Disk, req: &Request) -> (u8, u32) {
    match req.kind {
        VIRTIO_BLK_T_IN => transfer(mem, disk, req, Direction::Read),
        VIRTIO_BLK_T_OUT if disk.read_only => (VIRTIO_BLK_S_IOERR, 0),
        VIRTIO_BLK_T_OUT => transfer(mem, disk, req, Direction::Write),
        VIRTIO_BLK_T_FLUSH if disk.read_only => (VIRTIO_BLK_S_OK, 0),
        VIRTIO_BLK_T_FLUSH => match disk.file.sync_data() {
            Ok(()) => (VIRTIO_BLK_S_OK, 0),
            Err(e) => {
                tracing::warn!("virtio-blk: flush failed: {e}");
                (VIRTIO_BLK_S_IOERR, 0)
            }
        },
        VIRTIO_BLK_T_GET_ID => get_id(mem, disk, req),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if disk.read_only => {
            (VIRTIO_BLK_S_IOERR, 0)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => discard_or_zero(mem, disk, req),
        other => {
            tracing::debug!(kind = other, "virtio-blk: unsupported request type");
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

fn transfer(mem: &GuestMemoryMmap, disk: &Disk, req: &Request, dir: Direction) -> (u8, u32) {
    // Shape first: every data buffer in the right direction, a whole number of sectors,
    // and the whole range inside the disk. Nothing is touched unless all of it is valid.
    let mut total: u64 = 0;
    for d in &req.data {
        let writable = d.is_write_only();
        if (dir == Direction::Read) != writable {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        total += u64::from(d.len());
    }
    // The used length the device reports is a u32: larger transfers are not a valid request.
    if !total.is_multiple_of(SECTOR_SIZE) || total >= u64::from(u32::MAX) {
        return (VIRTIO_BLK_S_IOERR, 0);
    }
    let Some(start) = req.sector.checked_mul(SECTOR_SIZE) else {
        return (VIRTIO_BLK_S_IOERR, 0);
    };
    if start
        .checked_add(total)
        .is_none_or(|end| end > disk.capacity_bytes)
    {
        return (VIRTIO_BLK_S_IOERR, 0);
    }
    let mut offset = start;
    let mut written_to_guest: u32 = 0;
    for d in &req.data {
        let len = d.len() as usize;
        let result = move_data(&disk.file, mem, (d.addr(), len), offset, dir);
        if let Err(e) = result {
            tracing::debug!(
                offset,
                len,
                addr = d.addr().0,
                "virtio-blk: transfer failed: {e}"
            );
            return (VIRTIO_BLK_S_IOERR, written_to_guest);
        }
        if dir == Direction::Read {
            written_to_guest += len as u32;
        }
        offset += len as u64;
    }
    (VIRTIO_BLK_S_OK, written_to_guest)
}

/// The host address of `len` bytes of guest memory at `addr`, all in one region (a buffer
/// that runs off guest RAM, or across the MMIO hole, is refused).
fn guest_buffer(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
) -> std::io::Result<vm_memory::volatile_memory::PtrGuardMut> {
    let slice = mem
        .get_slice(addr, len)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    Ok(slice.ptr_guard_mut())
}

/// Moves `len` bytes between the file at `offset` and guest memory at `addr`, straight: no
/// bounce buffer, no allocation sized by the guest.
fn move_data(
    file: &File,
    mem: &GuestMemoryMmap,
    (addr, len): (GuestAddress, usize),
    offset: u64,
    direction: Direction,
) -> std::io::Result<()> {
    let buf = guest_buffer(mem, addr, len)?;
    let fd = file.as_raw_fd();
    let short = match direction {
        Direction::Read => std::io::ErrorKind::UnexpectedEof,
        Direction::Write => std::io::ErrorKind::WriteZero,
    };
    // SAFETY: `buf` covers `len` mapped bytes of guest memory for as long as it lives, and
    // `move_all` only passes ranges inside it. The guest may write them concurrently; that only
    // changes what it reads back (or what reaches the file).
    move_all(len, offset, short, |done, count, at| unsafe {
        let ptr = buf.as_ptr().add(done).cast();
        match direction {
            Direction::Read => libc::pread64(fd, ptr, count, at),
            Direction::Write => libc::pwrite64(fd, ptr, count, at),
        }
    })
}

/// Repeats `io(done, remaining, file offset)` (a pread or pwrite) until `len` bytes have moved,
/// retrying on EINTR; a call that moves nothing is the error `short`.
fn move_all(
    len: usize,
    offset: u64,
    short: std::io::ErrorKind,
    mut io: impl FnMut(usize, usize, libc::off64_t) -> isize,
) -> std::io::Result<()> {
    let mut done = 0;
    while done < len {
        let at = libc::off64_t::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        match io(done, len - done, at) {
            n if n > 0 => done += n as usize,
            0 => return Err(short.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn get_id(mem: &GuestMemoryMmap, disk: &Disk, req: &Request) -> (u8, u32) {
    match req.data.as_slice() {
        [d] if d.is_write_only() => {
            let n = (d.len() as usize).min(ID_BYTES);
            match mem.write_slice(&disk.id[..n], d.addr()) {
                Ok(()) => (VIRTIO_BLK_S_OK, n as u32),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        _ => (VIRTIO_BLK_S_IOERR, 0),
    }
}

/// One discard / write-zeroes segment: `num_sectors` sectors from `sector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}

/// Reads the request's segments from its device-readable buffers.
fn read_segments(mem: &GuestMemoryMmap, req: &Request) -> Option<Vec<Segment>> {
    let mut bytes = Vec::new();
    let max = MAX_DISCARD_SEGMENTS as usize * SEGMENT_LEN;
    for d in &req.data {
        let len = d.len() as usize;
        if d.is_write_only() || bytes.len() + len > max {
            return None;
        }
        let start = bytes.len();
        bytes.resize(start + len, 0);
        mem.read_slice(&mut bytes[start..], d.addr()).ok()?;
    }
    if bytes.is_empty() || bytes.len() % SEGMENT_LEN != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(SEGMENT_LEN)
            .map(|c| {
                let mut sector = [0u8; 8];
                sector.copy_from_slice(&c[..8]);
                let mut num = [0u8; 4];
                num.copy_from_slice(&c[8..12]);
                let mut flags = [0u8; 4];
                flags.copy_from_slice(&c[12..16]);
                Segment {
                    sector: u64::from_le_bytes(sector),
                    num_sectors: u32::from_le_bytes(num),
                    flags: u32::from_le_bytes(flags),
                }
            })
            .collect(),
    )
}

/// DISCARD and WRITE_ZEROES: both punch a hole, so the range reads back as zeros and the
/// sparse image frees its blocks; where the file system cannot punch holes, write-zeroes
/// writes zeros and discard (a hint) does nothing.
fn discard_or_zero(mem: &GuestMemoryMmap, disk: &Disk, req: &Request) -> (u8, u32) {
    let Some(segments) = read_segments(mem, req) else {
        return (VIRTIO_BLK_S_IOERR, 0);
    };
    let zero = req.kind == VIRTIO_BLK_T_WRITE_ZEROES;
    for seg in &segments {
        // Unmap is only defined for write-zeroes; unknown flag bits are unsupported.
        if seg.flags & !SEGMENT_FLAG_UNMAP != 0 || (!zero && seg.flags != 0) {
            return (VIRTIO_BLK_S_UNSUPP, 0);
        }
        let in_range = seg.num_sectors <= MAX_DISCARD_SECTORS
            && seg
                .sector
                .checked_add(u64::from(seg.num_sectors))
                .and_then(|end| end.checked_mul(SECTOR_SIZE))
                .is_some_and(|end| end <= disk.capacity_bytes);
        if !in_range {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
    }
    for seg in &segments {
        let offset = seg.sector * SECTOR_SIZE;
        let len = u64::from(seg.num_sectors) * SECTOR_SIZE;
        if let Err(e) = punch_hole(&disk.file, offset, len) {
            if !zero {
                tracing::debug!(
                    "virtio-blk: discard not supported by the image's file system: {e}"
                );
                continue;
            }
            if let Err(e) = write_zeros(&disk.file, offset, len) {
                tracing::warn!("virtio-blk: write-zeroes at {offset}: {e}");
                return (VIRTIO_BLK_S_IOERR, 0);
            }
        }
    }
    (VIRTIO_BLK_S_OK, 0)
}

fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate on a descriptor we own, with checked arguments.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn write_zeros(file: &File, mut offset: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; CHUNK];
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}
