//! The `qemu` backend: QEMU's microvm machine (TCG, or KVM where it can boot Linux) with guest
//! memory in a shared memfd, so a vhost-user backend process (`crosvm vhost-user-vsock`) can
//! serve the vsock device from our own device code.
//!
//! Start-up is ordered so that nothing races: the vsock backend is started and must be
//! listening on its vhost-user socket before QEMU (which connects as the client) starts; then
//! the guest must write to its console within the spec's deadline. A start with no console
//! output at all has been seen under TCG, so such a start is killed and retried.

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::handle::{OwnedChild, VmControl, VmHandle, log_tail};
use crate::unix_listen::is_listening;
use crate::{Hypervisor, HypervisorError, VmSpec};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, slower.
    Tcg,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
}

/// The process that serves the VM's vsock device over vhost-user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VhostUserVsockBackend {
    /// Our backend: `crosvm vhost-user-vsock --socket S --uds-path U --guest-cid C`.
    Crosvm { binary: PathBuf },
    /// rust-vmm's `vhost-device-vsock`, same contract; used only as a benchmark reference.
    VhostDeviceVsock { binary: PathBuf },
}

impl VhostUserVsockBackend {
    fn binary(&self) -> &Path {
        match self {
            Self::Crosvm { binary } | Self::VhostDeviceVsock { binary } => binary,
        }
    }

    fn args(&self, socket: &Path, uds: &Path, cid: u32) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Self::Crosvm { .. } = self {
            args.push("vhost-user-vsock".into());
        }
        args.push("--socket".into());
        args.push(socket.into());
        args.push("--uds-path".into());
        args.push(uds.into());
        args.push("--guest-cid".into());
        args.push(cid.to_string().into());
        args
    }
}

/// Configuration of the QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    /// `qemu-system-x86_64`, by path or looked up in PATH.
    pub qemu: PathBuf,
    pub accel: Accel,
    /// Serves the vsock device when a spec asks for one.
    pub vsock_backend: VhostUserVsockBackend,
    /// How often a start whose guest printed nothing is retried (1 = no retry).
    pub start_attempts: u32,
    /// How long the vsock backend may take to listen on its vhost-user socket.
    pub backend_listen_timeout: Duration,
    /// Kill the VM's processes when the thread that started them dies (PR_SET_PDEATHSIG). For
    /// tests, so a killed test run leaves no QEMU behind; a daemon that starts VMs from
    /// short-lived threads must leave it off.
    pub kill_with_parent_thread: bool,
    /// Passed to a TCG guest as `tsc_early_khz=`. Under TCG the guest's TSC is the host's, and
    /// the kernel's own TSC calibration against the emulated PIT fails when the host is busy,
    /// after which the 6.1 kernel hangs early in boot with no further console output (seen
    /// here on loaded hosts: "tsc: Unable to calibrate against PIT", then nothing). `new()`
    /// measures the host's TSC rate; `None` leaves calibration to the kernel.
    pub tcg_tsc_khz: Option<u64>,
}

impl QemuBackend {
    /// TCG, our `crosvm` binary at `crosvm` as the vsock backend, one retry of a stalled start.
    pub fn new(crosvm: impl Into<PathBuf>) -> Self {
        QemuBackend {
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Tcg,
            vsock_backend: VhostUserVsockBackend::Crosvm {
                binary: crosvm.into(),
            },
            start_attempts: 2,
            backend_listen_timeout: Duration::from_secs(10),
            kill_with_parent_thread: false,
            tcg_tsc_khz: host_tsc_khz(),
        }
    }

