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
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[path = "../tests/support/split_queue.rs"]
mod split_queue;
use split_queue::{F_WRITE, SplitQueue};

const DISK: u64 = 64 << 20;
const CHUNK: u32 = 64 << 10;
const BATCH: u16 = 64;
const QUEUE: u16 = 256;
const HEADERS: u64 = 0x13_0000;
const STATUS: u64 = 0x14_0000;
const DATA: u64 = 0x20_0000;

struct Driver {
    dev: Block,
    queue: SplitQueue,
}

impl Driver {
    fn new(path: &std::path::Path) -> Self {
        let mem = create_guest_memory(64 << 20).unwrap();
        let queue = SplitQueue::new(mem.clone(), QUEUE);
        let mut dev = Block::open(path, false).unwrap();
        let irq = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        dev.activate(Activation {
            mem,
            interrupt: irq,
            queues: vec![queue.device_queue()],
        })
        .unwrap();
        Self { dev, queue }
    }

    /// Submits `BATCH` requests of kind `kind` from `first_sector` and notifies once.
    fn batch(&mut self, kind: u32, first_sector: u64) {
        let data_flags = if kind == 0 { F_WRITE } else { 0 };
        for r in 0..u64::from(BATCH) {
            let header = HEADERS + 16 * r;
            let sector = first_sector + r * u64::from(CHUNK / 512);
            let mem = &self.queue.mem;
            mem.write_obj(kind, GuestAddress(header)).unwrap();
            mem.write_obj(sector, GuestAddress(header + 8)).unwrap();
            let data = DATA + r * u64::from(CHUNK);
            let chain = [
                (header, 16, 0),
                (data, CHUNK, data_flags),
                (STATUS + r, 1, F_WRITE),
            ];
            self.queue.add_chain(3 * r as u16, &chain);
        }
        self.queue.publish();
        self.dev.queue_notify(0).unwrap();
        let done = self.queue.used_idx() == self.queue.avail_idx();
        assert!(done, "device did not complete the batch");
        let status: u8 = self.queue.mem.read_obj(GuestAddress(STATUS)).unwrap();
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
