//! Fuzzes the virtio-net queue paths over guest memory the fuzzer writes: the descriptor
//! tables and avail rings of the rx and tx queues and the buffers they point to, plus up to
//! three frames (header included) the host side delivers. Tx chains are gathered, checked and
//! written out, rx frames are placed into the guest's buffers (mergeable or not, as the first
//! byte says), as the device does on its events; nothing may panic.
//!
//! The host side is one end of a SOCK_SEQPACKET socketpair standing in for the tap
//! (`Tap::from_file`): a fuzzer cannot make taps, and the device only reads and writes frames.

#![no_main]

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use cros_vmm::devices::net::{NetDevice, Tap};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;
const QUEUE_SIZE: u16 = 16;
/// Feature bits the first input byte may select (virtio-net bit numbers).
const FEATURE_BITS: [u32; 8] = [15, 1, 0, 7, 8, 10, 11, 12];

fn queue(desc: u64) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(desc as u32 + 0x100), Some(0));
    q.set_used_ring_address(Some(desc as u32 + 0x200), Some(0));
    q.set_ready(true);
    q
}

/// A SOCK_SEQPACKET pair: (device end as a file, host end).
fn seqpacket_pair() -> (File, UnixDatagram) {
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) into a two-element array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: both descriptors are new and owned by us from here on.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (File::from(a), UnixDatagram::from(b))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let (device_end, host_end) = seqpacket_pair();
    let mut dev = NetDevice::with_tap(Tap::from_file(device_end, "fuzz0"), None);
    let features = FEATURE_BITS
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1 << i) != 0)
        .fold(1u64 << 32, |f, (_, &b)| f | 1 << b);
    dev.ack_features(features);
    // Up to three frames for rx: a length byte pair, then the frame.
    for _ in 0..3 {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len))
            .min(tail.len())
            .min(2048);
        let _ = host_end.send(&tail[..len]);
        rest = &tail[len..];
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let n = rest.len().min(MEM_SIZE);
    mem.write_slice(&rest[..n], GuestAddress(0))
        .expect("fill memory");
    let mut rxq = queue(0x0);
    let mut txq = queue(0x400);
    let _ = dev.process_tx(&mem, &mut txq);
    let _ = dev.process_rx(&mem, &mut rxq);
    // Frames the guest sent went to the host end; drain them so the pair does not fill.
    let mut buf = [0u8; 70000];
    while host_end.recv(&mut buf).is_ok() {}
});
