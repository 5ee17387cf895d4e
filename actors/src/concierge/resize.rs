//! ResizeDiskImage: grow or shrink a VM's stateful disk.
//!
//! The order of the steps keeps the filesystem inside its disk at every moment, so a crosd
//! killed at any point leaves a disk that mounts: growing resizes the file first, then the
//! VMM's view of the disk, then the guest's filesystem; shrinking goes the other way round,
//! filesystem first. An interrupted grow is finished by maitred at the next boot (it grows the
//! filesystem to its disk); an interrupted shrink leaves the old, larger disk around a smaller
//! filesystem, which the next boot grows back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cros_messages::envelope::RESIZE_FILESYSTEM_TIMEOUT;
use cros_messages::maitred::{MaitredReply, MaitredRequest};
use cros_messages::{Body, CrosError};

use super::disk_op::{DiskOpError, Operation};
use super::vm::{VmWatcher, ask_maitred};
use crate::bus::BusHandle;

/// Disk sizes are whole 4 KiB blocks, as CreateDiskImage's.
const BLOCK: u64 = 4096;
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The running VM whose disk is resized.
#[derive(Clone)]
pub struct RunningVm {
    pub name: String,
    /// maitred@<name> is reached through the bus.
    pub bus: BusHandle,
    pub watcher: Arc<VmWatcher>,
    /// The stateful disk's place in the VM's disk list.
    pub disk_index: usize,
}

/// What a resize starts from and goes to.
#[derive(Clone)]
pub struct ResizePlan {
    pub disk: PathBuf,
    pub from: u64,
    pub to: u64,
    /// None: the VM is stopped, only the file changes (and only upwards).
    pub running: Option<RunningVm>,
}

impl ResizePlan {
    pub fn shrinks(&self) -> bool {
        self.to < self.from
    }
}

/// Refuses sizes that are not whole blocks or below the smallest disk concierge creates.
pub fn check_size(size: u64, min: u64) -> Result<(), CrosError> {
    if size < min || !size.is_multiple_of(BLOCK) {
        return Err(CrosError::invalid(format!(
            "disk size {size} must be a multiple of 4096 and at least {min} bytes"
        )));
    }
    Ok(())
}

/// The smallest size the VM's filesystem can shrink to, from maitred.
pub async fn minimum_size(vm: &RunningVm, deadline: Duration) -> Result<u64, CrosError> {
    match ask_maitred(
        &vm.bus,
        &vm.name,
        MaitredRequest::GetMinimumSize {},
        deadline,
    )
    .await?
    {
        MaitredReply::MinimumSize { bytes } => Ok(bytes),
        other => Err(CrosError::internal(format!(
            "maitred answered GetMinimumSize with {}",
            Body::MaitredReply(other).type_name()
        ))),
    }
}

/// Refuses a shrink below what the filesystem can shrink to, naming the minimum.
pub async fn check_shrink(plan: &ResizePlan) -> Result<(), CrosError> {
    let Some(vm) = plan.running.as_ref().filter(|_| plan.shrinks()) else {
        return Ok(());
    };
    let min = minimum_size(vm, QUERY_TIMEOUT).await?;
    if plan.to < min {
        return Err(CrosError::invalid(format!(
            "cannot shrink the disk of {:?} to {} bytes: its filesystem needs at least {min} bytes",
            vm.name, plan.to
        )));
    }
    Ok(())
}

fn step_error(step: &'static str) -> impl FnOnce(String) -> DiskOpError {
    move |reason| DiskOpError::Step { step, reason }
}

fn set_file_size(disk: &Path, size: u64) -> Result<(), DiskOpError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(|source| DiskOpError::Io {
            what: "open",
            path: disk.to_owned(),
            source,
        })?;
    // ftruncate is atomic: the file has the old size or the new one, never anything between.
    file.set_len(size).map_err(|source| DiskOpError::Io {
        what: "resize",
        path: disk.to_owned(),
        source,
    })?;
    file.sync_all().map_err(|source| DiskOpError::Io {
        what: "sync",
        path: disk.to_owned(),
        source,
    })
}

async fn resize_filesystem(vm: &RunningVm, size: u64) -> Result<(), DiskOpError> {
    let req = MaitredRequest::ResizeFilesystem { size };
    ask_maitred(&vm.bus, &vm.name, req, RESIZE_FILESYSTEM_TIMEOUT)
        .await
        .map(drop)
        .map_err(|e| DiskOpError::Step {
            step: "resizing the filesystem in the guest",
            reason: e.message,
        })
}

/// Carries the plan out, reporting progress by step.
pub async fn run(op: &Operation, plan: ResizePlan) -> Result<(), DiskOpError> {
    const STEPS: u64 = 3;
    let Some(vm) = plan.running.as_ref() else {
        // A stopped VM: only a grow gets here; maitred grows the filesystem at its next boot.
        set_file_size(&plan.disk, plan.to)?;
        op.progress(STEPS, STEPS);
        return Ok(());
    };
    if plan.shrinks() {
        // Size 0 would mean "max" to maitred; the plan's size is checked to be >= 1 GiB.
        resize_filesystem(vm, plan.to).await?;
        op.progress(1, STEPS);
        vm.watcher
            .resize_disk(vm.disk_index, plan.to)
            .await
            .map_err(step_error("shrinking the VM's disk device"))?;
        op.progress(2, STEPS);
        set_file_size(&plan.disk, plan.to)?;
    } else {
        set_file_size(&plan.disk, plan.to)?;
        op.progress(1, STEPS);
        if let Err(e) = vm.watcher.resize_disk(vm.disk_index, plan.to).await {
            // The guest never saw the larger disk: give the file its old size back.
            set_file_size(&plan.disk, plan.from)?;
            return Err(step_error("growing the VM's disk device")(e));
        }
        op.progress(2, STEPS);
        // 0: as large as the device.
        resize_filesystem(vm, 0).await?;
    }
    op.progress(STEPS, STEPS);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_whole_blocks_above_the_minimum() {
        check_size(2 << 30, 1 << 30).unwrap();
        let err = check_size((2 << 30) + 1, 1 << 30).unwrap_err();
        assert!(err.message.contains("multiple of 4096"), "{err}");
        let err = check_size(4096, 1 << 30).unwrap_err();
        assert!(err.message.contains("at least 1073741824"), "{err}");
    }
}
