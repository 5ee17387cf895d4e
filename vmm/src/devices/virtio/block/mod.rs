//! virtio-blk (virtio 1.2, section 5.2) over a raw image file: read, write, flush, get-id,
//! discard and write-zeroes (hole punching, so sparse images stay sparse); a read-only disk
//! offers VIRTIO_BLK_F_RO and fails every write with IOERR whatever the driver negotiated.

pub mod request;
pub mod resize;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::DEVICE_ID_BLOCK;
use super::single_queue::{QueueHandler, SingleQueueDevice};
pub use request::Disk;
use request::{ID_BYTES, MAX_DESCRIPTORS, ParseError, SECTOR_SIZE, VIRTIO_BLK_S_IOERR};

const QUEUE_SIZE: u16 = 256;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// Configuration space (virtio 1.2, 5.2.4): capacity (u64) at 0, size_max at 8, seg_max at 12,
/// geometry at 16, blk_size at 20, ..., max_discard_sectors at 36, max_discard_seg at 40,
/// discard_sector_alignment at 44, max_write_zeroes_sectors at 48, max_write_zeroes_seg at 52,
/// write_zeroes_may_unmap at 56.
pub const CONFIG_LEN: usize = 60;

/// Errors opening, naming or resizing a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("disk serial {0:?} is not 1 to 20 printable ASCII characters")]
    Serial(String),
    #[error("cannot resize a read-only disk")]
    ResizeReadOnly,
    #[error("new disk size {0} is not a multiple of {SECTOR_SIZE} bytes")]
    ResizeUnaligned(u64),
    #[error(
        "new disk size {size} is larger than the image file ({file_len} bytes): resize the file first"
    )]
    ResizeBeyondFile { size: u64, file_len: u64 },
    #[error("cannot read the size of the disk image: {0}")]
    ResizeStat(#[source] std::io::Error),
}

impl Disk {
    /// Opens `path` (read-write unless `read_only`). The size is rounded down to whole
    /// sectors; the id is the file's device and inode, as Firecracker derives it.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let file: File = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        // A directory opens read-only, and a block device reports length 0: neither is an
        // image whose size we can serve.
        if !meta.is_file() {
            return Err(BlockError::NotAFile(path.to_owned()));
        }
        let mut id = [0u8; ID_BYTES];
        let text = format!("{}:{}", meta.dev(), meta.ino());
        let n = text.len().min(ID_BYTES);
        id[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(Disk {
            file,
            capacity_bytes: meta.len() / SECTOR_SIZE * SECTOR_SIZE,
            read_only,
            id,
        })
    }

    /// Answers GET_ID with `serial` (at most 20 bytes, as virtio-blk's id field; Linux shows
    /// it as /sys/block/vdX/serial and /dev/disk/by-id/virtio-<serial>).
    pub fn set_serial(&mut self, serial: &str) -> Result<(), BlockError> {
        if serial.is_empty()
            || serial.len() > ID_BYTES
            || !serial.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(BlockError::Serial(serial.to_owned()));
        }
        self.id = [0; ID_BYTES];
        self.id[..serial.len()].copy_from_slice(serial.as_bytes());
        Ok(())
    }

    /// Serves `size` bytes of the image from now on (the caller already resized the file).
    /// A read-only disk, a size that is not whole sectors, or one past the file's end is
    /// refused and the capacity stays as it was.
    pub fn resize(&mut self, size: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ResizeReadOnly);
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::ResizeUnaligned(size));
        }
        let file_len = self.file.metadata().map_err(BlockError::ResizeStat)?.len();
        if size > file_len {
            return Err(BlockError::ResizeBeyondFile { size, file_len });
        }
        self.capacity_bytes = size;
        Ok(())
    }
}

/// The feature bits a disk offers (the transport adds VERSION_1, vhost-user its own bits).
pub fn features(read_only: bool) -> u64 {
    let by_mode = if read_only {
        VIRTIO_BLK_F_RO
    } else {
        VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES
    };
    VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH | by_mode
}

