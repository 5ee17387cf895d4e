//! virtio-blk read and write throughput through the device model (queues in guest memory,
//! requests of 64 KiB, batches of 64 per notification, run synchronously on this thread),
//! beside plain pread/pwrite of the same file in 64 KiB chunks in the same run. No KVM: this
//! measures the device's own cost over the file I/O it must do.
//!
//! `cargo bench -p cros-vmm --bench blk_throughput [-- RUNS]` (default 5). Prints MiB/s.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use cros_vmm::devices::virtio::block::Block;
use cros_vmm::devices::virtio::{Activation, VirtioDevice, VirtioInterrupt};
use cros_vmm::memory::create_guest_memory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const DISK: u64 = 64 << 20;
const CHUNK: u32 = 64 << 10;
const BATCH: u16 = 64;
const QUEUE: u16 = 256;
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x11_0000;
const USED: u64 = 0x12_0000;
const HEADERS: u64 = 0x13_0000;
const STATUS: u64 = 0x14_0000;
const DATA: u64 = 0x20_0000;

struct Driver {
    dev: Block,
    mem: GuestMemoryMmap,
    avail_idx: u16,
}

impl Driver {
    fn new(path: &std::path::Path) -> Self {
        let mem = create_guest_memory(64 << 20).unwrap();
        let mut dev = Block::open(path, false).unwrap();
        let mut q = Queue::new(QUEUE).unwrap();
        q.set_size(QUEUE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        let irq = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        dev.activate(Activation {
            mem: mem.clone(),
            interrupt: irq,
            queues: vec![q],
        })
        .unwrap();
        Self {
            dev,
            mem,
            avail_idx: 0,
        }
    }

    fn desc(&self, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * i;
        self.mem.write_obj(addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Submits `BATCH` requests of kind `kind` from `first_sector` and notifies once.
    fn batch(&mut self, kind: u32, first_sector: u64) {
        let data_flags = if kind == 0 { 2 } else { 0 };
        for r in 0..u64::from(BATCH) {
            let header = HEADERS + 16 * r;
            self.mem.write_obj(kind, GuestAddress(header)).unwrap();
            let sector = first_sector + r * u64::from(CHUNK / 512);
            self.mem
                .write_obj(sector, GuestAddress(header + 8))
                .unwrap();
            let d = 3 * r;
            self.desc(d, header, 16, 1, (d + 1) as u16);
            self.desc(
                d + 1,
                DATA + r * u64::from(CHUNK),
                CHUNK,
                data_flags | 1,
                (d + 2) as u16,
            );
            self.desc(d + 2, STATUS + r, 1, 2, 0);
            let slot = u64::from(self.avail_idx % QUEUE);
            self.mem
                .write_obj(d as u16, GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.dev.queue_notify(0).unwrap();
        let used: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used, self.avail_idx, "device did not complete the batch");
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        assert_eq!(status, 0, "request failed");
    }

    fn pass(&mut self, kind: u32) {
        let per_batch = u64::from(BATCH) * u64::from(CHUNK);
        for b in 0..DISK / per_batch {
            self.batch(kind, b * per_batch / 512);
        }
    }
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file()
        .write_all_at(&vec![0x5a; DISK as usize], 0)
        .unwrap();
    let mut driver = Driver::new(file.path());
    let mut buf = vec![0u8; CHUNK as usize];
    let (mut dev_read, mut dev_write, mut plain_read, mut plain_write) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        driver.pass(0);
        dev_read.push(mib_per_s(DISK, t.elapsed().as_secs_f64()));
        let t = Instant::now();
        for off in (0..DISK).step_by(CHUNK as usize) {
            file.as_file().read_exact_at(&mut buf, off).unwrap();
        }
        plain_read.push(mib_per_s(DISK, t.elapsed().as_secs_f64()));
        let t = Instant::now();
        driver.pass(1);
        dev_write.push(mib_per_s(DISK, t.elapsed().as_secs_f64()));
        let t = Instant::now();
        for off in (0..DISK).step_by(CHUNK as usize) {
            file.as_file().write_all_at(&buf, off).unwrap();
        }
        plain_write.push(mib_per_s(DISK, t.elapsed().as_secs_f64()));
    }
    println!(
        "virtio-blk device harness, {} MiB file (page cache), 64 KiB requests, median of {runs}:",
        DISK >> 20
    );
    println!(
        "  read:  device {:.0} MiB/s, plain pread {:.0} MiB/s",
        median(dev_read),
        median(plain_read)
    );
    println!(
        "  write: device {:.0} MiB/s, plain pwrite {:.0} MiB/s",
        median(dev_write),
        median(plain_write)
    );
}
