//! Fuzzes everything the vsock device reads from the guest: the descriptor tables, avail rings,
//! packet headers and payload lengths of the tx and rx queues, plus the host's CONNECT line
//! parser. The input becomes guest memory as is, so the fuzzer writes the rings directly; the
//! device must never panic and must hand every chain back.

#![no_main]

use std::cell::RefCell;

use cros_messages::hybrid_vsock::parse_connect_request;
use cros_vmm::devices::vsock::packet::{PacketHeader, parse_rx_chain, parse_tx_chain};
use cros_vmm::devices::vsock::{VsockConfig, VsockDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;
const QUEUE_SIZE: u16 = 16;
// Ring layout inside the fuzzed memory: (descriptor table, avail ring, used ring).
const TXQ: (u64, u64, u64) = (0x0, 0x100, 0x200);
const RXQ: (u64, u64, u64) = (0x400, 0x500, 0x600);

thread_local! {
    // One device for the whole run: its muxer state (connections, pending RSTs) carries over
    // between inputs, as it does for a real guest. Guest connects go to a directory with no
    // listeners, so they end in RST.
    static DEVICE: RefCell<(tempfile::TempDir, VsockDevice)> = RefCell::new({
        let dir = tempfile::tempdir().expect("tempdir");
        let device = VsockDevice::new(&VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("vsock.sock"),
        })
        .expect("vsock device");
        (dir, device)
    });
}

fn queue(layout: (u64, u64, u64)) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(layout.0 as u32), Some(0));
    q.set_avail_ring_address(Some(layout.1 as u32), Some(0));
    q.set_used_ring_address(Some(layout.2 as u32), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    if let Some(line) = data.get(..data.len().min(40)) {
        let _ = parse_connect_request(line);
    }
    if let Some(h) = data.get(..44).and_then(|b| <&[u8; 44]>::try_from(b).ok()) {
        assert_eq!(PacketHeader::from_bytes(h).to_bytes(), *h);
    }

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0))
        .expect("fill memory");

    // The parsers on their own, over every chain the avail rings name.
    for layout in [TXQ, RXQ] {
        let mut q = queue(layout);
        while let Some(chain) = q.pop_descriptor_chain(&mem) {
            let _ = parse_tx_chain(&mem, chain.clone());
            let _ = parse_rx_chain(&mem, chain);
        }
    }

    // The whole device: tx packets into the muxer, replies into rx buffers.
    let mut txq = queue(TXQ);
    let mut rxq = queue(RXQ);
    DEVICE.with(|d| {
        let device = &mut d.borrow_mut().1;
        let _ = device.process_tx(&mem, &mut txq);
        let _ = device.process_rx(&mem, &mut rxq);
        let _ = device.process_host_events();
    });
});
