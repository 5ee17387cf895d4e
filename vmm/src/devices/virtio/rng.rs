//! virtio-rng (virtio 1.2, section 5.4): one queue of device-writable buffers that the device
//! fills from the host's getrandom(2). The smallest complete virtio device; it also gives the
//! payload tests a real device to probe behind each virtio-mmio window.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{ActivateError, DEVICE_ID_RNG, VirtioDevice, VirtioInterrupt};

const QUEUE_SIZE: u16 = 256;
/// The most we fill per request, so one guest request cannot make us allocate without bound.
const MAX_REQUEST_BYTES: u32 = 64 * 1024;

struct Active {
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queue: Queue,
}

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    active: Option<Active>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
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

impl Active {
    /// Serves every available request; returns whether the driver must be interrupted.
    fn process_queue(&mut self) -> bool {
        let mut used_any = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
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
                if self.mem.write_slice(&buf, desc.addr()).is_err() {
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
            if let Err(e) = self.queue.add_used(&self.mem, head, written) {
                tracing::warn!("virtio-rng: cannot return buffer {head}: {e}");
                break;
            }
            used_any = true;
        }
        used_any && self.queue.needs_notification(&self.mem).unwrap_or(true)
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, len = data.len(), "virtio-rng: ignored config write");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let queue = super::single_queue(queues)?;
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if index != 0 {
            return;
        }
        if active.process_queue()
            && let Err(e) = active.interrupt.signal_used_queue()
        {
            tracing::warn!("virtio-rng: cannot raise the interrupt: {e}");
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
