//! Choosing the hypervisor backend (`crosd --hypervisor`).

use std::path::PathBuf;
use std::sync::Arc;

use cros_hypervisor::{CrosvmBackend, Hypervisor, QemuBackend};
use cros_messages::CrosError;

use crate::config::{HypervisorConfig, HypervisorKind};

/// Where crosd's helper binaries are: the configured directory, else the directory of this
/// program (for a test binary in target/<profile>/deps, the profile directory above it).
pub fn bin_dir(config: &HypervisorConfig) -> PathBuf {
    if let Some(d) = &config.bin_dir {
        return d.clone();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        return dir.parent().map(PathBuf::from).unwrap_or(dir);
    }
    dir
}

/// The backend VMs are booted with, or why none can be.
pub fn select(config: &HypervisorConfig) -> Result<Arc<dyn Hypervisor>, CrosError> {
    if let Some(backend) = &config.backend {
        return Ok(backend.clone());
    }
    let crosvm = bin_dir(config).join("crosvm");
    match config.kind {
        // `auto` stays QEMU until our VMM has booted termina on hardware KVM; `crosvm` is
        // chosen explicitly, and only where `crosvm probe` passes.
        // Each VM is started from its watcher thread, which lives as long as the VM
        // (VmWatcher::start): its processes can die with that thread, so a crosd killed outright
        // leaves no VM behind.
        HypervisorKind::Auto | HypervisorKind::Qemu => Ok(Arc::new(QemuBackend {
            kill_with_parent_thread: true,
            ..QemuBackend::new(crosvm)
        })),
        HypervisorKind::Crosvm => match crosvm_unavailable(&crosvm) {
            None => Ok(Arc::new(CrosvmBackend {
                kill_with_parent_thread: true,
                ..CrosvmBackend::new(crosvm)
            })),
            Some(reason) => Err(CrosError::unsupported(reason)),
        },
    }
}

/// Why `--hypervisor crosvm` cannot boot VMs here, from `crosvm probe` (which runs a stock
/// kernel's early-boot instructions on this host's /dev/kvm in a separate process); None when
/// it can.
fn crosvm_unavailable(crosvm: &std::path::Path) -> Option<String> {
    let probe = std::process::Command::new(crosvm).arg("probe").output();
    match probe {
        Err(e) => Some(format!(
            "the crosvm backend cannot be checked: cannot run {} probe: {e}; use --hypervisor qemu",
            crosvm.display()
        )),
        Ok(out) if out.status.success() => None,
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let reason = stderr
                .lines()
                .rev()
                .find(|l| l.contains("error"))
                .map(|l| l.trim_start_matches("crosvm: error: crosvm probe: ").trim())
                .unwrap_or("crosvm probe failed without a reason");
            Some(format!(
                "the crosvm backend cannot boot a Linux guest on this host: {reason}; use \
                 --hypervisor qemu (or auto)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::ErrorKind;

    #[test]
    fn crosvm_backend_without_the_binary_names_it() {
        let config = HypervisorConfig {
            kind: HypervisorKind::Crosvm,
            bin_dir: Some("/nonexistent/bin".into()),
            backend: None,
        };
        let Err(err) = select(&config) else {
            panic!("the crosvm backend cannot be selected yet");
        };
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(
            err.message
                .contains("cannot run /nonexistent/bin/crosvm probe"),
            "{}",
            err.message
        );
    }
}
