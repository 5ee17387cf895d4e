//! Resizing a running VM's disks (the control socket's ResizeDisk): the caller has already
//! resized the image file; the device serves the new capacity and the transport tells the
//! guest through a configuration-change interrupt, as Linux's virtio-blk driver expects
//! (it re-reads the capacity and resizes the block device).

use std::sync::{Arc, Mutex};

use cros_messages::CrosError;

use super::{Block, BlockError};
use crate::devices::virtio::mmio::MmioTransport;

/// One disk: the device, and the transport that interrupts the guest for it.
type DiskAndTransport = (Arc<Mutex<Block>>, Arc<Mutex<MmioTransport>>);

/// The `--block` disks of a running VM, in the order of the flags.
#[derive(Default)]
pub struct BlockDevices {
    disks: Vec<DiskAndTransport>,
}

impl BlockDevices {
    /// Adds the next disk and the transport it sits behind.
    pub fn push(&mut self, block: Arc<Mutex<Block>>, transport: Arc<Mutex<MmioTransport>>) {
        self.disks.push((block, transport));
    }

    /// Serves `size` bytes on disk `index` and raises the configuration-change interrupt.
    /// A bad index, a read-only disk, or a bad size is refused and nothing changes.
    pub fn resize(&self, index: u32, size: u64) -> Result<(), CrosError> {
        let (block, transport) = usize::try_from(index)
            .ok()
            .and_then(|i| self.disks.get(i))
            .ok_or_else(|| {
                CrosError::not_found(format!(
                    "no disk {index}: the VM has {} (--block flags, from 0)",
                    self.disks.len()
                ))
            })?;
        let old = {
            let mut block = block.lock().unwrap_or_else(|p| p.into_inner());
            let old = block.capacity_bytes();
            block.resize(size).map_err(|e| {
                let message = format!("disk {index}: {e}");
                match e {
                    BlockError::ResizeReadOnly => CrosError::precondition(message),
                    _ => CrosError::invalid(message),
                }
            })?;
            old
        };
        tracing::info!(index, old, new = size, "disk resized");
        transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify_config_change()
            .map_err(|e| {
                CrosError::internal(format!(
                    "disk {index} resized, but the guest could not be interrupted: {e}"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::mmio::reg;
    use crate::devices::virtio::worker::SharedVirtioDevice;
    use crate::devices::virtio::{INTERRUPT_CONFIG_CHANGE, VirtioInterrupt};
    use crate::memory::create_guest_memory;
    use cros_messages::ErrorKind;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    struct Disk {
        file: tempfile::NamedTempFile,
        transport: Arc<Mutex<MmioTransport>>,
        irqfd: EventFd,
    }

    fn disk(devices: &mut BlockDevices, read_only: bool) -> Disk {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(4096).unwrap();
        let block = Arc::new(Mutex::new(Block::open(file.path(), read_only).unwrap()));
        let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(
            block.clone() as SharedVirtioDevice,
            create_guest_memory(4 << 20).unwrap(),
            VirtioInterrupt::new(irqfd.try_clone().unwrap()),
        )
        .unwrap();
        let transport = Arc::new(Mutex::new(transport));
        devices.push(block, transport.clone());
        Disk {
            file,
            transport,
            irqfd,
        }
    }

    fn read(transport: &Mutex<MmioTransport>, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        transport.lock().unwrap().read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn resize_serves_the_new_capacity_and_raises_the_config_interrupt() {
        let mut devices = BlockDevices::default();
        let d = disk(&mut devices, false);
        assert_eq!(read(&d.transport, reg::CONFIG), 8, "sectors before");
        let generation = read(&d.transport, reg::CONFIG_GENERATION);
        d.file.as_file().set_len(1 << 20).unwrap();
        devices.resize(0, 1 << 20).unwrap();
        assert_eq!(read(&d.transport, reg::CONFIG), 2048, "sectors after");
        assert_ne!(read(&d.transport, reg::CONFIG_GENERATION), generation);
        assert_eq!(
            read(&d.transport, reg::INTERRUPT_STATUS) & INTERRUPT_CONFIG_CHANGE,
            INTERRUPT_CONFIG_CHANGE
        );
        assert_eq!(d.irqfd.read().unwrap(), 1);
    }

    #[test]
    fn bad_index_size_or_read_only_disk_is_refused_and_nothing_changes() {
        let mut devices = BlockDevices::default();
        let rw = disk(&mut devices, false);
        let ro = disk(&mut devices, true);
        rw.file.as_file().set_len(8192).unwrap();
        ro.file.as_file().set_len(8192).unwrap();
        let generation = read(&rw.transport, reg::CONFIG_GENERATION);

        let err = devices.resize(2, 8192).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("no disk 2: the VM has 2"), "{err:?}");
        let err = devices.resize(0, 8000).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(err.message.contains("multiple of 512"), "{err:?}");
        let err = devices.resize(0, 16384).unwrap_err();
        assert!(
            err.message.contains("larger than the image file"),
            "{err:?}"
        );
        let err = devices.resize(1, 8192).unwrap_err();
        assert_eq!(err.kind, ErrorKind::FailedPrecondition);
        assert!(
            err.message
                .contains("disk 1: cannot resize a read-only disk"),
            "{err:?}"
        );

        for d in [&rw, &ro] {
            assert_eq!(read(&d.transport, reg::CONFIG), 8);
            assert_eq!(read(&d.transport, reg::INTERRUPT_STATUS), 0);
            assert!(d.irqfd.read().is_err(), "no interrupt for a refused resize");
        }
        assert_eq!(read(&rw.transport, reg::CONFIG_GENERATION), generation);
    }
}
