//! virtio-net (devices/net, shared with the vhost-user backend) behind our virtio-mmio
//! transport. It runs on the device thread (`worker`) under the net filter, which waits on the
//! tap (edge-triggered) besides the queue kicks. The tap is opened when the VM is built: a
//! device reset (on a vCPU thread, which may not open files) keeps it.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{ActivateError, Activation, DeviceError, VirtioDevice, VirtioInterrupt};
use crate::devices::net::{
    NUM_QUEUES, NetConfig, NetDevice, NetError, NetEvent, NetStats, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
    VIRTIO_ID_NET,
};

/// What the driver handed over at DRIVER_OK.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    rx: Queue,
    tx: Queue,
}

/// virtio-net on virtio-mmio.
pub struct NetMmio {
    device: NetDevice,
    active: Option<Active>,
}

impl NetMmio {
    /// Opens the tap `config.tap`.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        Ok(Self::with_device(NetDevice::new(config)?))
    }

    pub fn with_device(device: NetDevice) -> Self {
        Self {
            device,
            active: None,
        }
    }

    /// Frames passed and dropped (for tests and logs).
    pub fn stats(&self) -> &NetStats {
        self.device.stats()
    }

    fn run(&mut self, event: NetEvent) -> Result<(), DeviceError> {
        // Not started: tap frames wait in the kernel's queue (edge-triggered, so they do not
        // keep the thread awake) until the driver posts buffers and kicks.
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let used = self
            .device
            .handle_event(event, &active.mem, &mut active.rx, &mut active.tx)
            .map_err(|e| DeviceError::Device(e.to_string()))?;
        if used.rx || used.tx {
            active
                .interrupt
                .signal_used_queue()
                .map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }
}

impl VirtioDevice for NetMmio {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        self.device.features()
    }

    fn ack_features(&mut self, features: u64) {
        self.device.ack_features(features);
    }

    fn config_space(&self) -> Vec<u8> {
        self.device.config_space()
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let (mem, interrupt, [rx, tx]) = activation.take_queues::<NUM_QUEUES>()?;
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) -> Result<(), DeviceError> {
        let event = match index as usize {
            RX_QUEUE => NetEvent::RxKick,
            TX_QUEUE => NetEvent::TxKick,
            _ => return Ok(()),
        };
        self.run(event)
    }

    fn event_fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.device.tap_fd()]
    }

    fn event_fds_edge_triggered(&self) -> bool {
        true
    }

    fn event_fd_ready(&mut self, _index: usize) -> Result<(), DeviceError> {
        self.run(NetEvent::Tap)
    }

    fn reset(&mut self) {
        self.active = None;
        self.device.reset();
    }
}
