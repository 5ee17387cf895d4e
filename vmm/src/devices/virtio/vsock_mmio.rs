//! The hybrid virtio-vsock device (devices/vsock, shared with the vhost-user backend) behind
//! our virtio-mmio transport. The vsock device runs on its own thread, which this adapter
//! starts with the VM (not when the driver sets DRIVER_OK: that write arrives on a vCPU
//! thread, whose seccomp filter allows neither starting threads nor opening sockets). The
//! thread confines itself with the vsock filter, then serves one activation after another
//! (devices/vsock/thread.rs: one epoll set over the queue kicks and the host sockets). The
//! adapter forwards queue notifications to its kick eventfds, and the thread raises our
//! virtio-mmio interrupt when it used buffers.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::devices::vsock::thread::serve;
use crate::devices::vsock::{
    GuestInterrupt, NUM_QUEUES, QUEUE_SIZE, VIRTIO_ID_VSOCK, VsockConfig, VsockDevice, VsockError,
    VsockQueues,
};
use crate::seccomp::{self, ThreadKind};

/// Our virtio-mmio interrupt, as the vsock thread raises it.
struct MmioInterrupt(VirtioInterrupt);

impl GuestInterrupt for MmioInterrupt {
    fn signal_used_queue(&self, _queue_index: usize) -> std::io::Result<()> {
        self.0.signal_used_queue()
    }
}

/// What the driver handed over at DRIVER_OK, for the device thread.
struct Activation {
    mem: GuestMemoryMmap,
    queues: VsockQueues,
    interrupt: MmioInterrupt,
    /// Whether the device runs (or why not), once the thread has set it up.
    started: Sender<Result<(), String>>,
}

/// The eventfds the adapter and the device thread share: created once, with the VM, since a
/// vCPU thread may not create descriptors.
struct SharedFds {
    kicks: [EventFd; NUM_QUEUES],
    /// Ends the current activation (a device reset) or, with the channel closed, the thread.
    exit: EventFd,
}

impl SharedFds {
    fn new() -> Result<Self, VsockError> {
        let fd = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Self {
            kicks: [fd()?, fd()?, fd()?],
            exit: fd()?,
        })
    }

    fn try_clone(&self) -> Result<Self, VsockError> {
        let clone = |e: &EventFd| e.try_clone().map_err(VsockError::EventFd);
        Ok(Self {
            kicks: [
                clone(&self.kicks[0])?,
                clone(&self.kicks[1])?,
                clone(&self.kicks[2])?,
            ],
            exit: clone(&self.exit)?,
        })
    }

    /// Forgets kicks and exits left over from an earlier activation.
    fn drain(&self) {
        for fd in self.kicks.iter().chain([&self.exit]) {
            let _ = fd.read();
        }
    }
}

/// virtio-vsock on virtio-mmio.
pub struct VsockMmio {
    config_space: [u8; 8],
    fds: SharedFds,
    activations: Option<Sender<Activation>>,
    /// One message per activation that ended (reset, or the device failed).
    stopped: Receiver<()>,
    running: bool,
    thread: Option<JoinHandle<()>>,
}

impl VsockMmio {
    /// Validates the cid, starts listening on the host socket `config.uds_path`, and starts
    /// the device thread, confined by `seccomp` (the [`ThreadKind::Vsock`] filter) when given.
    pub fn new(config: &VsockConfig, seccomp: Option<BpfProgram>) -> Result<Self, VsockError> {
        let device = VsockDevice::new(config)?;
        let config_space = device.config_space();
        let fds = SharedFds::new()?;
        let thread_fds = fds.try_clone()?;
        let (activations, activation_rx) = mpsc::channel();
        let (stopped_tx, stopped) = mpsc::channel();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vsock-cid{}", config.guest_cid))
            .spawn(move || {
                if let Some(filter) = &seccomp
                    && let Err(e) = seccomp::install(ThreadKind::Vsock, filter)
                {
                    tracing::error!("virtio-vsock: device thread not started: {e}");
                    return;
                }
                device_thread(&config, device, &thread_fds, &activation_rx, &stopped_tx);
            })
            .map_err(VsockError::SpawnThread)?;
        Ok(Self {
            config_space,
            fds,
            activations: Some(activations),
            stopped,
            running: false,
            thread: Some(thread),
        })
    }
}

/// The device thread: serves each activation until the device is reset, then drops the
/// device (its connections and host socket) and listens again at the next activation.
fn device_thread(
    config: &VsockConfig,
    device: VsockDevice,
    fds: &SharedFds,
    activations: &Receiver<Activation>,
    stopped: &Sender<()>,
) {
    let mut device = Some(device);
    for Activation {
        mem,
        mut queues,
        interrupt,
        started,
    } in activations
    {
        let mut current = match device.take().map_or_else(|| VsockDevice::new(config), Ok) {
            Ok(d) => d,
            Err(e) => {
                let _ = started.send(Err(e.to_string()));
                continue;
            }
        };
        fds.drain();
        let _ = started.send(Ok(()));
        if let Err(e) = serve(
            &mut current,
            &Arc::new(mem),
            &mut queues,
            &fds.kicks,
            &fds.exit,
            &interrupt,
        ) {
            tracing::error!("virtio-vsock: device stopped: {e}");
        }
        drop(current);
        let _ = stopped.send(());
    }
}

impl Drop for VsockMmio {
    fn drop(&mut self) {
        // Ends a running activation, then (the channel closed) the thread.
        let _ = self.fds.exit.write(1);
        self.activations = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("virtio-vsock: device thread panicked");
        }
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
        super::read_config_window(&self.config_space, offset, data);
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
        let Some(activations) = &self.activations else {
            return Err(ActivateError::Device("the device thread has ended".into()));
        };
        let (started, started_rx) = mpsc::channel();
        activations
            .send(Activation {
                mem,
                queues: VsockQueues { rx, tx, event },
                interrupt: MmioInterrupt(interrupt),
                started,
            })
            .map_err(|_| ActivateError::Device("the device thread has ended".into()))?;
        match started_rx.recv() {
            Ok(Ok(())) => {
                self.running = true;
                Ok(())
            }
            Ok(Err(e)) => Err(ActivateError::Device(e)),
            Err(_) => Err(ActivateError::Device(
                "the device thread ended while starting the device".into(),
            )),
        }
    }

    fn queue_notify(&mut self, index: u32) {
        if let Some(kick) = self.fds.kicks.get(index as usize)
            && let Err(e) = kick.write(1)
        {
            tracing::warn!("virtio-vsock: cannot kick queue {index}: {e}");
        }
    }

    fn reset(&mut self) {
        if !std::mem::take(&mut self.running) {
            return;
        }
        if let Err(e) = self.fds.exit.write(1) {
            tracing::warn!("virtio-vsock: cannot stop the device for a reset: {e}");
            return;
        }
        // Waits until the device thread has dropped the device, so a new activation
        // starts from a fresh one.
        let _ = self.stopped.recv();
    }
}