/// The configuration space of `disk` for a queue of `queue_size` descriptors.
pub fn config_space(disk: &Disk, queue_size: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[..8].copy_from_slice(&(disk.capacity_bytes / SECTOR_SIZE).to_le_bytes());
    // One descriptor each for header and status; the rest may carry data (no indirect
    // descriptors are offered, so a request must fit the ring).
    c[12..16].copy_from_slice(&u32::from(queue_size.saturating_sub(2)).to_le_bytes());
    // blk_size: the logical block size the driver uses.
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    c[36..40].copy_from_slice(&request::MAX_DISCARD_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&request::MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[44..48].copy_from_slice(&1u32.to_le_bytes());
    c[48..52].copy_from_slice(&request::MAX_DISCARD_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&request::MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[56] = 1;
    c
}

/// Serves every request the driver made available on `queue`: parse, execute, write the
/// status, return the chain. Malformed chains get IOERR, or are returned unused when they have
/// no status byte. Returns whether any chain was returned (the caller decides, with
/// `needs_notification`, whether to interrupt). Shared by our MMIO device and the vhost-user
/// backend.
pub fn process_queue(mem: &GuestMemoryMmap, queue: &mut Queue, disk: &Disk) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let descs: Vec<_> = chain.take(MAX_DESCRIPTORS).collect();
        let write_status = |addr, status: u8| u32::from(mem.write_obj(status, addr).is_ok());
        let used_len = match request::parse(mem, &descs) {
            Ok(req) => {
                let (status, written) = request::execute(mem, disk, &req);
                written + write_status(req.status_addr, status)
            }
            Err(ParseError::BadHeader(status_addr)) => {
                tracing::debug!(head, "virtio-blk: malformed request header");
                write_status(status_addr, VIRTIO_BLK_S_IOERR)
            }
            Err(ParseError::NoStatus) => {
                tracing::debug!(head, "virtio-blk: request without a status byte dropped");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, used_len) {
            tracing::warn!("virtio-blk: cannot return request {head}: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}

/// A virtio-blk device.
pub type Block = SingleQueueDevice<Disk>;

impl Block {
    /// Opens `path` as [`Disk::open`] does.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        Ok(SingleQueueDevice::with_handler(Disk::open(
            path, read_only,
        )?))
    }

    /// Answers GET_ID with `serial`, as [`Disk::set_serial`] checks it.
    pub fn with_serial(mut self, serial: &str) -> Result<Self, BlockError> {
        self.handler_mut().set_serial(serial)?;
        Ok(self)
    }

    /// Serves `size` bytes from now on ([`Disk::resize`]); the transport must then bump its
    /// config generation and raise the configuration-change interrupt.
    pub fn resize(&mut self, size: u64) -> Result<(), BlockError> {
        self.handler_mut().resize(size)
    }

    /// The capacity the guest reads, in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.handler().capacity_bytes
    }
}

impl QueueHandler for Disk {
    const DEVICE_TYPE: u32 = DEVICE_ID_BLOCK;
    const NAME: &'static str = "virtio-blk";
    const QUEUE_SIZE: u16 = QUEUE_SIZE;

    fn features(&self) -> u64 {
        features(self.read_only)
    }

    fn config_space(&self) -> Vec<u8> {
        config_space(self, QUEUE_SIZE).to_vec()
    }

    fn serve(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        process_queue(mem, queue, self)
    }
}

/// The driver side of a split queue, shared with the vhost-user-blk test and the benchmark.
#[cfg(test)]
#[path = "../../../../tests/support/split_queue.rs"]
mod split_queue;

#[cfg(test)]
mod tests {
    use super::request::*;
    use super::split_queue::SplitQueue;
    use super::*;
    use crate::devices::virtio::{Activation, VirtioDevice, VirtioInterrupt};
    use crate::memory::create_guest_memory;
    use std::io::{Read, Seek, Write};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::split_queue::F_WRITE;

    /// A device on a temp file of `sectors` sectors, sector i filled with byte i, with its
    /// queue set up as a driver would (descriptors written by hand, as the guest would).
    struct Harness {
        dev: Block,
        mem: GuestMemoryMmap,
        queue: SplitQueue,
        file: tempfile::NamedTempFile,
        irqfd: EventFd,
    }

    fn harness(sectors: u8, read_only: bool) -> Harness {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for i in 0..sectors {
            file.write_all(&[i; SECTOR_SIZE as usize]).unwrap();
        }
        let mut dev = Block::open(file.path(), read_only).unwrap();
        let mem = create_guest_memory(4 << 20).unwrap();
        let queue = SplitQueue::new(mem.clone(), 16);
        let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
        dev.activate(Activation {
            mem: mem.clone(),
            interrupt: VirtioInterrupt::new(irqfd.try_clone().unwrap()),
            queues: vec![queue.device_queue()],
        })
        .unwrap();
        Harness {
            dev,
            mem,
            queue,
            file,
            irqfd,
        }
    }

