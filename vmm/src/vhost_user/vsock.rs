//! The vsock device served over vhost-user (for QEMU's `vhost-user-vsock-device`).
//!
//! QEMU owns the virtio transport and guest memory (a shared memfd); this backend runs the same
//! `VsockDevice` code our own VMM runs, on vhost-user-backend's worker thread: queue kicks arrive
//! as vring events, and the muxer's epoll fd is registered on the same epoll set as an extra
//! listener, so host sockets and queues are served by one thread that never blocks on a peer.

use std::path::Path;
use std::sync::{Arc, RwLock};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;

use super::{
    Backend, BackendDevice, BackendError, BackendEvent, ExtraListener, Frontend, serve_backend,
};
use crate::devices::vsock::{
    DeviceEvent, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE, VsockConfig, VsockDevice, VsockError,
};

/// Event id of the muxer's epoll fd on the backend's epoll set (ids 0..=NUM_QUEUES are the
/// library's: the queues and its exit/vring-enable event).
const HOST_SOCKETS_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Why the vhost-user-vsock backend could not start or serve.
pub type VhostUserVsockError = BackendError;

/// The vsock device a vhost-user-vsock backend serves.
pub struct VsockBackendDevice(VsockDevice);

impl VsockBackendDevice {
    pub fn new(config: &VsockConfig) -> Result<Self, VhostUserVsockError> {
        Ok(Self(VsockDevice::new(config)?))
    }

    fn run_device(&mut self, event: DeviceEvent, on: &BackendEvent<'_>) -> Result<(), VsockError> {
        let (vrings, event_idx) = (on.vrings, on.event_idx);
        let Some(mem) = on.mem else {
            // No memory table yet: the driver cannot have queued anything; host work waits.
            if event == DeviceEvent::HostSockets {
                self.0.process_host_events()?;
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
                self.0.process_host_events()?;
            }
            return Ok(());
        }
        loop {
            if event_idx {
                let _ = rx_state.get_queue_mut().disable_notification(mem);
                let _ = tx_state.get_queue_mut().disable_notification(mem);
            }
            let used = self.0.handle_event(
                event,
                mem,
                rx_state.get_queue_mut(),
                tx_state.get_queue_mut(),
            )?;
            for (was_used, state) in [(used.rx, &mut rx_state), (used.tx, &mut tx_state)] {
                if was_used
                    && state
                        .get_queue_mut()
                        .needs_notification(mem)
                        .map_err(VsockError::Queue)?
                {
                    state.signal_used_queue().map_err(VsockError::Interrupt)?;
                }
            }
            if !event_idx {
                return Ok(());
            }
            // With EVENT_IDX, re-enabling notifications reports buffers the guest added while
            // they were off; process those before going back to sleep.
            let more_tx = tx_state
                .get_queue_mut()
                .enable_notification(mem)
                .map_err(VsockError::Queue)?;
            let more_rx = rx_state
                .get_queue_mut()
                .enable_notification(mem)
                .map_err(VsockError::Queue)?;
            if !(more_tx || (more_rx && self.0.has_pending_rx())) {
                return Ok(());
            }
        }
    }
}

impl BackendDevice for VsockBackendDevice {
    const NAME: &'static str = "vhost-user-vsock";
    const NUM_QUEUES: usize = NUM_QUEUES;
    /// QEMU sizes vhost-user-vsock queues at 1024 whatever our own VMM offers.
    const MAX_QUEUE_SIZE: usize = 1024;

    fn config_space(&self) -> Vec<u8> {
        self.0.config_space().to_vec()
    }

    fn features(&self) -> u64 {
        VsockDevice::features()
    }

    fn handle(&mut self, event: &BackendEvent<'_>) -> Result<(), String> {
        let id = match event.id {
            e if usize::from(e) == RX_QUEUE => DeviceEvent::RxKick,
            e if usize::from(e) == TX_QUEUE => DeviceEvent::TxKick,
            e if usize::from(e) == EVENT_QUEUE => DeviceEvent::EventKick,
            HOST_SOCKETS_EVENT => DeviceEvent::HostSockets,
            other => return Err(format!("unknown event {other}")),
        };
        self.run_device(id, event).map_err(|e| e.to_string())
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
    let device = VsockBackendDevice::new(config)?;
    let host_fd = device.0.host_events_fd();
    let backend = Backend::new(device)?;
    let backend = Arc::new(RwLock::new(backend));
    let host_sockets = ExtraListener {
        what: "the host sockets",
        fd: host_fd,
        event: HOST_SOCKETS_EVENT,
        edge_triggered: false,
    };
    serve_backend(
        "vhost-user-vsock",
        socket,
        backend,
        &[host_sockets],
        Frontend::Direct,
        on_listening,
        seccomp,
    )?;
    Ok(())
}
