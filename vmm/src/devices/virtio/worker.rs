//! The thread a virtio device runs on: an event loop over its queue eventfds (registered with
//! KVM as ioeventfds on the QueueNotify register, so a guest notification never leaves the
//! kernel on the vCPU thread) and a stop event. The device is the loop's only state; the vCPU
//! side (the virtio-mmio transport) reaches it only through its configuration calls.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;
use crate::seccomp::{self, ThreadKind};
use seccompiler::BpfProgram;

/// A device shared by its transport (vCPU threads) and its worker thread.
pub type SharedVirtioDevice = Arc<Mutex<dyn VirtioDevice>>;

/// Locks a device even if a previous holder panicked, so one bad request does not wedge the
/// VM's other threads.
pub fn lock_device(
    device: &SharedVirtioDevice,
) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running device thread.
pub struct DeviceWorker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl DeviceWorker {
    /// Starts the thread `name` serving `device`: when `queue_events[i]` fires, the device
    /// processes queue i.
    pub fn spawn(
        name: String,
        device: SharedVirtioDevice,
        queue_events: Vec<EventFd>,
        seccomp: Option<BpfProgram>,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(0)?;
        let epoll = Epoll::new()?;
        let stop_token = queue_events.len() as u64;
        for (i, evt) in queue_events.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(filter) = &seccomp
                && let Err(e) = seccomp::install(ThreadKind::Device, filter)
            {
                // Serving the guest unfiltered is not an option; the device stays silent
                // and the error says why.
                tracing::error!(
                    "virtio device thread not started: {e}: {:?}",
                    std::error::Error::source(&e)
                );
                return;
            }
            event_loop(&epoll, &device, &queue_events, stop_token)
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            if thread.join().is_err() {
                tracing::error!("virtio device thread panicked");
            }
        }
    }
}

impl Drop for DeviceWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn event_loop(epoll: &Epoll, device: &SharedVirtioDevice, queue_events: &[EventFd], stop: u64) {
    let mut events = vec![EpollEvent::default(); queue_events.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio device thread: epoll failed, device stops: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let token = event.data();
            if token == stop {
                return;
            }
            let Some(evt) = queue_events.get(token as usize) else {
                continue;
            };
            // Reading resets the counter; several notifications coalesce into one pass.
            if evt.read().is_ok() {
                lock_device(device).queue_notify(token as u32);
            }
        }
    }
}
