//! The guest is untrusted: arbitrary register accesses to a virtio-mmio window and arbitrary
//! bytes in the virtqueues it describes must never panic the VMM, and a disk never grows or
//! changes size because of what the guest wrote. No KVM needed: the tests play the guest
//! through the transport's register file and guest memory, as a vCPU exit would.

use std::sync::{Arc, Mutex};

use cros_vmm::devices::bus::BusDevice;
use cros_vmm::devices::virtio::VirtioInterrupt;
use cros_vmm::devices::virtio::block::Block;
use cros_vmm::devices::virtio::mmio::{MmioTransport, reg, status};
use cros_vmm::devices::virtio::rng::Rng;
use cros_vmm::devices::virtio::worker::SharedVirtioDevice;
use cros_vmm::memory::create_guest_memory;
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const MEM: u64 = 1 << 20;
/// Queue structures live in the first 64 KiB, which the tests fill with random bytes.
const RANDOM_LEN: usize = 64 * 1024;
const DISK_LEN: u64 = 64 * 1024;

#[derive(Debug, Clone)]
enum Access {
    Read { offset: u64, width: usize },
    Write { offset: u64, bytes: Vec<u8> },
}

fn access() -> impl Strategy<Value = Access> {
    let offset = prop_oneof![0u64..0x140, any::<u64>()];
    let width = prop::sample::select(vec![1usize, 2, 3, 4, 8]);
    prop_oneof![
        (offset.clone(), width).prop_map(|(offset, width)| Access::Read { offset, width }),
        (offset, prop::collection::vec(any::<u8>(), 1..=8))
            .prop_map(|(offset, bytes)| Access::Write { offset, bytes }),
    ]
}

fn w(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// A driver's valid setup with the queue at desc 0x0, avail 0x4000, used 0x8000 (inside the
/// random area), so that the random accesses and bytes that follow reach an active device.
fn set_up_driver(t: &mut MmioTransport, size: u32) {
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, 1);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w(t, reg::STATUS, s);
    w(t, reg::QUEUE_SEL, 0);
    w(t, reg::QUEUE_NUM, size);
    w(t, reg::QUEUE_DESC_LOW, 0);
    w(t, reg::QUEUE_DRIVER_LOW, 0x4000);
    w(t, reg::QUEUE_DEVICE_LOW, 0x8000);
    w(t, reg::QUEUE_READY, 1);
    w(t, reg::STATUS, s | status::DRIVER_OK);
}

fn guest_memory(random: &[u8]) -> GuestMemoryMmap {
    let mem = create_guest_memory(MEM.max(2 << 20)).unwrap();
    mem.write_slice(random, GuestAddress(0)).unwrap();
    mem
}

fn block_device(read_only: bool) -> (SharedVirtioDevice, tempfile::NamedTempFile) {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(DISK_LEN).unwrap();
    let dev: SharedVirtioDevice =
        Arc::new(Mutex::new(Block::open(file.path(), read_only).unwrap()));
    (dev, file)
}

fn transport(device: SharedVirtioDevice, mem: &GuestMemoryMmap) -> MmioTransport {
    let irq = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    MmioTransport::new(device, mem.clone(), irq).unwrap()
}

fn play(t: &mut MmioTransport, accesses: &[Access]) {
    for a in accesses {
        match a {
            Access::Read { offset, width } => {
                let mut data = vec![0u8; *width];
                t.read(*offset, &mut data);
            }
            Access::Write { offset, bytes } => t.write(*offset, bytes),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn block_survives_random_queues_and_register_accesses(
        random in prop::collection::vec(any::<u8>(), RANDOM_LEN),
        size in prop::sample::select(vec![1u32, 2, 8, 16, 256]),
        accesses in prop::collection::vec(access(), 0..64),
        read_only in any::<bool>(),
    ) {
        let mem = guest_memory(&random);
        let (device, file) = block_device(read_only);
        let mut t = transport(device.clone(), &mem);
        set_up_driver(&mut t, size);
        // What a notification makes the device do, with random descriptors and rings.
        device.lock().unwrap().queue_notify(0).unwrap();
        play(&mut t, &accesses);
        device.lock().unwrap().queue_notify(0).unwrap();
        prop_assert_eq!(file.as_file().metadata().unwrap().len(), DISK_LEN);
    }

    #[test]
    fn rng_survives_random_queues_and_register_accesses(
        random in prop::collection::vec(any::<u8>(), RANDOM_LEN),
        accesses in prop::collection::vec(access(), 0..64),
    ) {
        let mem = guest_memory(&random);
        let device: SharedVirtioDevice = Arc::new(Mutex::new(Rng::new()));
        let mut t = transport(device.clone(), &mem);
        set_up_driver(&mut t, 16);
        device.lock().unwrap().queue_notify(0).unwrap();
        play(&mut t, &accesses);
        device.lock().unwrap().queue_notify(0).unwrap();
    }
}
