//! The virtio-net device served over vhost-user (for QEMU's `-netdev vhost-user` with
//! `virtio-net-device`).
//!
//! QEMU owns the virtio transport, the configuration space (the MAC comes from its
//! `-device ...,mac=`) and guest memory (a shared memfd); this backend runs the same
//! `NetDevice` rx/tx code our own VMM runs, on vhost-user-backend's worker thread: queue kicks
//! arrive as vring events, and the tap is registered on the same epoll set (edge-triggered) as
//! an extra listener. QEMU relays the features the driver accepted (SET_FEATURES); the tap's
//! offloads follow them at the next event. QEMU's virtio-net enables the rings before it sends
//! SET_FEATURES, which vhost-user-backend refuses; the backend therefore meets QEMU through a
//! relay that holds that message back (`early_enable`). A tap that vanishes is logged once and the device
//! goes quiet: vhost-user has no way to ask the driver for a reset.

use std::path::Path;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;

use super::{
    Backend, BackendDevice, BackendError, BackendEvent, ExtraListener, Frontend, serve_backend,
};
use crate::devices::net::{
    NUM_QUEUES, NetConfig, NetDevice, NetError, NetEvent, RX_QUEUE, TX_QUEUE,
};

/// Event id of the tap on the backend's epoll set (ids 0..=NUM_QUEUES are the library's: the
/// queues and its exit/vring-enable event).
const TAP_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Why the vhost-user-net backend could not start or serve.
pub type VhostUserNetError = BackendError;

/// The network device a vhost-user-net backend serves.
pub struct NetBackendDevice {
    device: NetDevice,
    /// Why the device stopped, once it has (reported once).
    failed: Option<String>,
}

impl NetBackendDevice {
    pub fn new(config: &NetConfig) -> Result<Self, VhostUserNetError> {
        Ok(Self::with_device(NetDevice::new(config)?))
    }

    pub fn with_device(device: NetDevice) -> Self {
        Self {
            device,
            failed: None,
        }
    }

    pub fn device(&self) -> &NetDevice {
        &self.device
    }

    fn run_device(&mut self, event: NetEvent, on: &BackendEvent<'_>) -> Result<(), NetError> {
        let (vrings, event_idx) = (on.vrings, on.event_idx);
        // No memory table yet: the driver cannot have queued anything; tap frames wait.
        let Some(mem) = on.mem else {
            return Ok(());
        };
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE), vrings.get(TX_QUEUE)) else {
            return Ok(());
        };
        let mut rx_state = rx.get_mut();
        let mut tx_state = tx.get_mut();
        if !rx_state.get_queue().ready() || !tx_state.get_queue().ready() {
            return Ok(());
        }
        loop {
            if event_idx {
                let _ = rx_state.get_queue_mut().disable_notification(mem);
                let _ = tx_state.get_queue_mut().disable_notification(mem);
            }
            let used = self.device.handle_event(
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
                        .map_err(NetError::Queue)?
                {
                    state
                        .signal_used_queue()
                        .map_err(|reason| NetError::TapIo {
                            name: "(interrupt)".into(),
                            reason,
                        })?;
                }
            }
            if !event_idx {
                return Ok(());
            }
            // With EVENT_IDX, re-enabling notifications reports buffers the guest added while
            // they were off: frames to send, or room for a frame that waits.
            let more_tx = tx_state
                .get_queue_mut()
                .enable_notification(mem)
                .map_err(NetError::Queue)?;
            let more_rx = rx_state
                .get_queue_mut()
                .enable_notification(mem)
                .map_err(NetError::Queue)?;
            if !(more_tx || (more_rx && self.device.has_pending_rx())) {
                return Ok(());
            }
        }
    }
}

impl BackendDevice for NetBackendDevice {
    const NAME: &'static str = "vhost-user-net";
    const NUM_QUEUES: usize = NUM_QUEUES;
    /// QEMU's virtio-net rx/tx queue sizes go up to 1024.
    const MAX_QUEUE_SIZE: usize = 1024;

    fn features(&self) -> u64 {
        self.device.features()
    }

    fn config_space(&self) -> Vec<u8> {
        self.device.config_space()
    }

    /// MQ only: QEMU owns virtio-net's configuration space (and warns about CONFIG).
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }

    fn ack_features(&mut self, features: u64) {
        self.device.ack_features(features);
    }

    fn handle(&mut self, event: &BackendEvent<'_>) -> Result<(), String> {
        let id = match event.id {
            e if usize::from(e) == RX_QUEUE => NetEvent::RxKick,
            e if usize::from(e) == TX_QUEUE => NetEvent::TxKick,
            TAP_EVENT => NetEvent::Tap,
            other => return Err(format!("unknown event {other}")),
        };
        if self.failed.is_some() {
            return Ok(());
        }
        self.run_device(id, event).map_err(|e| {
            let reason = format!("{e}; the device stops serving");
            self.failed = Some(reason.clone());
            reason
        })
    }
}

/// Serves `config`'s tap to one vhost-user frontend on `socket` (see [`serve_backend`]);
/// returns `Ok` when the frontend disconnects.
pub fn serve(
    socket: &Path,
    config: &NetConfig,
    on_listening: impl FnOnce(),
    seccomp: Option<&seccompiler::BpfProgram>,
) -> Result<(), VhostUserNetError> {
    let device = NetBackendDevice::new(config)?;
    let tap = ExtraListener {
        what: "the tap",
        fd: device.device.tap_fd(),
        event: TAP_EVENT,
        edge_triggered: true,
    };
    let backend = Arc::new(RwLock::new(Backend::new(device)?));
    serve_backend(
        "vhost-user-net",
        socket,
        backend,
        &[tap],
        Frontend::HoldEarlyVringEnable,
        on_listening,
        seccomp,
    )?;
    Ok(())
}
