//! The virtio-blk device served over vhost-user (for QEMU's `vhost-user-blk-device`).
//!
//! QEMU owns the virtio transport and guest memory (a shared memfd); this backend parses and
//! executes requests with the same code as our own VMM's virtio-blk device
//! ([`crate::devices::virtio::block::process_queue`]), on vhost-user-backend's worker thread.
//! QEMU reads the configuration space (capacity, seg_max, discard limits) from us through the
//! CONFIG protocol feature. A backend cannot raise a configuration-change interrupt through
//! this library, so disks that must grow while the VM runs stay on QEMU's own virtio-blk.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use thiserror::Error;
use tracing::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::{ServeError, config_slice, serve_backend};
use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::devices::virtio::block::{BlockError, Disk, config_space, features, process_queue};

/// virtio-blk has one request queue (no VIRTIO_BLK_F_MQ).
const NUM_QUEUES: usize = 1;
/// Largest queue a frontend may set up.
const MAX_QUEUE_SIZE: usize = 1024;
/// The queue size seg_max is derived from: QEMU 7.2's vhost-user-blk default `queue-size`
/// (128). A request must fit the ring since no indirect descriptors are offered, so seg_max
/// assumes the smallest ring QEMU sets up by default.
const SEG_MAX_QUEUE_SIZE: u16 = 128;

/// What to serve.
#[derive(Debug, Clone)]
pub struct BlkConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Offer VIRTIO_BLK_F_RO and fail writes and discards.
    pub read_only: bool,
    /// What GET_ID answers (/sys/block/vdX/serial); the file's dev:inode without it.
    pub serial: Option<String>,
}

#[derive(Debug, Error)]
pub enum VhostUserBlkError {
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("creating the exit event: {0}")]
    ExitEvent(io::Error),
}

pub struct VhostUserBlkBackend {
    disk: Disk,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    event_idx: bool,
    exit_consumer: EventConsumer,
    exit_notifier: EventNotifier,
}

impl VhostUserBlkBackend {
    pub fn new(config: &BlkConfig) -> Result<Self, VhostUserBlkError> {
        let mut disk = Disk::open(&config.path, config.read_only)?;
        if let Some(serial) = &config.serial {
            disk.set_serial(serial)?;
        }
        let (exit_consumer, exit_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(VhostUserBlkError::ExitEvent)?;
        Ok(VhostUserBlkBackend {
            disk,
            mem: None,
            event_idx: false,
            exit_consumer,
            exit_notifier,
        })
    }

    /// The disk's capacity in bytes, as the configuration space reports it.
    pub fn capacity_bytes(&self) -> u64 {
        self.disk.capacity_bytes
    }

    fn process(&self, vrings: &[VringRwLock]) -> io::Result<()> {
        let (Some(mem), Some(vring)) = (self.mem.as_ref().map(|m| m.memory()), vrings.first())
        else {
            // No memory table yet: the driver cannot have queued anything.
            return Ok(());
        };
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return Ok(());
        }
        loop {
            if self.event_idx {
                let _ = state.get_queue_mut().disable_notification(&*mem);
            }
            if process_queue(&mem, state.get_queue_mut(), &self.disk)
                && state
                    .get_queue_mut()
                    .needs_notification(&*mem)
                    .map_err(io::Error::other)?
            {
                state.signal_used_queue()?;
            }
            // With EVENT_IDX, re-enabling notifications reports requests the guest added
            // while they were off; serve those before going back to sleep.
            if !self.event_idx
                || !state
                    .get_queue_mut()
                    .enable_notification(&*mem)
                    .map_err(io::Error::other)?
            {
                return Ok(());
            }
        }
    }
}

impl VhostUserBackendMut for VhostUserBlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        features(self.disk.read_only)
            | VIRTIO_F_VERSION_1
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
        config_slice(&config_space(&self.disk, SEG_MAX_QUEUE_SIZE), offset, size)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Nothing we offer (no writeback toggle) is writable.
        tracing::debug!(
            offset,
            len = buf.len(),
            "vhost-user-blk: ignored config write"
        );
        Ok(())
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
        if usize::from(device_event) >= NUM_QUEUES {
            warn!("vhost-user-blk: unknown event {device_event}");
            return Ok(());
        }
        // An error here would end the library's worker thread and leave the guest with a dead
        // disk while QEMU stays connected: log it and keep serving.
        if let Err(e) = self.process(vrings) {
            error!("vhost-user-blk: {e}");
        }
        Ok(())
    }
}

/// Serves `config`'s image to one vhost-user frontend on `socket` (see
/// [`serve_backend`]); returns `Ok` when the frontend disconnects.
pub fn serve(
    socket: &Path,
    config: &BlkConfig,
    on_listening: impl FnOnce(),
    seccomp: Option<&seccompiler::BpfProgram>,
) -> Result<(), VhostUserBlkError> {
    let backend = Arc::new(RwLock::new(VhostUserBlkBackend::new(config)?));
    serve_backend(
        "vhost-user-blk",
        socket,
        backend,
        &[],
        on_listening,
        seccomp,
    )?;
    Ok(())
}