    impl Harness {
        /// Puts a chain of (addr, len, flags) at descriptor 0.. and notifies; returns the used
        /// length.
        fn submit(&mut self, descs: &[(u64, u32, u16)]) -> u32 {
            let slot = self.queue.add_chain(0, descs);
            self.queue.publish();
            self.dev.queue_notify(0).unwrap();
            let returned = self.queue.used_idx() == self.queue.avail_idx();
            assert!(returned, "request was not returned");
            self.queue.used_len(slot)
        }

        fn header(&self, kind: u32, sector: u64) {
            self.mem.write_obj(kind, GuestAddress(0x10000)).unwrap();
            self.mem.write_obj(0u32, GuestAddress(0x10004)).unwrap();
            self.mem.write_obj(sector, GuestAddress(0x10008)).unwrap();
        }

        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(0x30000)).unwrap()
        }

        fn file_bytes(&mut self) -> Vec<u8> {
            let mut v = Vec::new();
            let f = self.file.as_file_mut();
            f.rewind().unwrap();
            f.read_to_end(&mut v).unwrap();
            v
        }
    }

    const HDR: (u64, u32, u16) = (0x10000, 16, 0);
    const STATUS: (u64, u32, u16) = (0x30000, 1, F_WRITE);

    #[test]
    fn config_reports_capacity_and_features() {
        let h = harness(8, false);
        let mut cap = [0u8; 8];
        h.dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut past_end = [0xffu8; 4];
        h.dev.read_config(1 << 40, &mut past_end);
        assert_eq!(past_end, [0; 4]);
        assert_eq!(h.dev.avail_features() & VIRTIO_BLK_F_RO, 0);
        assert_ne!(harness(1, true).dev.avail_features() & VIRTIO_BLK_F_RO, 0);
    }

    #[test]
    fn read_two_sectors_into_two_buffers() {
        let mut h = harness(8, false);
        h.header(VIRTIO_BLK_T_IN, 2);
        let used = h.submit(&[
            HDR,
            (0x20000, 512, F_WRITE),
            (0x21000, 512, F_WRITE),
            STATUS,
        ]);
        assert_eq!(h.status(), VIRTIO_BLK_S_OK);
        assert_eq!(used, 1025);
        let mut a = [0u8; 512];
        h.mem.read_slice(&mut a, GuestAddress(0x20000)).unwrap();
        assert_eq!(a, [2u8; 512]);
        h.mem.read_slice(&mut a, GuestAddress(0x21000)).unwrap();
        assert_eq!(a, [3u8; 512]);
        assert_eq!(h.irqfd.read().unwrap(), 1);
    }

    #[test]
    fn write_then_flush_reach_the_file() {
        let mut h = harness(4, false);
        h.mem
            .write_slice(&[0xabu8; 512], GuestAddress(0x20000))
            .unwrap();
        h.header(VIRTIO_BLK_T_OUT, 1);
        let used = h.submit(&[HDR, (0x20000, 512, 0), STATUS]);
        assert_eq!((h.status(), used), (VIRTIO_BLK_S_OK, 1));
        h.header(VIRTIO_BLK_T_FLUSH, 0);
        h.submit(&[HDR, STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_OK);
        let bytes = h.file_bytes();
        assert_eq!(&bytes[512..1024], &[0xab; 512][..]);
        assert_eq!(&bytes[..512], &[0u8; 512][..]);
        assert_eq!(&bytes[1024..1536], &[2u8; 512][..]);
    }

    #[test]
    fn read_only_disk_refuses_writes_and_keeps_the_file() {
        let mut h = harness(4, true);
        h.mem
            .write_slice(&[0xabu8; 512], GuestAddress(0x20000))
            .unwrap();
        h.header(VIRTIO_BLK_T_OUT, 0);
        h.submit(&[HDR, (0x20000, 512, 0), STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
        assert_eq!(&h.file_bytes()[..512], &[0u8; 512][..]);
    }

    #[test]
    fn get_id_returns_the_id_bytes() {
        let mut h = harness(1, false);
        h.header(VIRTIO_BLK_T_GET_ID, 0);
        let used = h.submit(&[HDR, (0x20000, 20, F_WRITE), STATUS]);
        assert_eq!((h.status(), used), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 20];
        h.mem.read_slice(&mut id, GuestAddress(0x20000)).unwrap();
        let meta = h.file.as_file().metadata().unwrap();
        let want = format!("{}:{}", meta.dev(), meta.ino());
        assert_eq!(
            &id[..want.len().min(20)],
            &want.as_bytes()[..want.len().min(20)]
        );
    }

    #[test]
    fn serial_replaces_the_id_and_bad_serials_are_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(4096).unwrap();
        let dev = Block::open(file.path(), true)
            .unwrap()
            .with_serial("stateful")
            .unwrap();
        assert_eq!(&dev.handler().id[..9], b"stateful\0");
        for bad in ["", "has space", "twenty-one-characters", "é"] {
            assert!(
                Block::open(file.path(), true)
                    .unwrap()
                    .with_serial(bad)
                    .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn resize_serves_the_new_size_and_refuses_bad_sizes() {
        let mut h = harness(4, false);
        h.file.as_file().set_len(8 * 512).unwrap();
        // Past the old end: refused until the device is told about the new size.
        h.header(VIRTIO_BLK_T_IN, 6);
        h.submit(&[HDR, (0x20000, 512, F_WRITE), STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
        h.dev.resize(8 * 512).unwrap();
        let mut cap = [0u8; 8];
        h.dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        h.submit(&[HDR, (0x20000, 512, F_WRITE), STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_OK);
        // Unaligned, past the file's end, read-only: refused, capacity unchanged.
        assert!(matches!(
            h.dev.resize(8 * 512 + 1),
            Err(BlockError::ResizeUnaligned(_))
        ));
        assert!(matches!(
            h.dev.resize(16 * 512),
            Err(BlockError::ResizeBeyondFile { .. })
        ));
        assert_eq!(h.dev.capacity_bytes(), 8 * 512);
        let mut ro = harness(4, true);
        assert!(matches!(
            ro.dev.resize(2 * 512),
            Err(BlockError::ResizeReadOnly)
        ));
        assert_eq!(ro.dev.capacity_bytes(), 4 * 512);
    }

    #[test]
    fn a_directory_is_not_a_disk_image() {
        let dir = tempfile::tempdir().unwrap();
        let err = Block::open(dir.path(), true).err().unwrap();
        assert!(matches!(err, BlockError::NotAFile(_)), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn out_of_range_partial_and_wrong_direction_requests_fail_with_ioerr() {
        let mut h = harness(4, false);
        // Past the end.
        h.header(VIRTIO_BLK_T_IN, 4);
        h.submit(&[HDR, (0x20000, 512, F_WRITE), STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
        // Sector number that overflows when turned into bytes.
        h.header(VIRTIO_BLK_T_IN, u64::MAX);
        h.submit(&[HDR, (0x20000, 512, F_WRITE), STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
        // Not a whole sector.
        h.header(VIRTIO_BLK_T_IN, 0);
        h.submit(&[HDR, (0x20000, 100, F_WRITE), STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
        // A read into a device-readable buffer.
        h.header(VIRTIO_BLK_T_IN, 0);
        h.submit(&[HDR, (0x20000, 512, 0), STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
        // A buffer outside guest memory.
        h.header(VIRTIO_BLK_T_IN, 0);
        h.submit(&[HDR, (1 << 40, 512, F_WRITE), STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
        // Unknown request type.
        h.header(99, 0);
        h.submit(&[HDR, STATUS]);
        assert_eq!(h.status(), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn chain_longer_than_4_gib_is_dropped_untouched() {
        // virtio-queue stops yielding descriptors past 4 GiB in total; the cut chain's last
        // descriptor is not the status, so the request is dropped and nothing is written.
        let mut h = harness(8, false);
        h.mem.write_obj(0xeeu8, GuestAddress(0x20000)).unwrap();
        h.mem.write_obj(0xeeu8, GuestAddress(0x30000)).unwrap();
        h.header(VIRTIO_BLK_T_IN, 0);
        let big = u32::MAX - 511;
        let used = h.submit(&[
            HDR,
            (0x20000, big, F_WRITE),
            (0x20000, big, F_WRITE),
            STATUS,
        ]);
        assert_eq!(used, 0);
        assert_eq!(h.mem.read_obj::<u8>(GuestAddress(0x20000)).unwrap(), 0xee);
        assert_eq!(h.status(), 0xee);
    }

    /// Writes discard/write-zeroes segments at 0x20000 and submits them.
    fn submit_segments(h: &mut Harness, kind: u32, segments: &[(u64, u32, u32)]) -> u8 {
        for (i, &(sector, num, flags)) in segments.iter().enumerate() {
            let at = 0x20000 + 16 * i as u64;
            h.mem.write_obj(sector, GuestAddress(at)).unwrap();
            h.mem.write_obj(num, GuestAddress(at + 8)).unwrap();
            h.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        }
        h.header(kind, 0);
        h.submit(&[HDR, (0x20000, 16 * segments.len() as u32, 0), STATUS]);
        h.status()
    }

    #[test]
    fn discard_and_write_zeroes_read_back_as_zeros() {
        let mut h = harness(8, false);
        let ok = submit_segments(&mut h, VIRTIO_BLK_T_DISCARD, &[(1, 2, 0)]);
        assert_eq!(ok, VIRTIO_BLK_S_OK);
        let ok = submit_segments(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(5, 1, 1), (7, 1, 0)]);
        assert_eq!(ok, VIRTIO_BLK_S_OK);
        let bytes = h.file_bytes();
        assert_eq!(bytes.len(), 8 * 512, "size kept");
        for sector in 0..8u8 {
            let s = &bytes[sector as usize * 512..(sector as usize + 1) * 512];
            let zeroed = matches!(sector, 1 | 2 | 5 | 7);
            let want = if zeroed { 0 } else { sector };
            assert!(s.iter().all(|&b| b == want), "sector {sector}");
        }
    }

    #[test]
    fn bad_discards_fail_and_read_only_disks_refuse_them() {
        let mut h = harness(8, false);
        // Past the end, overflowing, unmap flag on a discard, unknown flag, no segment.
        assert_eq!(
            submit_segments(&mut h, VIRTIO_BLK_T_DISCARD, &[(7, 2, 0)]),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            submit_segments(&mut h, VIRTIO_BLK_T_DISCARD, &[(u64::MAX, 1, 0)]),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            submit_segments(&mut h, VIRTIO_BLK_T_DISCARD, &[(0, 1, 1)]),
            VIRTIO_BLK_S_UNSUPP
        );
        assert_eq!(
            submit_segments(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 2)]),
            VIRTIO_BLK_S_UNSUPP
        );
        assert_eq!(
            submit_segments(&mut h, VIRTIO_BLK_T_DISCARD, &[]),
            VIRTIO_BLK_S_IOERR
        );
        let mut ro = harness(8, true);
        assert_eq!(ro.dev.avail_features() & VIRTIO_BLK_F_DISCARD, 0);
        assert_eq!(
            submit_segments(&mut ro, VIRTIO_BLK_T_DISCARD, &[(1, 1, 0)]),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            submit_segments(&mut ro, VIRTIO_BLK_T_WRITE_ZEROES, &[(1, 1, 0)]),
            VIRTIO_BLK_S_IOERR
        );
        assert!(ro.file_bytes()[512..1024].iter().all(|&b| b == 1));
        // The unchanged writable disk.
        assert!(h.file_bytes()[7 * 512..].iter().all(|&b| b == 7));
    }

    #[test]
    fn malformed_chains_are_returned_without_touching_the_disk() {
        let mut h = harness(2, false);
        h.mem
            .write_slice(&[0xcdu8; 512], GuestAddress(0x20000))
            .unwrap();
        // Status not device-writable: dropped with used length 0.
        h.header(VIRTIO_BLK_T_OUT, 0);
        let used = h.submit(&[HDR, (0x20000, 512, 0), (0x30000, 1, 0)]);
        assert_eq!(used, 0);
        // Short header: IOERR in the status byte.
        h.mem.write_obj(0xffu8, GuestAddress(0x30000)).unwrap();
        let used = h.submit(&[(0x10000, 8, 0), (0x20000, 512, 0), STATUS]);
        assert_eq!((h.status(), used), (VIRTIO_BLK_S_IOERR, 1));
        // A lone descriptor.
        assert_eq!(h.submit(&[STATUS]), 1);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
        assert_eq!(&h.file_bytes()[..512], &[0u8; 512][..]);
    }
}