    /// The kernel command line QEMU is given: the spec's, plus the TSC rate under TCG.
    pub fn kernel_cmdline(&self, spec: &VmSpec) -> String {
        let mut cmdline = spec.cmdline.clone();
        if self.accel == Accel::Tcg
            && let Some(khz) = self.tcg_tsc_khz
            && !cmdline
                .split_whitespace()
                .any(|w| w.starts_with("tsc_early_khz="))
        {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        cmdline
    }

    /// QEMU's QMP socket for the VM `spec` describes.
    pub fn qmp_socket(spec: &VmSpec) -> PathBuf {
        spec.run_dir.join("qmp.sock")
    }

    /// The QEMU arguments for `spec`; `vhost_socket` is the vsock backend's socket when the
    /// spec has vsock.
    pub fn qemu_args(&self, spec: &VmSpec, vhost_socket: Option<&Path>) -> Vec<OsString> {
        let accel = match self.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        };
        let cpu = match self.accel {
            Accel::Tcg => "max",
            Accel::Kvm => "host",
        };
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(OsString::from));
        push(&["-M", &format!("microvm,accel={accel},memory-backend=mem")]);
        // microvm defaults virtio-mmio to legacy (version 1); vhost-user backends need modern.
        push(&["-global", "virtio-mmio.force-legacy=false"]);
        // A shared memfd so the vhost-user backend process can map guest memory.
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                spec.mem_mib
            ),
        ]);
        push(&["-cpu", cpu, "-m", &spec.mem_mib.to_string()]);
        push(&["-smp", &spec.cpus.to_string()]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        let mut console = OsString::from("file,id=console,path=");
        console.push(&spec.console_log);
        a.push("-chardev".into());
        a.push(console);
        a.extend(["-serial", "chardev:console"].map(OsString::from));
        a.push("-kernel".into());
        a.push(spec.kernel.clone().into());
        if let Some(initrd) = &spec.initrd {
            a.push("-initrd".into());
            a.push(initrd.clone().into());
        }
        a.push("-append".into());
        a.push(self.kernel_cmdline(spec).into());
        // QMP, for what concierge asks of a running VM: disk resize and the ACPI power button.
        let mut qmp = OsString::from("socket,id=qmp,server=on,wait=off,path=");
        qmp.push(qemu_escape_commas(&Self::qmp_socket(spec)));
        a.push("-chardev".into());
        a.push(qmp);
        a.extend(["-mon", "chardev=qmp,mode=control"].map(OsString::from));
        for (i, disk) in spec.disks.iter().enumerate() {
            let mut drive = OsString::from(format!("if=none,id=disk{i},format=raw,file="));
            drive.push(qemu_escape_commas(&disk.path));
            if disk.read_only {
                drive.push(",readonly=on");
            }
            a.push("-drive".into());
            a.push(drive);
            let mut device = format!("virtio-blk-device,drive=disk{i}");
            if let Some(serial) = &disk.serial {
                // QEMU option values escape commas by doubling them.
                device.push_str(&format!(",serial={}", serial.replace(',', ",,")));
            }
            a.push("-device".into());
            a.push(device.into());
        }
        if let Some(socket) = vhost_socket {
            let mut chardev = OsString::from("socket,id=vsock,path=");
            chardev.push(qemu_escape_commas(socket));
            a.push("-chardev".into());
            a.push(chardev);
            a.extend(["-device", "vhost-user-vsock-device,chardev=vsock"].map(OsString::from));
        }
        a
    }

    fn validate(&self, spec: &VmSpec) -> Result<(), HypervisorError> {
        let bad = |reason: String| HypervisorError::BadSpec {
            vm: spec.name.clone(),
            reason,
        };
        if spec.mem_mib < 64 {
            return Err(bad(format!(
                "{} MiB of memory is below 64 MiB",
                spec.mem_mib
            )));
        }
        if spec.cpus == 0 || spec.cpus > 64 {
            return Err(bad(format!("{} cpus is outside 1..=64", spec.cpus)));
        }
        for file in std::iter::once(&spec.kernel).chain(spec.initrd.iter()) {
            if !file.is_file() {
                return Err(bad(format!("'{}' is not a file", file.display())));
            }
        }
        for disk in &spec.disks {
            if !disk.path.is_file() {
                return Err(bad(format!("disk '{}' is not a file", disk.path.display())));
            }
        }
        if let Some(v) = &spec.vsock
            && v.guest_cid < 3
        {
            return Err(bad(format!(
                "guest cid {} is reserved (must be >= 3)",
                v.guest_cid
            )));
        }
        Ok(())
    }

    fn spawn(
        &self,
        what: &'static str,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> Result<OwnedChild, HypervisorError> {
        let io_err = |source| HypervisorError::Io {
            path: log.to_path_buf(),
            source,
        };
        let out = fs::File::create(log).map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        if self.kill_with_parent_thread {
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
        let child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
            what,
            path: program.to_path_buf(),
            source,
        })?;
        Ok(OwnedChild {
            what,
            child,
            log: log.to_path_buf(),
        })
    }

    /// One start attempt: backend, then QEMU, then the first console output.
    fn start_once(
        &self,
        spec: &VmSpec,
        qemu: &Path,
        attempt: u32,
    ) -> Result<VmHandle, HypervisorError> {
        let mut helpers = Vec::new();
        let mut vhost_socket = None;
        if let Some(vsock) = &spec.vsock {
            let backend_bin = resolve_binary(self.vsock_backend.binary()).ok_or_else(|| {
                HypervisorError::BinaryNotFound {
                    what: "vsock backend",
                    path: self.vsock_backend.binary().to_path_buf(),
                    hint: " (build it: cargo build -p cros-tools --bin crosvm)",
                }
            })?;
            let socket = spec.run_dir.join("vhost-user-vsock.sock");
            remove_stale_socket(&socket)?;
            remove_stale_socket(&vsock.uds_path)?;
            let log = spec.run_dir.join("vsock-backend.log");
            let args = self
                .vsock_backend
                .args(&socket, &vsock.uds_path, vsock.guest_cid);
            let mut backend = self.spawn("vsock backend", &backend_bin, &args, &log)?;
            wait_listening(&mut backend, &socket, self.backend_listen_timeout)?;
            helpers.push(backend);
            vhost_socket = Some(socket);
        }
        remove_file_if_exists(&spec.console_log)?;
        remove_stale_socket(&Self::qmp_socket(spec))?;
        let args = self.qemu_args(spec, vhost_socket.as_deref());
        let log = spec.run_dir.join("qemu.log");
        tracing::info!(vm = %spec.name, attempt, "starting {} {:?}", qemu.display(), args);
        let vmm = self.spawn("QEMU", qemu, &args, &log)?;
        let mut handle = VmHandle::new(vmm, helpers, spec.console_log.clone(), attempt)
            .with_control(VmControl::Qmp {
                socket: Self::qmp_socket(spec),
                online_resize: spec.disks.iter().map(|d| d.online_resize).collect(),
            });
        wait_first_output("QEMU", &mut handle, spec, attempt)?;
        Ok(handle)
    }
}

