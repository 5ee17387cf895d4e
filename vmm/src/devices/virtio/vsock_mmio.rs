//! The hybrid virtio-vsock device (devices/vsock, shared with the vhost-user backend) behind
//! our virtio-mmio transport. The vsock device runs its own thread (devices/vsock/thread.rs:
//! one epoll set over the queue kicks and the host sockets); this adapter starts it when the
//! driver sets DRIVER_OK, forwards queue notifications to its kick eventfds, and raises our
//! virtio-mmio interrupt when it used buffers.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::devices::vsock::{
    DeviceThread, GuestInterrupt, NUM_QUEUES, QUEUE_SIZE, VIRTIO_ID_VSOCK, VsockConfig,
    VsockDevice, VsockError, VsockQueues,
};

/// Our virtio-mmio interrupt, as the vsock thread raises it.
struct MmioInterrupt(VirtioInterrupt);

impl GuestInterrupt for MmioInterrupt {
    fn signal_used_queue(&self, _queue_index: usize) -> std::io::Result<()> {
        self.0.signal_used_queue()
    }
}

/// virtio-vsock on virtio-mmio.
pub struct VsockMmio {
    config: VsockConfig,
    /// The device until activation moves it into its thread.
    device: Option<VsockDevice>,
    config_space: [u8; 8],
    kicks: Vec<EventFd>,
    thread: Option<DeviceThread>,
}

impl VsockMmio {
    /// Validates the cid and starts listening on the host socket `config.uds_path`.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        let device = VsockDevice::new(config)?;
        Ok(Self {
            config: config.clone(),
            config_space: device.config_space(),
            device: Some(device),
            kicks: Vec::new(),
            thread: None,
        })
    }
}

impl VirtioDevice for VsockMmio {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        VsockDevice::features()
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config_space.get(o..))
        {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            offset,
            len = data.len(),
            "virtio-vsock: ignored config write"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx, event]: [Queue; NUM_QUEUES] =
            queues.try_into().map_err(|_| ActivateError::QueueCount {
                got,
                want: NUM_QUEUES,
            })?;
        // A device reset drops the old device (and its host socket); listen again.
        let device = match self.device.take() {
            Some(d) => d,
            None => {
                VsockDevice::new(&self.config).map_err(|e| ActivateError::Device(e.to_string()))?
            }
        };
        let new_kick =
            || EventFd::new(EFD_NONBLOCK).map_err(|e| ActivateError::Device(e.to_string()));
        let kicks = [new_kick()?, new_kick()?, new_kick()?];
        let mut ours = Vec::with_capacity(NUM_QUEUES);
        for k in &kicks {
            ours.push(
                k.try_clone()
                    .map_err(|e| ActivateError::Device(e.to_string()))?,
            );
        }
        let thread = DeviceThread::spawn(
            device,
            Arc::new(mem),
            VsockQueues { rx, tx, event },
            kicks,
            Box::new(MmioInterrupt(interrupt)),
        )
        .map_err(|e| ActivateError::Device(e.to_string()))?;
        self.kicks = ours;
        self.thread = Some(thread);
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) {
        if let Some(kick) = self.kicks.get(index as usize)
            && let Err(e) = kick.write(1)
        {
            tracing::warn!("virtio-vsock: cannot kick queue {index}: {e}");
        }
    }

    fn reset(&mut self) {
        if let Some(thread) = self.thread.take()
            && let Err(e) = thread.stop()
        {
            tracing::warn!("virtio-vsock: device thread ended with an error: {e}");
        }
        self.kicks.clear();
    }
}
