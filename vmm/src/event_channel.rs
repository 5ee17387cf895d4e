//! A channel whose receiving end is an eventfd: what a VMM thread (a vCPU, the control socket,
//! a device) sends wakes the VMM's one epoll loop directly, with no thread in between that
//! only moves messages from one channel into another.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The sending end: clone it for each thread that reports.
pub struct EventSender<T> {
    tx: Sender<T>,
    ready: Arc<EventFd>,
}

impl<T> Clone for EventSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<T> EventSender<T> {
    /// Queues `event` and wakes the receiver; false once the receiver is gone.
    pub fn send(&self, event: T) -> bool {
        if self.tx.send(event).is_err() {
            return false;
        }
        // The counter cannot overflow before the loop reads it; a failed write would only
        // delay the event until the next one.
        let _ = self.ready.write(1);
        true
    }
}

/// The receiving end: poll [`EventReceiver::as_raw_fd`], then [`EventReceiver::drain`].
pub struct EventReceiver<T> {
    rx: Receiver<T>,
    ready: Arc<EventFd>,
}

impl<T> EventReceiver<T> {
    /// Every event queued so far (the eventfd is reset first, so none is missed).
    pub fn drain(&self) -> Vec<T> {
        let _ = self.ready.read();
        self.rx.try_iter().collect()
    }
}

impl<T> AsRawFd for EventReceiver<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

/// A new channel.
pub fn event_channel<T>() -> std::io::Result<(EventSender<T>, EventReceiver<T>)> {
    let ready = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        EventSender {
            tx,
            ready: ready.clone(),
        },
        EventReceiver { rx, ready },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_sent_from_another_thread_wake_the_eventfd_and_drain_in_order() {
        let (tx, rx) = event_channel().unwrap();
        std::thread::spawn(move || {
            tx.send(1);
            tx.send(2);
        })
        .join()
        .unwrap();
        let mut fd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        assert_eq!(unsafe { libc::poll(&mut fd, 1, 0) }, 1);
        assert_eq!(rx.drain(), vec![1, 2]);
        assert!(rx.drain().is_empty());
    }
}
