//! A stand-in for the hypervisor process, for isolated replay (`crosmsg trace replay --actor
//! concierge`): the one thing such a replay cannot take from the trace is the VMM process that
//! concierge spawns and watches, so it gets this instead. No VM runs.
//!
//! [`StandInBackend::start`] spawns a placeholder process (`/bin/sh` waiting on its stdin), so
//! concierge's watcher thread owns and waits on a real child exactly as it does a QEMU or crosvm
//! process. The process "powers off" (exits 0) when [`StandInBackend::power_off`] is called for
//! its VM — replay calls it when the trace shows the guest's maitred acknowledging Shutdown, as
//! the real guest powers off then — or when concierge presses the power button
//! ([`crate::VmHandle::request_shutdown`]). A SIGTERM/SIGKILL from concierge ends it as it
//! would end a VMM.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use crate::handle::{OwnedChild, VmControl, die_with_parent_thread};
use crate::{Hypervisor, HypervisorError, VmHandle, VmSpec};

/// The placeholder: exits 0 once its stdin closes.
const PLACEHOLDER: &str = "read _; exit 0";

/// The stdin of each VM's placeholder process, by VM name: closing it powers that VM off.
pub(crate) type PowerSwitches = Arc<Mutex<HashMap<String, ChildStdin>>>;

pub struct StandInBackend {
    /// The backend name VMs report (`VmInfo.hypervisor`): the recording's, which it stands in
    /// for.
    name: &'static str,
    switches: PowerSwitches,
}

impl StandInBackend {
    /// A stand-in that answers to `name` ("qemu", "crosvm").
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            switches: PowerSwitches::default(),
        }
    }

    /// Powers VM `vm` off: its placeholder exits 0. False when no such VM runs.
    pub fn power_off(&self, vm: &str) -> bool {
        power_off(&self.switches, vm)
    }
}

pub(crate) fn power_off(switches: &PowerSwitches, vm: &str) -> bool {
    switches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(vm)
        .is_some()
}

impl Hypervisor for StandInBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(&self, spec: &VmSpec) -> Result<VmHandle, HypervisorError> {
        std::fs::create_dir_all(&spec.run_dir).map_err(|source| HypervisorError::Io {
            path: spec.run_dir.clone(),
            source,
        })?;
        let sh = PathBuf::from("/bin/sh");
        let mut cmd = Command::new(&sh);
        cmd.args(["-c", PLACEHOLDER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent_thread(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
            what: "the stand-in hypervisor",
            path: sh,
            source,
        })?;
        if let Some(stdin) = child.stdin.take() {
            self.switches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(spec.name.clone(), stdin);
        }
        let vmm = OwnedChild {
            what: "stand-in hypervisor",
            child,
            log: spec.run_dir.join("stand-in.log"),
        };
        Ok(
            VmHandle::new(vmm, Vec::new(), spec.console_log.clone(), 1).with_control(
                VmControl::StandIn {
                    switches: self.switches.clone(),
                    vm: spec.name.clone(),
                },
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_placeholder_runs_until_powered_off_and_then_exits_0() {
        let dir = tempfile::tempdir().unwrap();
        let backend = StandInBackend::new("qemu");
        let spec = VmSpec::new("termina", "/nonexistent/kernel", dir.path());
        let mut vm = backend.start(&spec).unwrap();
        assert_eq!(vm.wait_timeout(Duration::from_millis(200)).unwrap(), None);
        assert!(backend.power_off("termina"));
        assert!(!backend.power_off("termina"), "already off");
        let status = vm.wait_timeout(Duration::from_secs(5)).unwrap();
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }

    #[test]
    fn the_power_button_powers_it_off_too() {
        let dir = tempfile::tempdir().unwrap();
        let backend = StandInBackend::new("crosvm");
        assert_eq!(backend.name(), "crosvm");
        let spec = VmSpec::new("t", "/nonexistent/kernel", dir.path());
        let mut vm = backend.start(&spec).unwrap();
        vm.request_shutdown().unwrap();
        let status = vm.wait_timeout(Duration::from_secs(5)).unwrap();
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }
}
