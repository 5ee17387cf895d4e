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

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::{Backend, BackendDevice, BackendError, BackendEvent, Frontend, serve_backend};
use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::devices::virtio::block::{Disk, config_space, features, process_queue};

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

/// Why the vhost-user-blk backend could not start or serve.
pub type VhostUserBlkError = BackendError;

/// The disk a vhost-user-blk backend serves.
pub struct BlkDevice {
    disk: Disk,
}

impl BlkDevice {
    pub fn new(config: &BlkConfig) -> Result<Self, VhostUserBlkError> {
        let mut disk = Disk::open(&config.path, config.read_only)?;
        if let Some(serial) = &config.serial {
            disk.set_serial(serial)?;
        }
        Ok(Self { disk })
    }

    /// The disk's capacity in bytes, as the configuration space reports it.
    pub fn capacity_bytes(&self) -> u64 {
        self.disk.capacity_bytes
    }

    fn process(
        &self,
        mem: &GuestMemoryMmap,
        vring: &VringRwLock,
        event_idx: bool,
    ) -> io::Result<()> {
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return Ok(());
        }
        loop {
            if event_idx {
                let _ = state.get_queue_mut().disable_notification(mem);
            }
            if process_queue(mem, state.get_queue_mut(), &self.disk)
                && state
                    .get_queue_mut()
                    .needs_notification(mem)
                    .map_err(io::Error::other)?
            {
                state.signal_used_queue()?;
            }
            // With EVENT_IDX, re-enabling notifications reports requests the guest added
            // while they were off; serve those before going back to sleep.
            if !event_idx
                || !state
                    .get_queue_mut()
                    .enable_notification(mem)
                    .map_err(io::Error::other)?
            {
                return Ok(());
            }
        }
    }
}

impl BackendDevice for BlkDevice {
    const NAME: &'static str = "vhost-user-blk";
    /// virtio-blk has one request queue (no VIRTIO_BLK_F_MQ).
    const NUM_QUEUES: usize = 1;
    const MAX_QUEUE_SIZE: usize = 1024;

    fn features(&self) -> u64 {
        features(self.disk.read_only) | VIRTIO_F_VERSION_1
    }

    fn config_space(&self) -> Vec<u8> {
        config_space(&self.disk, SEG_MAX_QUEUE_SIZE).to_vec()
    }

    fn handle(&mut self, event: &BackendEvent<'_>) -> Result<(), String> {
        if usize::from(event.id) >= Self::NUM_QUEUES {
            return Err(format!("unknown event {}", event.id));
        }
        // No memory table yet: the driver cannot have queued anything.
        let (Some(mem), Some(vring)) = (event.mem, event.vrings.first()) else {
            return Ok(());
        };
        self.process(mem, vring, event.event_idx)
            .map_err(|e| e.to_string())
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
    let backend = Arc::new(RwLock::new(Backend::new(BlkDevice::new(config)?)?));
    serve_backend(
        "vhost-user-blk",
        socket,
        backend,
        &[],
        Frontend::Direct,
        on_listening,
        seccomp,
    )?;
    Ok(())
}
