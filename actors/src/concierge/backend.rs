//! Choosing the hypervisor backend (`crosd --hypervisor`).

use std::path::PathBuf;
use std::sync::Arc;

use cros_hypervisor::{Hypervisor, QemuBackend};
use cros_messages::CrosError;

use crate::host::{HypervisorConfig, HypervisorKind};

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
    let crosvm = bin_dir(config).join("crosvm");
    match config.kind {
        // Our own VMM does not boot a Linux guest yet, so `auto` is QEMU everywhere for now.
        HypervisorKind::Auto | HypervisorKind::Qemu => Ok(Arc::new(QemuBackend::new(crosvm))),
        HypervisorKind::Crosvm => Err(CrosError::unsupported(
            "the crosvm backend cannot boot a Linux guest yet (crosd's own VMM is not built); \
             use --hypervisor qemu or auto",
        )),
    }
}
