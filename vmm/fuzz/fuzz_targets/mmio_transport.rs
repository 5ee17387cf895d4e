//! Fuzzes the virtio-mmio register file as a guest driver sees it, in front of the vsock,
//! block and rng devices: any sequence of reads and writes at any offset and width (feature
//! negotiation, queue setup, status changes, DRIVER_OK activation, notifies, interrupt acks,
//! config space), with queue notifies served as the device worker serves them. The guest
//! memory the queues point to is fuzzed too.
//!
//! Input: a device byte (vsock, block, rng), then 7-byte operations `[op, offset lo, offset hi,
//! value (4 bytes LE)]` up to an `op` of 0xff, then guest memory. `op` bit 0: write (else
//! read); bits 1-2: access width 4, 1, 2 or 8 bytes.

#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use cros_vmm::devices::bus::BusDevice;
use cros_vmm::devices::virtio::VirtioInterrupt;
use cros_vmm::devices::virtio::block::Block;
use cros_vmm::devices::virtio::mmio::{MMIO_WINDOW_SIZE, MmioTransport, reg};
use cros_vmm::devices::virtio::rng::Rng;
use cros_vmm::devices::virtio::vsock_mmio::VsockMmio;
use cros_vmm::devices::virtio::worker::{SharedVirtioDevice, lock_device};
use cros_vmm::devices::vsock::VsockConfig;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const MEM_SIZE: usize = 0x1_0000;
const WIDTHS: [usize; 4] = [4, 1, 2, 8];

/// The vsock device owns a thread and a listening socket: one for the whole run, reset
/// (status 0) after every input as a driver reset does.
static VSOCK: LazyLock<(tempfile::TempDir, SharedVirtioDevice)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = VsockMmio::new(&VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("vsock.sock"),
    })
    .expect("vsock device");
    (dir, Arc::new(Mutex::new(device)))
});

static DISK: LazyLock<tempfile::NamedTempFile> = LazyLock::new(|| {
    let file = tempfile::NamedTempFile::new().expect("disk file");
    file.as_file().set_len(64 * 512).expect("size disk file");
    file
});

fn device(pick: u8) -> SharedVirtioDevice {
    match pick % 3 {
        0 => VSOCK.1.clone(),
        1 => Arc::new(Mutex::new(
            Block::open(DISK.path(), pick & 0x80 != 0).expect("block device"),
        )),
        _ => Arc::new(Mutex::new(Rng::new())),
    }
}

/// What the device worker does when a queue's eventfd fires.
fn serve_notifies(transport: &MmioTransport) {
    for (i, evt) in transport.queue_events().iter().enumerate() {
        // The worker's event loop ends on a device error: so does this pass.
        if evt.read().is_ok()
            && lock_device(&transport.device())
                .queue_notify(i as u32)
                .is_err()
        {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let mut ops = Vec::new();
    while let Some((op, tail)) = rest.split_first_chunk::<7>() {
        rest = tail;
        if op[0] == 0xff {
            break;
        }
        ops.push(*op);
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let n = rest.len().min(MEM_SIZE);
    mem.write_slice(&rest[..n], GuestAddress(0))
        .expect("fill memory");
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
    let interrupt = VirtioInterrupt::new(irqfd.try_clone().expect("irqfd"));
    let mut transport = MmioTransport::new(device(pick), mem, interrupt).expect("transport");

    for op in ops {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) % MMIO_WINDOW_SIZE;
        let width = WIDTHS[usize::from(op[0] >> 1) & 3];
        let mut bytes = [op[3], op[4], op[5], op[6], op[3], op[4], op[5], op[6]];
        if op[0] & 1 == 0 {
            transport.read(offset, &mut bytes[..width]);
        } else {
            transport.write(offset, &bytes[..width]);
            if offset == reg::QUEUE_NOTIFY {
                serve_notifies(&transport);
            }
        }
    }
    // A driver reset, so the shared vsock device starts the next input inactive.
    transport.write(reg::STATUS, &0u32.to_le_bytes());
});
