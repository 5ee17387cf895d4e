//! Virtio devices behind our own virtio-mmio transport: the device trait the transport drives
//! (with defaults for the bookkeeping most devices share, so a device file holds only what
//! makes it different), the one interrupt every device raises, the queue state of a
//! single-queue device, and the one thread kind every device runs on (`worker`).
//!
//! The vsock device model lives in `devices/vsock` because two transports run it: our
//! virtio-mmio (`vsock_mmio`, an adapter like the other devices here) and the vhost-user
//! backend QEMU talks to (`crate::vhost_user::vsock`).

pub mod block;
pub mod mmio;
pub mod net_mmio;
pub mod pmem;
pub mod rng;
pub mod single_queue;
pub mod vsock_mmio;
pub mod worker;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Virtio device ids (virtio 1.2, section 5).
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_BLOCK: u32 = 2;
pub const DEVICE_ID_RNG: u32 = 4;
pub const DEVICE_ID_VSOCK: u32 = 19;

/// VIRTIO_F_VERSION_1: the device is a modern (virtio 1.x) device. Our transport only speaks
/// the modern interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits shared by the transport and its device.
pub const INTERRUPT_USED_BUFFER: u32 = 0x1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

/// Which queues of an rx/tx device (vsock, net) got used buffers and may need an interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedQueues {
    pub rx: bool,
    pub tx: bool,
}

/// Errors activating a device once the driver set DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver configured {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not ready or does not fit guest memory")]
    InvalidQueue(usize),
    #[error("device activation failed: {0}")]
    Device(String),
}

/// Why a running device stopped serving its queues (the transport then sets
/// DEVICE_NEEDS_RESET and the driver may reset it).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot raise the interrupt")]
    Interrupt(#[source] std::io::Error),
    #[error("{0}")]
    Device(String),
}

/// What the driver hands a device at DRIVER_OK: guest memory, the interrupt, the queues.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub interrupt: VirtioInterrupt,
    pub queues: Vec<Queue>,
}

impl Activation {
    /// Splits off the queues, refusing any count but `N`.
    pub fn take_queues<const N: usize>(
        self,
    ) -> Result<(GuestMemoryMmap, VirtioInterrupt, [Queue; N]), ActivateError> {
        let got = self.queues.len();
        let queues = self
            .queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { got, want: N })?;
        Ok((self.mem, self.interrupt, queues))
    }
}

/// Fills `data` from the device's config space at `offset`, zeros past its end: the guest (or
/// a vhost-user frontend) may read any offset and width, never out of bounds.
pub fn read_config_window(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    if let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// The interrupt of one virtio device: its InterruptStatus register and the irqfd that raises
/// its line in the in-kernel IOAPIC (in device-model tests, an eventfd the test watches).
#[derive(Clone)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl VirtioInterrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
        }
    }

    /// The current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged the `bits` it handled.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Tells the driver the device used buffers.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(INTERRUPT_USED_BUFFER)
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.signal(INTERRUPT_CONFIG_CHANGE)
    }

    fn signal(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The irqfd, for registering with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// A virtio device model, driven by a transport. Everything the guest supplies (config
/// offsets, feature bits, queue contents) is untrusted. The defaults fit a device with no
/// features, a read-only configuration space and no descriptors beyond its queues.
pub trait VirtioDevice: Send {
    /// The virtio device id (e.g. [`DEVICE_ID_BLOCK`]).
    fn device_type(&self) -> u32;
    /// The device's name in log lines ("virtio-blk").
    fn name(&self) -> &'static str;
    /// The largest size of each of the device's queues; its length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (the transport adds [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64 {
        0
    }
    /// Feature bits the driver accepted (a subset of what was offered).
    fn ack_features(&mut self, _features: u64) {}
    /// The device configuration space as the driver reads it now.
    fn config_space(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Reads the device configuration space at `offset`; out of range reads give zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_window(&self.config_space(), offset, data);
    }
    /// Writes the device configuration space; out of range or read-only writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            device = self.name(),
            offset,
            len = data.len(),
            "ignored config write"
        );
    }
    /// The driver finished setup (DRIVER_OK): the device takes its queues and starts.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver notified queue `index` that it has new buffers.
    fn queue_notify(&mut self, index: u32) -> Result<(), DeviceError>;
    /// Descriptors besides the queues that the device's thread waits on (vsock's host
    /// sockets); fixed for the device's life.
    fn event_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Whether [`VirtioDevice::event_fds`] are watched edge-triggered: the device then reads
    /// each until it would block, or remembers that it stopped early (net's tap, whose frames
    /// wait while the guest has no rx buffers, would otherwise wake the thread in a loop).
    fn event_fds_edge_triggered(&self) -> bool {
        false
    }
    /// `event_fds()[index]` is readable.
    fn event_fd_ready(&mut self, _index: usize) -> Result<(), DeviceError> {
        Ok(())
    }
    /// The driver reset the device (status 0): drop queues and go back to the initial state.
    /// Runs on a vCPU thread, whose filter allows closing descriptors but not opening any.
    fn reset(&mut self);
}
