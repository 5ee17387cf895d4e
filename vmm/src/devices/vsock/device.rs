//! The virtio-vsock device (virtio 1.2, 5.10): its identity, config space and queue handling.
//! Transports drive it through `handle_event`: our own VMM's virtio-mmio adapter
//! (`crate::devices::virtio::vsock_mmio`, on the virtio device thread) and the vhost-user
//! backend QEMU talks to (`crate::vhost_user::vsock`) run the same code.

use std::os::fd::RawFd;
use std::path::PathBuf;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::Queue;
use vm_memory::GuestMemory;

use super::error::VsockError;
use super::muxer::Muxer;

/// Virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
pub const NUM_QUEUES: usize = 3;
/// Queue size we offer (Linux and Firecracker use 256 for vsock).
pub const QUEUE_SIZE: u16 = 256;

#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// The guest's context id (3 and up).
    pub guest_cid: u64,
    /// Host side: clients connect here with `CONNECT <port>`; guest connects reach `<path>_<port>`.
    pub uds_path: PathBuf,
}

/// What woke the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The guest added rx buffers.
    RxKick,
    /// The guest queued packets.
    TxKick,
    /// The guest added event buffers (we send no events; nothing to do).
    EventKick,
    /// The muxer's epoll fd is readable: host sockets have work.
    HostSockets,
}

pub use crate::devices::virtio::UsedQueues;

pub struct VsockDevice {
    muxer: Muxer,
}

impl VsockDevice {
    /// Validates the cid and starts listening on `config.uds_path`.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        Ok(VsockDevice {
            muxer: Muxer::new(config.guest_cid, &config.uds_path)?,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.muxer.guest_cid()
    }

    /// Device features: VIRTIO_F_VERSION_1 only (stream sockets; no SEQPACKET).
    pub fn features() -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    /// `struct virtio_vsock_config { le64 guest_cid; }`.
    pub fn config_space(&self) -> [u8; 8] {
        self.guest_cid().to_le_bytes()
    }

    /// Readable when host sockets need attention: the event loop watches it and then sends
    /// `DeviceEvent::HostSockets`.
    pub fn host_events_fd(&self) -> RawFd {
        self.muxer.epoll_fd()
    }

    /// Live connections (for logs and tests).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Accepts host clients, reads handshakes, notes readable/writable host sockets.
    pub fn process_host_events(&mut self) -> Result<(), VsockError> {
        self.muxer.process_host_events()
    }

    /// Drops every connection and keeps listening (a device reset).
    pub fn reset(&mut self) {
        self.muxer.reset();
    }

    pub fn has_pending_rx(&self) -> bool {
        self.muxer.has_pending_rx()
    }

    /// Runs everything one event calls for. The tx queue is drained on every event, not only on
    /// tx kicks: with VIRTIO_RING_F_EVENT_IDX the guest may add packets without a kick while we
    /// are busy, and a guest whose tx replies pile up stops reading its rx queue. Tx work can
    /// owe the guest replies, so rx is filled last.
    pub fn handle_event<M: GuestMemory>(
        &mut self,
        event: DeviceEvent,
        mem: &M,
        rxq: &mut Queue,
        txq: &mut Queue,
    ) -> Result<UsedQueues, VsockError> {
        let mut used = UsedQueues::default();
        if event == DeviceEvent::HostSockets {
            self.process_host_events()?;
        }
        // Guest packets on the tx queue → host sockets; then host data and control packets
        // → guest rx buffers.
        used.tx = self.muxer.process_tx(mem, txq)?;
        used.rx = self.muxer.fill_rx(mem, rxq)?;
        Ok(used)
    }
}
