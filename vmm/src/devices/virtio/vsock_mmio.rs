//! The hybrid virtio-vsock device (devices/vsock, shared with the vhost-user backend) behind
//! our virtio-mmio transport. Like every virtio device it runs on the device thread
//! (`worker`), here under the vsock filter, which waits on the muxer's host-socket epoll fd
//! besides the queue kicks. The host socket is bound when the VM is built: a device reset
//! (on a vCPU thread, which may not open sockets) drops the connections and keeps listening.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{ActivateError, Activation, DeviceError, VirtioDevice, VirtioInterrupt};
use crate::devices::vsock::{
    DeviceEvent, EVENT_QUEUE, NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK,
    VsockConfig, VsockDevice, VsockError,
};

/// What the driver handed over at DRIVER_OK.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    rx: Queue,
    tx: Queue,
}

/// virtio-vsock on virtio-mmio.
pub struct VsockMmio {
    device: VsockDevice,
    active: Option<Active>,
}

impl VsockMmio {
    /// Validates the cid and starts listening on the host socket `config.uds_path`.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        Ok(Self {
            device: VsockDevice::new(config)?,
            active: None,
        })
    }

    /// Live connections (for tests).
    pub fn connection_count(&self) -> usize {
        self.device.connection_count()
    }

    fn run(&mut self, event: DeviceEvent) -> Result<(), DeviceError> {
        let failed = |e: VsockError| DeviceError::Device(e.to_string());
        let Some(active) = self.active.as_mut() else {
            // Not started: accept host clients (their CONNECT waits for the guest) so the
            // listener does not keep the thread awake.
            if event == DeviceEvent::HostSockets {
                self.device.process_host_events().map_err(failed)?;
            }
            return Ok(());
        };
        let used = self
            .device
            .handle_event(event, &active.mem, &mut active.rx, &mut active.tx)
            .map_err(failed)?;
        if used.rx || used.tx {
            active
                .interrupt
                .signal_used_queue()
                .map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }
}

impl VirtioDevice for VsockMmio {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        VsockDevice::features()
    }

    fn config_space(&self) -> Vec<u8> {
        self.device.config_space().to_vec()
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let (mem, interrupt, [rx, tx, _event]) = activation.take_queues::<NUM_QUEUES>()?;
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
            RX_QUEUE => DeviceEvent::RxKick,
            TX_QUEUE => DeviceEvent::TxKick,
            EVENT_QUEUE => DeviceEvent::EventKick,
            _ => return Ok(()),
        };
        self.run(event)
    }

    fn event_fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.device.host_events_fd()]
    }

    fn event_fd_ready(&mut self, _index: usize) -> Result<(), DeviceError> {
        self.run(DeviceEvent::HostSockets)
    }

    fn reset(&mut self) {
        self.active = None;
        self.device.reset();
    }
}