impl Hypervisor for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn start(&self, spec: &VmSpec) -> Result<VmHandle, HypervisorError> {
        self.validate(spec)?;
        let qemu = resolve_binary(&self.qemu).ok_or_else(|| HypervisorError::BinaryNotFound {
            what: "QEMU",
            path: self.qemu.clone(),
            hint: " (install it: apt-get install -y --no-install-recommends qemu-system-x86)",
        })?;
        fs::create_dir_all(&spec.run_dir).map_err(|source| HypervisorError::Io {
            path: spec.run_dir.clone(),
            source,
        })?;
        let attempts = self.start_attempts.max(1);
        let mut attempt = 1;
        loop {
            match self.start_once(spec, &qemu, attempt) {
                Err(HypervisorError::NoConsoleOutput { timeout, .. }) if attempt < attempts => {
                    tracing::warn!(
                        vm = %spec.name,
                        "no console output within {timeout:?} (attempt {attempt} of {attempts}); \
                         killed and retrying"
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Polls until the guest has written to its console; kills the VM on any failure. `what` names
/// the VMM in errors.
pub(crate) fn wait_first_output(
    what: &'static str,
    handle: &mut VmHandle,
    spec: &VmSpec,
    attempt: u32,
) -> Result<(), HypervisorError> {
    let deadline = Instant::now() + spec.first_output_timeout;
    loop {
        if fs::metadata(&spec.console_log).is_ok_and(|m| m.len() > 0) {
            return Ok(());
        }
        let exited = handle.try_wait().map_err(|source| HypervisorError::Io {
            path: handle.vmm_log().to_path_buf(),
            source,
        })?;
        if let Some(status) = exited {
            // The console may have been written just before a fast exit.
            if fs::metadata(&spec.console_log).is_ok_and(|m| m.len() > 0) {
                return Ok(());
            }
            return Err(HypervisorError::ExitedEarly {
                what,
                status,
                log: handle.vmm_log().to_path_buf(),
                log_tail: log_tail(handle.vmm_log(), 2048),
            });
        }
        if Instant::now() >= deadline {
            handle.kill();
            return Err(HypervisorError::NoConsoleOutput {
                vm: spec.name.clone(),
                timeout: spec.first_output_timeout,
                attempts: attempt,
                console_log: spec.console_log.clone(),
                vmm_log: handle.vmm_log().to_path_buf(),
                vmm_log_tail: log_tail(handle.vmm_log(), 2048),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_listening(
    backend: &mut OwnedChild,
    socket: &Path,
    timeout: Duration,
) -> Result<(), HypervisorError> {
    let deadline = Instant::now() + timeout;
    loop {
        if is_listening(socket) {
            return Ok(());
        }
        if let Ok(Some(status)) = backend.child.try_wait() {
            return Err(HypervisorError::ExitedEarly {
                what: backend.what,
                status,
                log: backend.log.clone(),
                log_tail: log_tail(&backend.log, 2048),
            });
        }
        if Instant::now() >= deadline {
            let _ = backend.child.kill();
            let _ = backend.child.wait();
            return Err(HypervisorError::BackendNotListening {
                socket: socket.to_path_buf(),
                timeout,
                log: backend.log.clone(),
                log_tail: log_tail(&backend.log, 2048),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn remove_file_if_exists(path: &Path) -> Result<(), HypervisorError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(HypervisorError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// A socket file left by an earlier run would make the backend's bind fail.
pub(crate) fn remove_stale_socket(path: &Path) -> Result<(), HypervisorError> {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => remove_file_if_exists(path),
        Ok(_) => Err(HypervisorError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to replace it",
            ),
        }),
        Err(_) => Ok(()),
    }
}

/// The host's TSC rate in kHz, measured once per process against CLOCK_MONOTONIC (median of
/// three 20 ms windows, so one descheduling between the paired reads does not skew it).
#[cfg(target_arch = "x86_64")]
fn host_tsc_khz() -> Option<u64> {
    use std::sync::OnceLock;
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let sample = || {
            // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
            let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
            let (c0, t0) = (tsc(), Instant::now());
            std::thread::sleep(Duration::from_millis(20));
            let (c1, t1) = (tsc(), Instant::now());
            let ns = t1.duration_since(t0).as_nanos() as u64;
            (ns > 0).then(|| c1.wrapping_sub(c0).saturating_mul(1_000_000) / ns)
        };
        let mut khz: Vec<u64> = (0..3).filter_map(|_| sample()).collect();
        khz.sort_unstable();
        khz.get(khz.len() / 2)
            .copied()
            .filter(|k| (100_000..20_000_000).contains(k))
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn host_tsc_khz() -> Option<u64> {
    None
}

/// QEMU option values separate with commas; a literal comma is written twice.
fn qemu_escape_commas(path: &Path) -> OsString {
    path.to_string_lossy().replace(',', ",,").into()
}

/// `name` itself when it contains a slash, else the first match in PATH.
pub(crate) fn resolve_binary(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 || name.is_absolute() {
        return is_exe(name).then(|| name.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| is_exe(p))
    })
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

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_command_line_has_modern_mmio_shared_memory_and_console_file() {
        let mut spec = VmSpec::new("t", "/k/vmlinuz", "/run/vm");
        spec.initrd = Some("/k/initrd".into());
        spec.cmdline = "console=ttyS0 crosd.echo_port=5000".into();
        spec.mem_mib = 256;
        spec.cpus = 3;
        spec.disks = vec![DiskSpec {
            path: "/d/a,b.img".into(),
            read_only: true,
            serial: Some("crosd-rootfs".into()),
            online_resize: false,
        }];
        let mut backend = QemuBackend::new("crosvm");
        backend.tcg_tsc_khz = Some(2_596_136);
        let args = strings(&backend.qemu_args(&spec, Some(Path::new("/run/vm/vu.sock"))));
        assert_eq!(
            value_after(&args, "-M"),
            ["microvm,accel=tcg,memory-backend=mem"]
        );
        assert_eq!(
            value_after(&args, "-global"),
            ["virtio-mmio.force-legacy=false"]
        );
        assert_eq!(
            value_after(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(value_after(&args, "-cpu"), ["max"]);
        assert_eq!(value_after(&args, "-m"), ["256"]);
        assert_eq!(value_after(&args, "-smp"), ["3"]);
        assert_eq!(value_after(&args, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(value_after(&args, "-initrd"), ["/k/initrd"]);
        assert_eq!(
            value_after(&args, "-append"),
            ["console=ttyS0 crosd.echo_port=5000 tsc_early_khz=2596136"]
        );
        assert_eq!(
            value_after(&args, "-chardev"),
            [
                "file,id=console,path=/run/vm/console.log",
                "socket,id=qmp,server=on,wait=off,path=/run/vm/qmp.sock",
                "socket,id=vsock,path=/run/vm/vu.sock"
            ]
        );
        assert_eq!(value_after(&args, "-mon"), ["chardev=qmp,mode=control"]);
        assert_eq!(value_after(&args, "-serial"), ["chardev:console"]);
        assert_eq!(
            value_after(&args, "-drive"),
            ["if=none,id=disk0,format=raw,file=/d/a,,b.img,readonly=on"]
        );
        assert_eq!(
            value_after(&args, "-device"),
            [
                "virtio-blk-device,drive=disk0,serial=crosd-rootfs",
                "vhost-user-vsock-device,chardev=vsock"
            ]
        );
        assert!(args.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_vsock_means_no_vhost_device() {
        let spec = VmSpec::new("t", "/k/vmlinuz", "/run/vm");
        let mut backend = QemuBackend::new("crosvm");
        backend.accel = Accel::Kvm;
        let args = strings(&backend.qemu_args(&spec, None));
        assert_eq!(
            value_after(&args, "-M"),
            ["microvm,accel=kvm,memory-backend=mem"]
        );
        assert_eq!(value_after(&args, "-cpu"), ["host"]);
        assert!(value_after(&args, "-device").is_empty());
        assert!(value_after(&args, "-initrd").is_empty());
        // KVM guests calibrate against a real TSC: no override.
        assert_eq!(value_after(&args, "-append"), ["console=ttyS0"]);
    }

    #[test]
    fn measured_host_tsc_rate_is_plausible_and_not_duplicated() {
        let khz = host_tsc_khz().expect("x86_64 host TSC rate");
        assert!((100_000..20_000_000).contains(&khz), "{khz} kHz");
        let mut spec = VmSpec::new("t", "/k", "/r");
        spec.cmdline = "console=ttyS0 tsc_early_khz=1000000".into();
        let backend = QemuBackend::new("crosvm");
        assert_eq!(
            backend.kernel_cmdline(&spec),
            "console=ttyS0 tsc_early_khz=1000000"
        );
    }

    #[test]
    fn backend_arguments_follow_each_backends_cli() {
        let s = Path::new("/r/vu.sock");
        let u = Path::new("/r/vsock.sock");
        let crosvm = VhostUserVsockBackend::Crosvm {
            binary: "crosvm".into(),
        };
        assert_eq!(
            strings(&crosvm.args(s, u, 7)),
            [
                "vhost-user-vsock",
                "--socket",
                "/r/vu.sock",
                "--uds-path",
                "/r/vsock.sock",
                "--guest-cid",
                "7"
            ]
        );
        let reference = VhostUserVsockBackend::VhostDeviceVsock {
            binary: "vhost-device-vsock".into(),
        };
        assert_eq!(
            strings(&reference.args(s, u, 7)),
            [
                "--socket",
                "/r/vu.sock",
                "--uds-path",
                "/r/vsock.sock",
                "--guest-cid",
                "7"
            ]
        );
    }

    fn files() -> (tempfile::TempDir, VmSpec) {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        fs::write(&kernel, b"not really a kernel").unwrap();
        let spec = VmSpec::new("t", &kernel, dir.path().join("run"));
        (dir, spec)
    }

    #[test]
    fn missing_qemu_is_a_clear_error() {
        let (_dir, spec) = files();
        let mut backend = QemuBackend::new("crosvm");
        backend.qemu = "/nonexistent/qemu-system-x86_64".into();
        let err = backend.start(&spec).unwrap_err();
        assert!(
            matches!(err, HypervisorError::BinaryNotFound { what: "QEMU", .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/qemu-system-x86_64") && msg.contains("apt-get"),
            "{msg}"
        );
    }

    #[test]
    fn missing_vsock_backend_is_a_clear_error() {
        let (dir, mut spec) = files();
        spec.vsock = Some(VsockSpec {
            guest_cid: 3,
            uds_path: dir.path().join("vsock.sock"),
        });
        // /bin/true stands in for QEMU: the start must fail on the backend before QEMU runs.
        let mut backend = QemuBackend::new("/nonexistent/crosvm");
        backend.qemu = "/bin/true".into();
        let err = backend.start(&spec).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/crosvm"), "{err}");
    }

    #[test]
    fn bad_spec_names_the_problem() {
        let (dir, mut spec) = files();
        spec.initrd = Some(dir.path().join("missing-initrd"));
        let err = QemuBackend::new("crosvm").start(&spec).unwrap_err();
        assert!(err.to_string().contains("missing-initrd"), "{err}");
        let (_dir, mut spec) = files();
        spec.vsock = Some(VsockSpec {
            guest_cid: 2,
            uds_path: "/tmp/x".into(),
        });
        let err = QemuBackend::new("crosvm").start(&spec).unwrap_err();
        assert!(err.to_string().contains("cid 2"), "{err}");
    }

    /// A backend that exits at once is reported with its log, and QEMU is never started.
    #[test]
    fn backend_that_exits_is_reported_with_its_log() {
        let (dir, mut spec) = files();
        spec.vsock = Some(VsockSpec {
            guest_cid: 3,
            uds_path: dir.path().join("vsock.sock"),
        });
        let script = dir.path().join("fake-backend");
        fs::write(&script, "#!/bin/sh\necho 'backend: bad flag' >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let mut backend = QemuBackend::new(&script);
        backend.qemu = "/bin/true".into();
        let err = backend.start(&spec).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                HypervisorError::ExitedEarly {
                    what: "vsock backend",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("backend: bad flag"), "{msg}");
        assert!(!spec.run_dir.join("qemu.log").exists());
    }

    /// A "VMM" that runs but never writes the console hits the deadline, is retried once, and
    /// is killed each time.
    #[test]
    fn silent_vmm_hits_the_console_deadline_and_is_killed() {
        let (dir, mut spec) = files();
        spec.first_output_timeout = Duration::from_millis(300);
        let script = dir.path().join("silent-vmm");
        let pids = dir.path().join("pids");
        fs::write(
            &script,
            format!("#!/bin/sh\necho $$ >> {}\nexec sleep 60\n", pids.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let mut backend = QemuBackend::new("crosvm");
        backend.qemu = script;
        let err = backend.start(&spec).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, HypervisorError::NoConsoleOutput { attempts: 2, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("console.log") && msg.contains("300ms"),
            "{msg}"
        );
        let started = fs::read_to_string(&pids).unwrap();
        assert_eq!(started.lines().count(), 2, "expected one retry: {started}");
        for pid in started.lines() {
            let alive = Path::new(&format!("/proc/{pid}")).exists()
                && !fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z");
            assert!(!alive, "VMM {pid} still running after the failed start");
        }
    }
}
