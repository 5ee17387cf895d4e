//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the register file of one
//! device window. Registers take 32-bit accesses only; the configuration space from 0x100 any
//! width. Bad accesses are logged and ignored, so a guest can never bring the VMM down here.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::VIRTIO_F_VERSION_1;
use super::worker::{SharedVirtioDevice, lock_device};
use super::{Activation, VirtioInterrupt};
use crate::devices::bus::BusDevice;

/// Size of one device window in the MMIO hole.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// "virt", little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
/// Our vendor id: "CROS" in little-endian bytes.
pub const MMIO_VENDOR_ID: u32 = 0x534f_5243;

pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// One virtio-mmio window: the transport state and the device behind it. Queue notifications
/// go to one eventfd per queue, which the device's worker thread waits on; the VMM registers
/// them with KVM as ioeventfds so that they normally never reach this register file.
pub struct MmioTransport {
    device: SharedVirtioDevice,
    queue_events: Vec<EventFd>,
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem` and whose interrupt is `interrupt`.
    pub fn new(
        device: SharedVirtioDevice,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
    ) -> std::io::Result<Self> {
        let queues: Vec<Queue> = lock_device(&device)
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            device,
            queue_events,
            mem,
            interrupt,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The notification eventfd of each queue, for KVM ioeventfds and the device worker.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device, for its worker thread.
    pub fn device(&self) -> SharedVirtioDevice {
        self.device.clone()
    }

    /// Tells the driver the device's configuration changed (e.g. a disk's capacity): a new
    /// ConfigGeneration, so a driver reading the config across the change reads it again, and
    /// the configuration-change interrupt (InterruptStatus bit 1).
    pub fn notify_config_change(&mut self) -> std::io::Result<()> {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config_change()
    }

    /// The device stopped serving its queues (an error or a caught panic, already logged):
    /// DEVICE_NEEDS_RESET and a configuration-change interrupt tell the driver to reset it
    /// (virtio 1.2, 2.1.2).
    pub fn device_failed(&mut self) -> std::io::Result<()> {
        if self.status & status::DRIVER_OK == 0 {
            return Ok(());
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        self.notify_config_change()
    }

    /// The device status register as the driver last set it (or the transport failed it).
    pub fn status(&self) -> u32 {
        self.status
    }

    fn offered_features(&self) -> u64 {
        lock_device(&self.device).avail_features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may only change while the driver sets the device up (before DRIVER_OK).
    fn queue_setup_allowed(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_setup_allowed() {
            tracing::debug!(
                status = self.status,
                "virtio-mmio: queue register written outside setup"
            );
            return;
        }
        match self.selected_queue() {
            Some(q) => f(q),
            None => tracing::debug!(sel = self.queue_sel, "virtio-mmio: no such queue"),
        }
    }

    fn reset(&mut self) {
        lock_device(&self.device).reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
        self.activated = false;
    }

    fn set_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        // The driver only adds bits (virtio 1.2, 3.1.1); anything else is a driver bug that we
        // refuse rather than follow.
        if new & self.status != self.status {
            tracing::debug!(
                old = self.status,
                new,
                "virtio-mmio: status bits cleared without reset"
            );
            return;
        }
        let added = new & !self.status;
        if added & status::FEATURES_OK != 0 && self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            // A legacy driver: we only speak virtio 1.x, so FEATURES_OK does not stick.
            self.status = new & !status::FEATURES_OK;
            return;
        }
        self.status = new;
        if added & status::FEATURES_OK != 0 {
            lock_device(&self.device).ack_features(self.driver_features);
        }
        if added & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() || !q.is_valid(&self.mem) {
                tracing::warn!(
                    "virtio-mmio: queue {i} not usable at DRIVER_OK; device needs reset"
                );
                self.status |= status::DEVICE_NEEDS_RESET;
                return;
            }
        }
        let queues = self.queues.iter().filter_map(copy_queue).collect();
        let mut device = lock_device(&self.device);
        let result = device.activate(Activation {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
        });
        let device_type = device.device_type();
        drop(device);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!("virtio-mmio: device {device_type} activation failed: {e}");
                self.status |= status::DEVICE_NEEDS_RESET;
                let _ = self.interrupt.signal_config_change();
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => lock_device(&self.device).device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(
                    offset,
                    "virtio-mmio: read of unknown or write-only register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
                    tracing::debug!("virtio-mmio: driver features written outside negotiation");
                    return;
                }
                // Only what was offered can be accepted.
                let offered = self.offered_features();
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | (u64::from(value) & offered)
                    }
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff)
                            | ((u64::from(value) << 32) & offered)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => self.update_queue(|q| q.set_size(value as u16)),
            reg::QUEUE_READY => self.update_queue(|q| q.set_ready(value == 1)),
            reg::QUEUE_DESC_LOW => {
                self.update_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            reg::QUEUE_DESC_HIGH => {
                self.update_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_DRIVER_LOW => {
                self.update_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.update_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_DEVICE_LOW => {
                self.update_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.update_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            reg::QUEUE_NOTIFY => {
                // Reached only when KVM did not take the write as an ioeventfd (no KVM, or a
                // notification of a different width): hand it to the worker the same way.
                match self.queue_events.get(value as usize) {
                    Some(evt) if self.activated => {
                        tracing::trace!(value, "virtio-mmio: QueueNotify without an ioeventfd");
                        if let Err(e) = evt.write(1) {
                            tracing::warn!("virtio-mmio: cannot signal queue {value}: {e}");
                        }
                    }
                    _ => tracing::debug!(
                        value,
                        "virtio-mmio: notify of an inactive device or bad queue"
                    ),
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value),
            _ => tracing::debug!(
                offset,
                value,
                "virtio-mmio: write to unknown or read-only register"
            ),
        }
    }
}

/// A queue with the configuration the driver gave `q`, for the device to own while the
/// transport keeps answering register reads from its own copy.
fn copy_queue(q: &Queue) -> Option<Queue> {
    let mut copy = Queue::new(q.max_size()).ok()?;
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    copy.set_size(q.size());
    let (lo, hi) = split(q.desc_table());
    copy.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    copy.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    copy.set_used_ring_address(lo, hi);
    copy.set_ready(q.ready());
    Some(copy)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            lock_device(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(bytes) if offset.is_multiple_of(4) => {
                *bytes = self.read_register(offset).to_le_bytes()
            }
            _ => {
                tracing::debug!(
                    offset,
                    len = data.len(),
                    "virtio-mmio: ignored misaligned or non-32-bit read"
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            lock_device(&self.device).write_config(offset - reg::CONFIG, data);
            // Tell the driver the config it reads back may have changed.
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(bytes))
            }
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "virtio-mmio: ignored misaligned or non-32-bit write"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::worker::DeviceWorker;
    use crate::devices::virtio::{DEVICE_ID_RNG, INTERRUPT_USED_BUFFER};
    use crate::event_channel::event_channel;
    use crate::memory::create_guest_memory;
    use crate::seccomp::{Filters, ThreadKind};
    use crate::thread::ThreadSpec;
    use std::os::fd::AsRawFd;
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn transport() -> (MmioTransport, GuestMemoryMmap, EventFd) {
        let mem = create_guest_memory(4 << 20).unwrap();
        let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = VirtioInterrupt::new(irqfd.try_clone().unwrap());
        let device: SharedVirtioDevice = Arc::new(Mutex::new(Rng::new()));
        (
            MmioTransport::new(device, mem.clone(), interrupt).unwrap(),
            mem,
            irqfd,
        )
    }

    /// Waits up to 10 s for `evt` to become readable (a hang guard, not a performance bound).
    fn wait_readable(evt: &EventFd) -> bool {
        let mut fds = [libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 10_000) == 1 }
    }

    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// Drives the driver side of initialization (virtio 1.2, 3.1.1) with a queue of 16 at
    /// desc 0x1000, avail 0x2000, used 0x3000.
    fn negotiate(t: &mut MmioTransport) {
        w(t, reg::STATUS, status::ACKNOWLEDGE);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(t, reg::STATUS, s);
        assert_eq!(r(t, reg::STATUS), s);
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, 16);
        w(t, reg::QUEUE_DESC_LOW, 0x1000);
        w(t, reg::QUEUE_DESC_HIGH, 0);
        w(t, reg::QUEUE_DRIVER_LOW, 0x2000);
        w(t, reg::QUEUE_DEVICE_LOW, 0x3000);
        w(t, reg::QUEUE_READY, 1);
        w(t, reg::STATUS, s | status::DRIVER_OK);
    }

    /// A device thread's failure reaches the driver as DEVICE_NEEDS_RESET with a
    /// configuration-change interrupt; before DRIVER_OK there is nothing to tell.
    #[test]
    fn a_failed_device_asks_the_driver_for_a_reset() {
        let (mut t, _, irqfd) = transport();
        t.device_failed().unwrap();
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert!(irqfd.read().is_err(), "no interrupt before DRIVER_OK");
        negotiate(&mut t);
        let generation = r(&mut t, reg::CONFIG_GENERATION);
        t.device_failed().unwrap();
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(
            r(&mut t, reg::INTERRUPT_STATUS) & crate::devices::virtio::INTERRUPT_CONFIG_CHANGE,
            crate::devices::virtio::INTERRUPT_CONFIG_CHANGE
        );
        assert_eq!(irqfd.read().unwrap(), 1);
        assert_ne!(r(&mut t, reg::CONFIG_GENERATION), generation);
        // The driver's reset clears it.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), DEVICE_ID_RNG);
        assert_eq!(r(&mut t, reg::VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 256);
        w(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0, "queue 1 does not exist");
    }

    #[test]
    fn features_select_offers_version_1_in_the_high_word() {
        let (mut t, _, _) = transport();
        w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn legacy_driver_cannot_set_features_ok() {
        let (mut t, _, _) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
    }

    #[test]
    fn queue_registers_only_change_during_setup() {
        let (mut t, _, _) = transport();
        // Before FEATURES_OK the queue stays unconfigured.
        w(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        negotiate(&mut t);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
        // After DRIVER_OK a write does not reach the queue.
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let (mut t, _, _) = transport();
        let mut two = [0u8; 2];
        t.read(reg::MAGIC_VALUE, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0u8; 4];
        t.read(reg::MAGIC_VALUE + 1, &mut four);
        assert_eq!(four, [0; 4]);
        t.write(reg::STATUS, &[1]);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, 0xfff0, 5);
        w(&mut t, reg::QUEUE_NOTIFY, 0); // not activated: ignored
        w(&mut t, reg::QUEUE_NOTIFY, u32::MAX);
        assert!(t.queue_events()[0].read().is_err(), "no notification");
        // Clearing bits without a reset is refused.
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::STATUS, status::DRIVER);
        assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
    }

    #[test]
    fn driver_ok_activates_and_notify_fills_the_buffer_and_interrupts() {
        let (mut t, mem, irqfd) = transport();
        let events = t
            .queue_events()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
        let spec = ThreadSpec::new("test-rng", ThreadKind::Device, &Filters::default());
        let (failures, failed) = event_channel().unwrap();
        let worker = DeviceWorker::spawn(spec, t.device(), events, failures, 0).unwrap();
        negotiate(&mut t);
        assert_eq!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        // One device-writable descriptor of 32 bytes at 0x4000.
        mem.write_obj(0x4000u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(32u32, GuestAddress(0x1008)).unwrap();
        mem.write_obj(2u16, GuestAddress(0x100c)).unwrap(); // VIRTQ_DESC_F_WRITE
        mem.write_obj(0u16, GuestAddress(0x2004)).unwrap(); // ring[0] = desc 0
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap(); // avail idx
        // No KVM here: the write reaches the register file, which signals the worker.
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(wait_readable(&irqfd), "the device thread never interrupted");
        worker.stop();
        assert!(failed.drain().is_empty(), "the device reported a failure");
        let used_idx: u16 = mem.read_obj(GuestAddress(0x3002)).unwrap();
        assert_eq!(used_idx, 1);
        let used_len: u32 = mem.read_obj(GuestAddress(0x3008)).unwrap();
        assert_eq!(used_len, 32);
        let mut bytes = [0u8; 32];
        mem.read_slice(&mut bytes, GuestAddress(0x4000)).unwrap();
        assert_ne!(bytes, [0u8; 32], "random bytes were written");
        assert_eq!(irqfd.read().unwrap(), 1);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INTERRUPT_USED_BUFFER);
        w(&mut t, reg::INTERRUPT_ACK, INTERRUPT_USED_BUFFER);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        // Reset returns to the initial state.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn queue_outside_guest_memory_needs_reset() {
        let (mut t, _, _) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(&mut t, reg::STATUS, s);
        w(&mut t, reg::QUEUE_NUM, 16);
        w(&mut t, reg::QUEUE_DESC_LOW, 0);
        w(&mut t, reg::QUEUE_DESC_HIGH, 0x10); // far beyond 4 MiB of RAM
        w(&mut t, reg::QUEUE_DRIVER_LOW, 0x2000);
        w(&mut t, reg::QUEUE_DEVICE_LOW, 0x3000);
        w(&mut t, reg::QUEUE_READY, 1);
        w(&mut t, reg::STATUS, s | status::DRIVER_OK);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        w(&mut t, reg::QUEUE_NOTIFY, 0); // not active: not signalled, no panic
        assert!(t.queue_events()[0].read().is_err());
    }
}
