//! Fuzzes the virtio-blk request path over guest memory the fuzzer writes: the descriptor
//! table and avail ring of the queue, the request headers, data buffers and discard segments
//! they point to. Every chain is parsed and executed against a small disk file, as the device
//! does on a queue notification (the first input byte picks a read-only disk and event-idx
//! notifications); nothing may panic.

#![no_main]

use std::sync::LazyLock;

use cros_vmm::devices::virtio::block::process_queue;
use cros_vmm::devices::virtio::block::request::{Disk, ID_BYTES, SECTOR_SIZE};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;
const QUEUE_SIZE: u16 = 16;
/// Ring layout: descriptor table, avail ring, used ring; the rest of memory holds buffers.
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const DISK_SECTORS: u64 = 64;

/// The disk file, shared by all inputs (its contents do not steer the parser).
static DISK_FILE: LazyLock<tempfile::NamedTempFile> = LazyLock::new(|| {
    let file = tempfile::NamedTempFile::new().expect("disk file");
    file.as_file()
        .set_len(DISK_SECTORS * SECTOR_SIZE)
        .expect("size disk file");
    file
});

fn disk(read_only: bool) -> Disk {
    Disk {
        file: DISK_FILE.reopen().expect("reopen disk file"),
        capacity_bytes: DISK_SECTORS * SECTOR_SIZE,
        read_only,
        id: [b'x'; ID_BYTES],
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, memory)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let n = memory.len().min(MEM_SIZE);
    mem.write_slice(&memory[..n], GuestAddress(0))
        .expect("fill memory");

    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(flags & 2 != 0);
    q.set_ready(true);

    process_queue(&mem, &mut q, &disk(flags & 1 != 0));
});
