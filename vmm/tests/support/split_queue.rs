//! The driver's side of one split virtqueue in guest memory, written by hand as a guest
//! driver would: descriptor chains, the avail ring, the used ring. For the virtio-blk tests
//! and benchmark (through our own device model or over vhost-user); nothing of the device is
//! mocked, it reads and writes this memory.

#![allow(dead_code)]

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// Where the queue's descriptor table, avail ring and used ring are: below 16 KiB, each in a
/// page of its own (enough for 256 descriptors); buffers go above.
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x2000;
pub const USED: u64 = 0x3000;

/// One descriptor: guest address, length, flags (F_WRITE for device-writable; F_NEXT is added
/// when chaining).
pub type Desc = (u64, u32, u16);

/// A queue of `size` descriptors (at most 256) at [`DESC`], [`AVAIL`] and [`USED`].
pub struct SplitQueue {
    pub mem: GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    avail_idx: u16,
}

impl SplitQueue {
    pub fn new(mem: GuestMemoryMmap, size: u16) -> Self {
        assert!(size <= 256, "the rings hold 256 descriptors at most");
        Self {
            mem,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            size,
            avail_idx: 0,
        }
    }

    /// The device's view of the queue, set up and ready, as a transport hands it over.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn put<T: vm_memory::ByteValued>(&self, value: T, at: u64) {
        self.mem.write_obj(value, GuestAddress(at)).unwrap();
    }

    /// Writes `chain` at descriptors `first`.. (each linked to the next) and makes it
    /// available; returns its avail slot. The device sees it once [`SplitQueue::publish`]ed.
    pub fn add_chain(&mut self, first: u16, chain: &[Desc]) -> u16 {
        for (i, &(addr, len, flags)) in chain.iter().enumerate() {
            let index = first + i as u16;
            let at = self.desc + 16 * u64::from(index);
            let more = i + 1 < chain.len();
            self.put(addr, at);
            self.put(len, at + 8);
            self.put(flags | if more { F_NEXT } else { 0 }, at + 12);
            self.put(if more { index + 1 } else { 0 }, at + 14);
        }
        let slot = self.avail_idx % self.size;
        self.put(first, self.avail + 4 + 2 * u64::from(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        slot
    }

    /// Tells the device about every chain added so far.
    pub fn publish(&self) {
        self.put(self.avail_idx, self.avail + 2);
    }

    /// How many chains were made available.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// How many chains the device returned.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The length the device wrote for the chain in avail `slot`.
    pub fn used_len(&self, slot: u16) -> u32 {
        let at = self.used + 4 + 8 * u64::from(slot) + 4;
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }
}
