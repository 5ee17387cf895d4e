//! virtio-rng (virtio 1.2, section 5.4): one queue of device-writable buffers that the device
//! fills from the host's getrandom(2). The smallest complete virtio device; it also gives the
//! payload tests a real device to probe behind each virtio-mmio window.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::DEVICE_ID_RNG;
use super::single_queue::{QueueHandler, SingleQueueDevice};

const QUEUE_SIZE: u16 = 256;
/// The most we fill per request, so one guest request cannot make us allocate without bound.
const MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// The entropy device.
pub type Rng = SingleQueueDevice<Entropy>;

/// What virtio-rng does with its requests: fill them from getrandom(2).
pub struct Entropy;

impl Rng {
    pub fn new() -> Self {
        SingleQueueDevice::with_handler(Entropy)
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueHandler for Entropy {
    const DEVICE_TYPE: u32 = DEVICE_ID_RNG;
    const NAME: &'static str = "virtio-rng";
    const QUEUE_SIZE: u16 = QUEUE_SIZE;

    fn serve(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        process_queue(mem, queue)
    }
}

fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live mutable byte slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(())
}

/// Serves every available request; returns whether any was served.
fn process_queue(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut written = 0u32;
        for desc in chain {
            if !desc.is_write_only() {
                continue;
            }
            let len = desc.len().min(MAX_REQUEST_BYTES - written);
            let mut buf = vec![0u8; len as usize];
            if let Err(e) = fill_random(&mut buf) {
                tracing::warn!("virtio-rng: getrandom failed: {e}");
                break;
            }
            // A buffer outside guest memory ends this request with what was written.
            if mem.write_slice(&buf, desc.addr()).is_err() {
                tracing::debug!(
                    addr = desc.addr().0,
                    len,
                    "virtio-rng: buffer outside guest memory"
                );
                break;
            }
            written += len;
            if written >= MAX_REQUEST_BYTES {
                break;
            }
        }
        if let Err(e) = queue.add_used(mem, head, written) {
            tracing::warn!("virtio-rng: cannot return buffer {head}: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}
