//! The one thread kind every virtio device runs on: an event loop over its queue eventfds
//! (registered with KVM as ioeventfds on the QueueNotify register, so a guest notification
//! never leaves the kernel on the vCPU thread), the device's own descriptors
//! ([`VirtioDevice::event_fds`]: vsock's host sockets) and a stop event. The device is the
//! loop's only state; the vCPU side (the virtio-mmio transport) reaches it only through its
//! configuration calls. A device that fails, or panics, is reset and reported as a
//! [`DeviceFailure`] (the VMM then asks the driver to reset it); the VMM keeps running.

use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceError, VirtioDevice};
use crate::event_channel::EventSender;
use crate::thread::{self, ThreadSpec, panic_message};

/// A device shared by its transport (vCPU threads) and its worker thread.
pub type SharedVirtioDevice = Arc<Mutex<dyn VirtioDevice>>;

/// Locks a device even if a previous holder panicked, so one bad request does not wedge the
/// VM's other threads.
pub fn lock_device(
    device: &SharedVirtioDevice,
) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

/// A device stopped serving its queues: which one (the VMM's index), and why.
#[derive(Debug, Clone)]
pub struct DeviceFailure {
    pub device: usize,
    pub reason: String,
}

/// A running device thread.
pub struct DeviceWorker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// Where a device's failures go: the VMM's device-error channel, tagged with its index.
struct FailureReport {
    device: usize,
    failures: EventSender<DeviceFailure>,
}

impl FailureReport {
    fn send(&self, reason: String) {
        self.failures.send(DeviceFailure {
            device: self.device,
            reason,
        });
    }
}

impl DeviceWorker {
    /// Starts the thread `spec` serving `device` (index `index` in the VMM's failure
    /// reports): when `queue_events[i]` fires, the device processes queue i.
    pub fn spawn(
        spec: ThreadSpec,
        device: SharedVirtioDevice,
        queue_events: Vec<EventFd>,
        failures: EventSender<DeviceFailure>,
        index: usize,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(0)?;
        let epoll = Epoll::new()?;
        let (extra, edge) = {
            let device = lock_device(&device);
            (device.event_fds(), device.event_fds_edge_triggered())
        };
        let extra_set = if edge {
            EventSet::IN | EventSet::EDGE_TRIGGERED
        } else {
            EventSet::IN
        };
        let fds = queue_events
            .iter()
            .map(|e| (e.as_raw_fd(), EventSet::IN))
            .chain(extra.into_iter().map(|fd| (fd, extra_set)))
            .chain([(stop.as_raw_fd(), EventSet::IN)]);
        for (token, (fd, set)) in fds.enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(set, token as u64),
            )?;
        }
        let report = FailureReport {
            device: index,
            failures,
        };
        let on_failure = {
            let report = FailureReport {
                device: index,
                failures: report.failures.clone(),
            };
            move |reason| report.send(reason)
        };
        let thread = thread::spawn(spec, on_failure, move || {
            event_loop(&epoll, &device, &queue_events, &report)
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
            let _ = thread.join();
        }
    }
}

impl Drop for DeviceWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What one epoll token asks of the device.
fn dispatch(
    device: &SharedVirtioDevice,
    queue_events: &[EventFd],
    token: usize,
) -> Result<(), DeviceError> {
    match queue_events.get(token) {
        // Reading resets the counter; several notifications coalesce into one pass.
        Some(evt) if evt.read().is_ok() => lock_device(device).queue_notify(token as u32),
        Some(_) => Ok(()),
        None => lock_device(device).event_fd_ready(token - queue_events.len()),
    }
}

fn event_loop(
    epoll: &Epoll,
    device: &SharedVirtioDevice,
    queue_events: &[EventFd],
    report: &FailureReport,
) {
    let stop = queue_events.len() + lock_device(device).event_fds().len();
    let mut events = vec![EpollEvent::default(); stop + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                report.send(format!("epoll failed, the device thread ends: {e}"));
                return;
            }
        };
        for event in &events[..n] {
            let token = event.data() as usize;
            if token == stop {
                return;
            }
            let reason =
                match catch_unwind(AssertUnwindSafe(|| dispatch(device, queue_events, token))) {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(panic) => format!("panicked: {}", panic_message(&*panic)),
                };
            let mut device = lock_device(device);
            tracing::error!("{}: {reason}; the device is reset", device.name());
            device.reset();
            report.send(format!("{}: {reason}", device.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, Activation};
    use crate::event_channel::event_channel;
    use crate::seccomp::{Filters, ThreadKind};

    /// A device whose queue handler panics, as a bug in a device model would.
    #[derive(Default)]
    struct Panics {
        resets: usize,
    }

    impl VirtioDevice for Panics {
        fn device_type(&self) -> u32 {
            0
        }
        fn name(&self) -> &'static str {
            "test-panics"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn activate(&mut self, _: Activation) -> Result<(), ActivateError> {
            Ok(())
        }
        fn queue_notify(&mut self, _: u32) -> Result<(), DeviceError> {
            panic!("bad descriptor arithmetic");
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    #[test]
    fn a_panicking_device_is_reset_and_reported_and_its_thread_serves_on() {
        let device = Arc::new(Mutex::new(Panics::default()));
        let kick = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let (failures, failed) = event_channel().unwrap();
        let spec = ThreadSpec::new("test-panics", ThreadKind::Device, &Filters::default());
        let shared: SharedVirtioDevice = device.clone();
        let worker =
            DeviceWorker::spawn(spec, shared, vec![kick.try_clone().unwrap()], failures, 7)
                .unwrap();
        for round in 1..=2 {
            kick.write(1).unwrap();
            let failure = loop {
                if let Some(f) = failed.drain().pop() {
                    break f;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            };
            assert_eq!(failure.device, 7);
            assert!(
                failure.reason.contains("bad descriptor arithmetic"),
                "{failure:?}"
            );
            let resets = device.lock().unwrap_or_else(|p| p.into_inner()).resets;
            assert_eq!(resets, round, "the device was reset after each panic");
        }
        worker.stop();
    }
}
