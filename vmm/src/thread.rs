//! The one way the VMM starts a thread (vCPUs, devices, the control socket, the console):
//! named, confined by its kind's seccomp filter before it runs any of its work, and with a
//! panic caught and reported (a log line and the caller's `on_failure`, which resets the
//! device or ends the VM cleanly) instead of aborting the VMM.

use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::{self, Filters, ThreadKind};

/// What a thread is: its name (as `ps -T` shows it), its kind and, unless seccomp is off,
/// the filter of that kind.
pub struct ThreadSpec {
    pub name: String,
    pub kind: ThreadKind,
    pub filter: Option<BpfProgram>,
}

impl ThreadSpec {
    /// A thread `name` of `kind`, under that kind's filter from `filters`.
    pub fn new(name: impl Into<String>, kind: ThreadKind, filters: &Filters) -> Self {
        Self {
            name: name.into(),
            kind,
            filter: filters.get(kind),
        }
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Starts `body` on a new thread per `spec`. When the filter cannot be installed (the thread
/// must not serve the guest unconfined) or `body` panics, the thread logs why and calls
/// `on_failure` with the reason.
pub fn spawn<F, E>(spec: ThreadSpec, on_failure: E, body: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
    E: FnOnce(String) + Send + 'static,
{
    let ThreadSpec { name, kind, filter } = spec;
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Some(filter) = &filter
                && let Err(e) = seccomp::install(kind, filter)
            {
                let reason = format!("{e}: {:?}", std::error::Error::source(&e));
                tracing::error!(thread = %name, "thread not started: {reason}");
                on_failure(reason);
                return;
            }
            if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
                let reason = format!("thread {name} panicked: {}", panic_message(&*panic));
                tracing::error!("{reason}");
                on_failure(reason);
            }
        })
}

/// For a thread that blocks on one descriptor: waits until `fd` is ready (readable, or hung
/// up) or `stop` is signalled; false once `stop` fires or polling fails.
pub fn wait_readable(fd: RawFd, stop: &EventFd) -> bool {
    let mut fds = [fd, stop.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        return fds[1].revents == 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_named_and_reported() {
        let (tx, rx) = std::sync::mpsc::channel();
        let spec = ThreadSpec {
            name: "test-panics".into(),
            kind: ThreadKind::Helper,
            filter: None,
        };
        let handle = spawn(
            spec,
            move |reason| tx.send(reason).unwrap(),
            || panic!("device model bug"),
        )
        .unwrap();
        assert!(handle.join().is_ok(), "the panic left the thread");
        let reason = rx.recv().unwrap();
        assert!(reason.contains("test-panics"), "{reason}");
        assert!(reason.contains("device model bug"), "{reason}");
    }
}
