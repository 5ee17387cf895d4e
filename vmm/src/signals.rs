//! SIGTERM and SIGINT as one of the event loop's sources: blocked on the thread that builds
//! the VM before any VMM thread starts (each inherits the mask, so none is ended by them), and
//! read from a signalfd by the loop, which stops the VM the way a Stop request does. No
//! signal handler runs and no thread waits for signals.

use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The blocked stop signals and the descriptor they arrive on.
pub struct StopSignals {
    fd: SignalFd,
    /// The calling thread's mask before, restored when the VM is gone.
    old_mask: SigSet,
}

impl StopSignals {
    /// Blocks SIGTERM and SIGINT on the calling thread and opens their signalfd.
    pub fn block() -> nix::Result<Self> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        let old_mask = set.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
        let fd = match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = old_mask.thread_set_mask();
                return Err(e);
            }
        };
        Ok(Self { fd, old_mask })
    }

    /// The signals that arrived since the last call, by number.
    pub fn take(&self) -> Vec<i32> {
        let mut signals = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            signals.push(info.ssi_signo as i32);
        }
        signals
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        // A signal that came after the loop ended is consumed here, not delivered with its
        // default action once unblocked.
        let _ = self.take();
        let _ = self.old_mask.thread_set_mask();
    }
}

/// A signal's name for log lines.
pub fn signal_name(signo: i32) -> &'static str {
    Signal::try_from(signo).map_or("a signal", Signal::as_str)
}
