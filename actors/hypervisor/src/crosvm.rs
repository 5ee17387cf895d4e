//! The `crosvm` backend: our own VMM (`crosvm run`, vmm/) on KVM. Disks become virtio-blk
//! devices with their serials, the vsock device runs in the VMM process, the console goes
//! through a pipe into the spec's bounded log (see [`crate::console`]), and the VMM listens on a control socket in the run directory. Only for
//! hosts whose /dev/kvm can boot a stock kernel (`crosvm probe`); elsewhere the `qemu` backend
//! runs VMs.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::console::{ConsolePipe, MAX_CONSOLE_BYTES};
use crate::fsutil::ensure_private_dir;
use crate::handle::{OwnedChild, VmControl, VmHandle, die_with_parent_thread};
use crate::qemu::{
    remove_console_logs, remove_stale_socket, resolve_binary, wait_first_output, wait_listening,
};
use crate::{Hypervisor, HypervisorError, VmSpec};

/// How long `crosvm run` may take to set the VM up and listen on its control socket.
const CONTROL_LISTEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs VMs with `crosvm run`.
#[derive(Debug, Clone)]
pub struct CrosvmBackend {
    /// The `crosvm` binary (a bare name is looked up in PATH).
    pub crosvm: PathBuf,
    /// As [`crate::QemuBackend::kill_with_parent_thread`].
    pub kill_with_parent_thread: bool,
}

impl CrosvmBackend {
    pub fn new(crosvm: impl Into<PathBuf>) -> Self {
        CrosvmBackend {
            crosvm: crosvm.into(),
            kill_with_parent_thread: false,
        }
    }

    /// The control socket of the VM `spec` describes.
    pub fn control_socket(spec: &VmSpec) -> PathBuf {
        spec.run_dir.join("crosvm.sock")
    }

    /// The `crosvm run` arguments for `spec`, writing the guest console to `console_path`.
    pub fn args(&self, spec: &VmSpec, console_path: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "run".into(),
            "--cpus".into(),
            spec.cpus.to_string().into(),
            "--mem".into(),
            spec.mem_mib.to_string().into(),
            "--kernel".into(),
            spec.kernel.clone().into(),
        ];
        if let Some(initrd) = &spec.initrd {
            args.extend(["--initrd".into(), initrd.clone().into()]);
        }
        args.extend(["--params".into(), spec.cmdline.clone().into()]);
        for disk in &spec.disks {
            let mut value: OsString = disk.path.clone().into();
            if disk.read_only {
                value.push(",ro=true");
            }
            if let Some(serial) = &disk.serial {
                value.push(format!(",serial={serial}"));
            }
            args.extend(["--block".into(), value]);
        }
        if let Some(vsock) = &spec.vsock {
            args.extend([
                "--cid".into(),
                vsock.guest_cid.to_string().into(),
                "--vsock-uds".into(),
                vsock.uds_path.clone().into(),
            ]);
        }
        if let Some(net) = &spec.net {
            let mut value = format!("tap={}", net.tap);
            if let Some(mac) = &net.mac {
                value.push_str(&format!(",mac={mac}"));
            }
            args.extend(["--net".into(), value.into()]);
        }
        args.extend([
            "--serial-log".into(),
            console_path.into(),
            "--socket".into(),
            Self::control_socket(spec).into(),
        ]);
        args
    }

    fn validate(&self, spec: &VmSpec) -> Result<(), HypervisorError> {
        let bad = |reason: String| HypervisorError::BadSpec {
            vm: spec.name.clone(),
            reason,
        };
        if spec.cpus == 0 || spec.cpus > 254 {
            return Err(bad(format!("{} cpus is outside 1..=254", spec.cpus)));
        }
        for file in std::iter::once(&spec.kernel)
            .chain(spec.initrd.iter())
            .chain(spec.disks.iter().map(|d| &d.path))
        {
            if !file.is_file() {
                return Err(bad(format!("'{}' is not a file", file.display())));
            }
        }
        // `crosvm run` takes disk options after commas.
        for disk in &spec.disks {
            if disk.path.to_string_lossy().contains(',') {
                return Err(bad(format!(
                    "disk path '{}' contains a comma",
                    disk.path.display()
                )));
            }
        }
        Ok(())
    }
}

