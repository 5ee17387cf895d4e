//! A running VM's processes, owned: dropping the handle kills them.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// One process of a VM, with the name used in logs and errors.
#[derive(Debug)]
pub(crate) struct OwnedChild {
    pub(crate) what: &'static str,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl OwnedChild {
    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // ESRCH (already reaped) is fine: the process is gone either way.
        let _ = nix::sys::signal::kill(pid, sig);
    }

    fn kill_and_reap(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The processes of one running VM: the VMM itself (QEMU, crosvm) and its helpers (vhost-user
/// backends). The VMM's exit is the VM's exit; helpers are stopped with it.
#[derive(Debug)]
pub struct VmHandle {
    vmm: OwnedChild,
    helpers: Vec<OwnedChild>,
    console_log: PathBuf,
    start_attempts: u32,
    exit: Option<ExitStatus>,
}

impl VmHandle {
    pub(crate) fn new(
        vmm: OwnedChild,
        helpers: Vec<OwnedChild>,
        console_log: PathBuf,
        start_attempts: u32,
    ) -> Self {
        VmHandle {
            vmm,
            helpers,
            console_log,
            start_attempts,
            exit: None,
        }
    }

    /// Process id of the VMM (QEMU or crosvm).
    pub fn pid(&self) -> u32 {
        self.vmm.child.id()
    }

    /// Process ids of the helper processes (e.g. the vhost-user-vsock backend).
    pub fn helper_pids(&self) -> Vec<u32> {
        self.helpers.iter().map(|h| h.child.id()).collect()
    }

    /// The guest's serial console log.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// The VMM's own log (its stdout and stderr).
    pub fn vmm_log(&self) -> &Path {
        &self.vmm.log
    }

    /// How many starts it took to get console output (more than 1 means a stalled start was
    /// retried).
    pub fn start_attempts(&self) -> u32 {
        self.start_attempts
    }

    /// The VMM's exit status if it has exited; helpers are stopped once it has.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exit.is_none()
            && let Some(status) = self.vmm.child.try_wait()?
        {
            self.exit = Some(status);
            self.stop_helpers();
        }
        Ok(self.exit)
    }

    /// The first helper process (e.g. the vsock backend) that has exited while the VM runs: its
    /// name, status and log. A VM whose device backend died is broken even if the VMM runs on.
    pub fn exited_helper(&mut self) -> Option<(&'static str, ExitStatus, PathBuf)> {
        self.helpers
            .iter_mut()
            .find_map(|h| match h.child.try_wait() {
                Ok(Some(status)) => Some((h.what, status, h.log.clone())),
                _ => None,
            })
    }

    /// Waits for the VMM to exit (the guest powered off or crashed), then stops the helpers.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = self.vmm.child.wait()?;
        self.exit = Some(status);
        self.stop_helpers();
        Ok(status)
    }

    /// Waits up to `timeout` for the VMM to exit; `None` when it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to the VMM, SIGKILL after `grace`; then the helpers. Returns the VMM's status.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if self.exit.is_none() {
            self.vmm.signal(nix::sys::signal::Signal::SIGTERM);
            if self.wait_timeout(grace)?.is_none() {
                self.vmm.kill_and_reap();
            }
        }
        self.wait()
    }

    /// SIGKILL to every process of the VM, reaped before returning.
    pub fn kill(&mut self) {
        self.vmm.kill_and_reap();
        if let Ok(status) = self.vmm.child.wait() {
            self.exit.get_or_insert(status);
        }
        self.stop_helpers();
    }

    fn stop_helpers(&mut self) {
        for h in &mut self.helpers {
            h.kill_and_reap();
        }
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `max` bytes of a log file, for error messages ("" when unreadable).
pub(crate) fn log_tail(path: &Path, max: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
