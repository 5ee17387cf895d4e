//! A record of each running VM in its runtime directory (`RUN/vm.<cid>/vm.json`), so that a
//! concierge started after crosd was killed outright (SIGKILL, OOM) finds the VMs that died with
//! it — their processes die with the crosd that started them — and reports them as stopped with
//! the reason, instead of forgetting them silently. The disk is the VM's own stateful file,
//! which nothing here touches: the next start boots it as it was left.

use std::path::Path;

use cros_hypervisor::fsutil::write_atomically;
use cros_messages::concierge::{VmInfo, VmStatus};
use serde::{Deserialize, Serialize};

use super::vm::VmExit;

const RECORD: &str = "vm.json";
/// A record is a few hundred bytes; anything bigger is not ours.
const MAX_RECORD: u64 = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct VmRecord {
    name: String,
    cid: u32,
    pid: u32,
    hypervisor: String,
}

/// Records the running VM `info` in `run_dir` (written whole, then renamed into place).
pub fn write(run_dir: &Path, info: &VmInfo) -> std::io::Result<()> {
    let record = VmRecord {
        name: info.name.clone(),
        cid: info.cid,
        pid: info.pid,
        hypervisor: info.hypervisor.clone(),
    };
    write_atomically(&run_dir.join(RECORD), &serde_json::to_vec(&record)?, 0o600)
}

/// The VMs a previous crosd left running in `run_root` (its runtime directories `vm.<cid>`):
/// each is reported stopped, a hypervisor that outlived its crosd is killed, the console log is
/// kept under `logs`, and the runtime directory is removed.
pub fn recover(run_root: &Path, logs: &Path) -> Vec<VmInfo> {
    let Ok(entries) = std::fs::read_dir(run_root) else {
        return Vec::new();
    };
    let mut stopped = Vec::new();
    for dir in entries.flatten().map(|e| e.path()) {
        let is_vm_dir = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vm.") && n[3..].bytes().all(|b| b.is_ascii_digit()));
        if !is_vm_dir || !dir.is_dir() {
            continue;
        }
        if let Some(info) = recover_one(&dir, logs) {
            stopped.push(info);
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a dead VM's runtime directory");
        }
    }
    stopped.sort_by(|a, b| a.name.cmp(&b.name));
    stopped
}

fn recover_one(dir: &Path, logs: &Path) -> Option<VmInfo> {
    let path = dir.join(RECORD);
    let record: VmRecord = match read_record(&path) {
        Ok(r) => r,
        Err(e) => {
            // A VM that never finished starting has no record; nothing to report.
            tracing::debug!(path = %path.display(), error = %e, "no VM record");
            return None;
        }
    };
    if !cros_messages::addr::valid_name(&record.name) {
        tracing::warn!(path = %path.display(), "VM record with a bad name ignored");
        return None;
    }
    let detail = match outlived(&record, dir) {
        true => {
            let pid = nix::unistd::Pid::from_raw(record.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            format!(
                "crosd stopped without stopping the VM (it was killed); its hypervisor (pid {}) \
                 outlived it and was killed now",
                record.pid
            )
        }
        false => format!(
            "crosd stopped without stopping the VM (it was killed); the VM's hypervisor (pid {}) \
             died with it",
            record.pid
        ),
    };
    if std::fs::create_dir_all(logs).is_ok() {
        let _ = std::fs::copy(
            dir.join("console.log"),
            logs.join(format!("{}.console.log", record.name)),
        );
    }
    tracing::warn!(vm = %record.name, %detail, "found a VM that died with its crosd");
    Some(VmInfo {
        name: record.name,
        owner_id: String::new(),
        cid: record.cid,
        pid: 0,
        ipv4: String::new(),
        seneschal_handle: 0,
        status: VmStatus::Stopped,
        hypervisor: record.hypervisor,
        vsock_socket: String::new(),
        detail,
    })
}

fn read_record(path: &Path) -> std::io::Result<VmRecord> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file() || meta.len() > MAX_RECORD {
        return Err(std::io::Error::other("not a VM record"));
    }
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// Whether the recorded hypervisor still runs: the pid is alive and its command line names the
/// VM's runtime directory (a recycled pid does not).
fn outlived(record: &VmRecord, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", record.pid)) else {
        return false;
    };
    let dir = dir.display().to_string();
    String::from_utf8_lossy(&cmdline).contains(dir.as_str())
}

/// How a VM found dead at start ended, for its VmStopped event.
pub fn exit_of(info: &VmInfo) -> VmExit {
    VmExit {
        success: false,
        detail: info.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str, cid: u32, pid: u32) -> VmInfo {
        VmInfo {
            name: name.into(),
            owner_id: String::new(),
            cid,
            pid,
            ipv4: String::new(),
            seneschal_handle: 0,
            status: VmStatus::Running,
            hypervisor: "qemu".into(),
            vsock_socket: String::new(),
            detail: String::new(),
        }
    }

    #[test]
    fn vms_left_by_a_killed_crosd_are_reported_stopped_and_cleaned_up() {
        let root = tempfile::tempdir().unwrap();
        let logs = root.path().join("logs");
        let run = root.path().join("run");
        // One that died with crosd (its pid is gone), with a console log.
        let dead = run.join("vm.3");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("console.log"), b"last words\n").unwrap();
        write(&dead, &running("termina", 3, u32::MAX / 2)).unwrap();
        // One whose hypervisor outlived crosd: a process naming the runtime dir.
        let alive = run.join("vm.4");
        std::fs::create_dir_all(&alive).unwrap();
        let mut orphan = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 60", alive.to_str().unwrap()])
            .spawn()
            .unwrap();
        write(&alive, &running("other", 4, orphan.id())).unwrap();
        // Garbage and a start that never finished.
        std::fs::create_dir_all(run.join("vm.5")).unwrap();
        std::fs::create_dir_all(run.join("vm.6")).unwrap();
        std::fs::write(run.join("vm.6").join(RECORD), b"{not json").unwrap();
        std::fs::write(run.join("crosd.sock"), b"").unwrap();

        let stopped = recover(&run, &logs);
        let names: Vec<&str> = stopped.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["other", "termina"]);
        assert!(stopped.iter().all(|v| v.status == VmStatus::Stopped));
        assert!(
            stopped[1].detail.contains("died with it"),
            "{}",
            stopped[1].detail
        );
        assert!(
            stopped[0].detail.contains("outlived it"),
            "{}",
            stopped[0].detail
        );
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "the orphan was killed: {status:?}");
        assert_eq!(
            std::fs::read(logs.join("termina.console.log")).unwrap(),
            b"last words\n"
        );
        for vm in ["vm.3", "vm.4", "vm.5", "vm.6"] {
            assert!(!run.join(vm).exists(), "{vm} is cleaned up");
        }
        assert!(
            run.join("crosd.sock").exists(),
            "only VM directories are touched"
        );
    }
}