impl Hypervisor for CrosvmBackend {
    fn name(&self) -> &'static str {
        "crosvm"
    }

    fn start(&self, spec: &VmSpec) -> Result<VmHandle, HypervisorError> {
        self.validate(spec)?;
        let crosvm =
            resolve_binary(&self.crosvm).ok_or_else(|| HypervisorError::BinaryNotFound {
                what: "crosvm",
                path: self.crosvm.clone(),
                hint: " (build it: cargo build -p cros-tools --bin crosvm)",
            })?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HypervisorError::Io { path, source }
        };
        ensure_private_dir(&spec.run_dir).map_err(io(&spec.run_dir))?;
        remove_console_logs(&spec.console_log)?;
        remove_stale_socket(&Self::control_socket(spec))?;
        if let Some(vsock) = &spec.vsock {
            remove_stale_socket(&vsock.uds_path)?;
        }
        let log = spec.run_dir.join("crosvm.log");
        let out = fs::File::create(&log).map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        // The VMM appends the console to the pipe (`--serial-log /dev/fd/N`); the logger keeps
        // the log bounded, as for QEMU.
        let console = ConsolePipe::new().map_err(io(&spec.console_log))?;
        let args = self.args(spec, &console.vmm_path());
        tracing::info!(vm = %spec.name, "starting {} {:?}", crosvm.display(), args);
        let mut cmd = Command::new(&crosvm);
        cmd.args(&args).stdin(Stdio::null()).stdout(out).stderr(err);
        console.pass_to(&mut cmd);
        if self.kill_with_parent_thread {
            die_with_parent_thread(&mut cmd);
        }
        let child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
            what: "crosvm",
            path: crosvm.clone(),
            source,
        })?;
        let mut vmm = OwnedChild {
            what: "crosvm",
            child,
            log,
        };
        let logger = match console.start_logging(&spec.console_log, MAX_CONSOLE_BYTES) {
            Ok(logger) => logger,
            Err(e) => {
                let _ = vmm.child.kill();
                let _ = vmm.child.wait();
                return Err(io(&spec.console_log)(e));
            }
        };
        let mut handle =
            VmHandle::new(vmm, Vec::new(), spec.console_log.clone(), 1).with_console(logger);
        // Whoever sees the VM running may control it at once: the control socket comes first.
        wait_listening(
            handle.vmm_mut(),
            &Self::control_socket(spec),
            CONTROL_LISTEN_TIMEOUT,
        )?;
        let mut handle = handle.with_control(VmControl::Crosvm {
            crosvm: crosvm.clone(),
            socket: Self::control_socket(spec),
        });
        wait_first_output("crosvm", &mut handle, spec, 1)?;
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskSpec, VsockSpec};

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn args_carry_every_part_of_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new("termina", "/k/vmlinuz", dir.path());
        spec.initrd = Some("/k/initrd".into());
        spec.cmdline = "console=ttyS0 root=/dev/vda".into();
        spec.mem_mib = 1024;
        spec.cpus = 2;
        spec.disks = vec![
            DiskSpec {
                path: "/img/rootfs.img".into(),
                read_only: true,
                serial: Some("rootfs".into()),
                online_resize: false,
            },
            DiskSpec {
                path: "/img/stateful.img".into(),
                read_only: false,
                serial: None,
                online_resize: false,
            },
        ];
        spec.vsock = Some(VsockSpec {
            guest_cid: 3,
            uds_path: dir.path().join("vsock.sock"),
        });
        let args = strings(&CrosvmBackend::new("crosvm").args(&spec, Path::new("/dev/fd/9")));
        let sock = dir.path().join("crosvm.sock");
        let want: Vec<String> = [
            "run",
            "--cpus",
            "2",
            "--mem",
            "1024",
            "--kernel",
            "/k/vmlinuz",
            "--initrd",
            "/k/initrd",
            "--params",
            "console=ttyS0 root=/dev/vda",
            "--block",
            "/img/rootfs.img,ro=true,serial=rootfs",
            "--block",
            "/img/stateful.img",
            "--cid",
            "3",
            "--vsock-uds",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            dir.path().join("vsock.sock").display().to_string(),
            "--serial-log".into(),
            "/dev/fd/9".into(),
            "--socket".into(),
            sock.display().to_string(),
        ])
        .collect();
        assert_eq!(args, want);
    }

    #[test]
    fn bad_specs_are_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let backend = CrosvmBackend::new("/nonexistent/crosvm");
        let spec = VmSpec::new("t", dir.path().join("no-kernel"), dir.path());
        let err = backend.start(&spec).unwrap_err();
        assert!(err.to_string().contains("no-kernel"), "{err}");
        let kernel = dir.path().join("kernel");
        fs::write(&kernel, b"x").unwrap();
        let spec = VmSpec::new("t", &kernel, dir.path());
        let err = backend.start(&spec).unwrap_err();
        assert!(
            matches!(err, HypervisorError::BinaryNotFound { .. }),
            "{err}"
        );
    }
}
