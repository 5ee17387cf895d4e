//! The virtio bookkeeping of a device with one request queue (block, pmem, rng), written
//! once: feature negotiation, activation, the interrupt after used buffers, reset. A device
//! supplies only what makes it itself, as a [`QueueHandler`].

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{ActivateError, Activation, DeviceError, VirtioDevice, VirtioInterrupt};

/// What a single-queue device does with its requests.
pub trait QueueHandler: Send {
    /// The virtio device id.
    const DEVICE_TYPE: u32;
    /// The device's name in log lines.
    const NAME: &'static str;
    /// The largest queue the driver may set up.
    const QUEUE_SIZE: u16;
    /// Feature bits offered (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64 {
        0
    }
    /// The configuration space the driver reads.
    fn config_space(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Serves every request available on `queue`; returns whether it used any buffer.
    fn serve(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool;
}

/// The queue, memory and interrupt handed over at DRIVER_OK.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queue: Queue,
}

/// A virtio device with one request queue served by `H`.
pub struct SingleQueueDevice<H> {
    handler: H,
    queue_sizes: [u16; 1],
    acked_features: u64,
    active: Option<Active>,
}

impl<H: QueueHandler> SingleQueueDevice<H> {
    pub fn with_handler(handler: H) -> Self {
        Self {
            handler,
            queue_sizes: [H::QUEUE_SIZE],
            acked_features: 0,
            active: None,
        }
    }

    /// The handler (for what only this device kind does: a disk's resize).
    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }
}

impl<H: QueueHandler> VirtioDevice for SingleQueueDevice<H> {
    fn device_type(&self) -> u32 {
        H::DEVICE_TYPE
    }

    fn name(&self) -> &'static str {
        H::NAME
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.handler.features()
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.handler.features();
    }

    fn config_space(&self) -> Vec<u8> {
        self.handler.config_space()
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let (mem, interrupt, [queue]) = activation.take_queues()?;
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut().filter(|_| index == 0) else {
            return Ok(());
        };
        if self.handler.serve(&active.mem, &mut active.queue)
            && active.queue.needs_notification(&active.mem).unwrap_or(true)
        {
            active
                .interrupt
                .signal_used_queue()
                .map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}
