//! The vsock device served over vhost-user (for QEMU's `vhost-user-vsock-device`).
//!
//! QEMU owns the virtio transport and guest memory (a shared memfd); this backend runs the same
//! `VsockDevice` code our own VMM runs, on vhost-user-backend's worker thread: queue kicks arrive
//! as vring events, and the muxer's epoll fd is registered on the same epoll set as an extra
//! listener, so host sockets and queues are served by one thread that never blocks on a peer.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use thiserror::Error;
use tracing::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::{ExtraListener, ServeError, config_slice, serve_backend};
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::devices::vsock::{
    DeviceEvent, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE, VsockConfig, VsockDevice, VsockError,
};

/// Event id of the muxer's epoll fd on the backend's epoll set (ids 0..=NUM_QUEUES are the
/// library's: the queues and its exit/vring-enable event).
const HOST_SOCKETS_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Largest queue a frontend may set up. QEMU sizes vhost-user-vsock queues at 1024 whatever
/// our own VMM offers.
const MAX_QUEUE_SIZE: usize = 1024;

#[derive(Debug, Error)]
pub enum VhostUserVsockError {
    #[error(transparent)]
    Device(#[from] VsockError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("creating the exit event: {0}")]
    ExitEvent(io::Error),
}

pub struct VhostUserVsockBackend {
    device: VsockDevice,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    event_idx: bool,
    exit_consumer: EventConsumer,
    exit_notifier: EventNotifier,
}

impl VhostUserVsockBackend {
    pub fn new(config: &VsockConfig) -> Result<Self, VhostUserVsockError> {
        let device = VsockDevice::new(config)?;
        let (exit_consumer, exit_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(VhostUserVsockError::ExitEvent)?;
        Ok(VhostUserVsockBackend {
            device,
            mem: None,
            event_idx: false,
            exit_consumer,
            exit_notifier,
        })
    }

    fn run_device(&mut self, event: DeviceEvent, vrings: &[VringRwLock]) -> Result<(), VsockError> {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            // No memory table yet: the driver cannot have queued anything; host work waits.
            if event == DeviceEvent::HostSockets {
                self.device.process_host_events()?;
            }
            return Ok(());
        };
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE), vrings.get(TX_QUEUE)) else {
            return Ok(());
        };
        let mut rx_state = rx.get_mut();
        let mut tx_state = tx.get_mut();
        if !rx_state.get_queue().ready() || !tx_state.get_queue().ready() {
            if event == DeviceEvent::HostSockets {
                self.device.process_host_events()?;
            }
            return Ok(());
        }
        loop {
            if self.event_idx {
                let _ = rx_state.get_queue_mut().disable_notification(&*mem);
                let _ = tx_state.get_queue_mut().disable_notification(&*mem);
            }
            let used = self.device.handle_event(
                event,
                &*mem,
                rx_state.get_queue_mut(),
                tx_state.get_queue_mut(),
            )?;
            for (was_used, state) in [(used.rx, &mut rx_state), (used.tx, &mut tx_state)] {
                if was_used
                    && state
                        .get_queue_mut()
                        .needs_notification(&*mem)
                        .map_err(VsockError::Queue)?
                {
                    state.signal_used_queue().map_err(VsockError::Interrupt)?;
                }
            }
            if !self.event_idx {
                return Ok(());
            }
            // With EVENT_IDX, re-enabling notifications reports buffers the guest added while
            // they were off; process those before going back to sleep.
            let more_tx = tx_state
                .get_queue_mut()
                .enable_notification(&*mem)
                .map_err(VsockError::Queue)?;
            let more_rx = rx_state
                .get_queue_mut()
                .enable_notification(&*mem)
                .map_err(VsockError::Queue)?;
            if !(more_tx || (more_rx && self.device.has_pending_rx())) {
                return Ok(());
            }
        }
    }
}

impl VhostUserBackendMut for VhostUserVsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VsockDevice::features()
            | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.device.config_space(), offset, size)
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((
            self.exit_consumer.try_clone().ok()?,
            self.exit_notifier.try_clone().ok()?,
        ))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if !evset.contains(EventSet::IN) {
            return Ok(());
        }
        tracing::trace!(device_event, "vhost-user event");
        let event = match device_event {
            e if usize::from(e) == RX_QUEUE => DeviceEvent::RxKick,
            e if usize::from(e) == TX_QUEUE => DeviceEvent::TxKick,
            e if usize::from(e) == EVENT_QUEUE => DeviceEvent::EventKick,
            HOST_SOCKETS_EVENT => DeviceEvent::HostSockets,
            other => {
                warn!("vhost-user-vsock: unknown event {other}");
                return Ok(());
            }
        };
        // An error here would end the library's worker thread and leave the guest with a dead
        // device while QEMU stays connected: log it and keep serving.
        if let Err(e) = self.run_device(event, vrings) {
            error!("vhost-user-vsock: {e}");
        }
        Ok(())
    }
}

/// Serves one vhost-user connection: listens on `socket` (calling `on_listening` once it can
/// accept, so a launcher can start QEMU), serves the frontend until it disconnects, then
/// returns `Ok`. `seccomp`: see [`serve_backend`].
pub fn serve(
    socket: &Path,
    config: &VsockConfig,
    on_listening: impl FnOnce(),
    seccomp: Option<&seccompiler::BpfProgram>,
) -> Result<(), VhostUserVsockError> {
    let backend = Arc::new(RwLock::new(VhostUserVsockBackend::new(config)?));
    let host_fd = backend
        .read()
        .map_err(|_| ServeError::Daemon("backend lock poisoned".into()))?
        .device
        .host_events_fd();
    let host_sockets = ExtraListener {
        what: "the host sockets",
        fd: host_fd,
        event: HOST_SOCKETS_EVENT,
    };
    serve_backend(
        "vhost-user-vsock",
        socket,
        backend,
        &[host_sockets],
        on_listening,
        seccomp,
    )?;
    Ok(())
}
