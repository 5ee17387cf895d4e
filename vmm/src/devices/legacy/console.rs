//! The interactive console: the VMM's stdin forwarded to the guest's COM1 receive FIFO.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use super::serial::SerialDevice;
use crate::thread::wait_readable;

/// Whether `evt` has been written (without waiting or consuming it).
fn is_signalled(evt: &EventFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { libc::poll(&mut fd, 1, 0) == 1 }
}

/// Copies stdin into the guest's receive FIFO until end of input or `stop`, waiting for the
/// guest to drain the FIFO when it is full.
pub fn forward_stdin(serial: &Mutex<SerialDevice>, stop: &EventFd) {
    let mut buf = [0u8; 64];
    while wait_readable(0, stop) {
        // SAFETY: reading into a buffer of its own length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return; // end of input, or stdin is unusable
        }
        let mut pending = &buf[..n as usize];
        while !pending.is_empty() {
            let taken = serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue_input(pending);
            pending = &pending[taken..];
            if taken == 0 {
                // The guest has not read the FIFO yet.
                std::thread::sleep(std::time::Duration::from_millis(5));
                if is_signalled(stop) {
                    return;
                }
            }
        }
    }
}
