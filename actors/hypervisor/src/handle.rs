//! A running VM's processes, owned: dropping the handle kills them.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::HypervisorError;
use crate::console::{ConsoleLogger, read_end};
use crate::qmp;

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

/// How to ask a running VMM for something other than its death.
#[derive(Debug, Clone)]
pub(crate) enum VmControl {
    /// QEMU's QMP socket. `online_resize[i]`: disk i is QEMU's own drive `disk<i>` (the others
    /// are served by vhost-user backends and cannot be resized while the VM runs).
    Qmp {
        socket: PathBuf,
        online_resize: Vec<bool>,
    },
    /// `crosvm run`'s control socket, driven through the `crosvm` binary's control subcommands
    /// (as ChromeOS concierge drives crosvm through its control interface) so this crate does
    /// not link the VMM.
    Crosvm { crosvm: PathBuf, socket: PathBuf },
    /// Isolated replay's stand-in ([`crate::standin`]): the power button closes its switch.
    StandIn {
        switches: crate::standin::PowerSwitches,
        vm: String,
    },
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
    control: Option<VmControl>,
    /// Copies the VMM's console pipe into `console_log`; finished once the VMM has exited.
    console: Option<ConsoleLogger>,
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
            control: None,
            console: None,
        }
    }

    pub(crate) fn with_console(mut self, console: ConsoleLogger) -> Self {
        self.console = Some(console);
        self
    }

    pub(crate) fn with_control(mut self, control: VmControl) -> Self {
        self.control = Some(control);
        self
    }

    /// Asks the guest to power itself off, as a power button press would (ACPI power button:
    /// QMP `system_powerdown` under QEMU, a control-socket Stop under crosvm). Returns once the
    /// request is delivered; wait for the exit with [`VmHandle::wait_timeout`].
    pub fn request_shutdown(&mut self) -> Result<(), HypervisorError> {
        let action = "asking the guest to power off";
        match self.control.as_ref() {
            Some(VmControl::Qmp { socket, .. }) => {
                qmp::execute(socket, "system_powerdown", serde_json::json!({}))
                    .map(drop)
                    .map_err(|e| control_error(action, e))
            }
            Some(VmControl::Crosvm { crosvm, socket }) => {
                // `crosvm stop` waits for the VMM to exit; the caller waits on the VMM itself,
                // so the request runs on and is reaped by a thread of its own.
                let mut child = Command::new(crosvm)
                    .arg("stop")
                    .arg(socket)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| control_error(action, e))?;
                std::thread::spawn(move || child.wait());
                Ok(())
            }
            Some(VmControl::StandIn { switches, vm }) => {
                crate::standin::power_off(switches, vm);
                Ok(())
            }
            None => Err(control_error(action, "this VM has no control socket")),
        }
    }

    /// Tells the VMM that disk `index` (the spec's order) now has `size` bytes, after the caller
    /// resized its file; the guest sees a capacity change.
    pub fn resize_disk(&mut self, index: usize, size: u64) -> Result<(), HypervisorError> {
        let action = format!("resizing disk {index} to {size} bytes");
        match self.control.as_ref() {
            Some(VmControl::Qmp {
                socket,
                online_resize,
            }) => {
                if !online_resize.get(index).copied().unwrap_or(false) {
                    return Err(control_error(
                        &action,
                        "the disk is not served by QEMU itself, so it cannot be resized while the VM runs",
                    ));
                }
                let args = serde_json::json!({ "device": format!("disk{index}"), "size": size });
                qmp::execute(socket, "block_resize", args)
                    .map(drop)
                    .map_err(|e| control_error(&action, e))
            }
            Some(VmControl::Crosvm { crosvm, socket }) => {
                let out = Command::new(crosvm)
                    .arg("resize-disk")
                    .arg(socket)
                    .arg(index.to_string())
                    .arg(size.to_string())
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| control_error(&action, e))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(control_error(
                        &action,
                        format!(
                            "crosvm resize-disk {}: {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    ))
                }
            }
            Some(VmControl::StandIn { .. }) => Err(control_error(
                &action,
                "the replay's stand-in hypervisor has no disks",
            )),
            None => Err(control_error(&action, "this VM has no control socket")),
        }
    }

    /// The VMM process, for a backend's start-up checks.
    pub(crate) fn vmm_mut(&mut self) -> &mut OwnedChild {
        &mut self.vmm
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

    /// Runs once the VMM has exited: stops the helpers and waits until the console log holds
    /// all the VMM wrote (its end of the pipe is closed now, so that wait is short).
    fn stop_helpers(&mut self) {
        for h in &mut self.helpers {
            h.kill_and_reap();
        }
        if let Some(console) = &mut self.console {
            console.finish();
        }
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes the process `cmd` starts die (SIGKILL) when the thread that starts it ends.
pub(crate) fn die_with_parent_thread(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn control_error(action: &str, reason: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Control {
        action: action.to_string(),
        reason: reason.to_string(),
    }
}

/// The last `max` bytes of a log file, for error messages ("" when unreadable).
pub(crate) fn log_tail(path: &Path, max: usize) -> String {
    read_end(path, max as u64)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}
