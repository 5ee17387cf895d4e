//! virtio-pmem (virtio 1.2, section 5.19): a file mapped into guest physical memory above RAM,
//! which the guest reads and writes directly (Linux: DAX, the termina root file system), and a
//! request queue whose only request, FLUSH, makes the guest's writes durable. A read-only
//! image is mapped read-only and registered with KVM as a read-only slot, so guest writes
//! never reach the file.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::single_queue::{QueueHandler, SingleQueueDevice};

pub const DEVICE_ID_PMEM: u32 = 27;
const QUEUE_SIZE: u16 = 64;
const VIRTIO_PMEM_REQ_TYPE_FLUSH: u32 = 0;
const VIRTIO_PMEM_RESP_TYPE_OK: u32 = 0;
const VIRTIO_PMEM_RESP_TYPE_EIO: u32 = 1;
/// Regions are placed and sized in 2 MiB units (Linux maps them with huge pages).
pub const PMEM_ALIGNMENT: u64 = 2 << 20;

/// Errors opening and mapping a pmem image.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    #[error("cannot open pmem image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pmem image {path} is {size} bytes; its size must be a non-zero multiple of 2 MiB \
         (pad it, e.g. truncate -s %2M)"
    )]
    Size { path: PathBuf, size: u64 },
    #[error("cannot map pmem image {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A pmem image mapped into the VMM, to be registered as a KVM memory slot.
pub struct PmemMapping {
    pub host_addr: u64,
    pub size: u64,
    pub read_only: bool,
}

impl Drop for PmemMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `map_pmem` created, once.
        unsafe { libc::munmap(self.host_addr as *mut libc::c_void, self.size as usize) };
    }
}

/// The virtio-pmem device.
pub type Pmem = SingleQueueDevice<PmemImage>;

/// What virtio-pmem serves: the mapped image's place in guest memory, and its file to flush.
pub struct PmemImage {
    file: File,
    guest_addr: u64,
    size: u64,
}

impl Pmem {
    /// Opens and maps `path` (shared, so guest writes reach the file unless read-only); the
    /// region will appear to the guest at `guest_addr`.
    pub fn open(
        path: &Path,
        read_only: bool,
        guest_addr: u64,
    ) -> Result<(Self, PmemMapping), PmemError> {
        let open_err = |source| PmemError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        if size == 0 || size % PMEM_ALIGNMENT != 0 {
            return Err(PmemError::Size {
                path: path.to_owned(),
                size,
            });
        }
        let len = usize::try_from(size).map_err(|_| PmemError::Size {
            path: path.to_owned(),
            size,
        })?;
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        use std::os::fd::AsRawFd;
        // SAFETY: a new shared mapping of the whole file; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(PmemError::Map {
                path: path.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok((
            SingleQueueDevice::with_handler(PmemImage {
                file,
                guest_addr,
                size,
            }),
            PmemMapping {
                host_addr: addr as u64,
                size,
                read_only,
            },
        ))
    }
}

/// Serves every FLUSH request; returns whether any chain was returned.
fn process_queue(mem: &GuestMemoryMmap, queue: &mut Queue, file: &File) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let descs: Vec<_> = chain.take(4).collect();
        // A request: 4 readable bytes of type, then 4 writable bytes for the response.
        let used = match descs.as_slice() {
            [req, resp, ..]
                if !req.is_write_only()
                    && req.len() >= 4
                    && resp.is_write_only()
                    && resp.len() >= 4 =>
            {
                let kind: Option<u32> = mem.read_obj(req.addr()).ok();
                let ret = match kind {
                    Some(VIRTIO_PMEM_REQ_TYPE_FLUSH) => match file.sync_all() {
                        Ok(()) => VIRTIO_PMEM_RESP_TYPE_OK,
                        Err(e) => {
                            tracing::warn!("virtio-pmem: flush failed: {e}");
                            VIRTIO_PMEM_RESP_TYPE_EIO
                        }
                    },
                    _ => VIRTIO_PMEM_RESP_TYPE_EIO,
                };
                if mem.write_obj(ret, resp.addr()).is_ok() {
                    4
                } else {
                    0
                }
            }
            _ => {
                tracing::debug!(head, "virtio-pmem: malformed request dropped");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, used) {
            tracing::warn!("virtio-pmem: cannot return request {head}: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}

impl QueueHandler for PmemImage {
    const DEVICE_TYPE: u32 = DEVICE_ID_PMEM;
    const NAME: &'static str = "virtio-pmem";
    const QUEUE_SIZE: u16 = QUEUE_SIZE;

    /// `struct virtio_pmem_config { le64 start; le64 size; }`.
    fn config_space(&self) -> Vec<u8> {
        [self.guest_addr.to_le_bytes(), self.size.to_le_bytes()].concat()
    }

    fn serve(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        process_queue(mem, queue, &self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::VirtioDevice;

    #[test]
    fn unaligned_image_is_refused_with_the_reason() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(3 << 20).unwrap();
        let Err(err) = Pmem::open(file.path(), true, 1 << 32) else {
            panic!("a 3 MiB image was accepted");
        };
        assert!(err.to_string().contains("multiple of 2 MiB"), "{err}");
    }

    #[test]
    fn config_gives_start_and_size_and_the_mapping_shows_the_file() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(2 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(file.as_file(), b"pmem!", 4096).unwrap();
        let (dev, map) = Pmem::open(file.path(), false, 0x1_0000_0000).unwrap();
        let mut cfg = [0u8; 16];
        dev.read_config(0, &mut cfg);
        assert_eq!(
            u64::from_le_bytes(cfg[..8].try_into().unwrap()),
            0x1_0000_0000
        );
        assert_eq!(u64::from_le_bytes(cfg[8..].try_into().unwrap()), 2 << 20);
        // SAFETY: reading 5 bytes inside the 2 MiB mapping.
        let seen = unsafe { std::slice::from_raw_parts((map.host_addr + 4096) as *const u8, 5) };
        assert_eq!(seen, b"pmem!");
        assert!(!map.read_only);
    }
}
