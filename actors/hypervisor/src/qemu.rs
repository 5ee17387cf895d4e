//! The `qemu` backend: QEMU's microvm machine (TCG, or KVM where it can boot Linux) with guest
//! memory in a shared memfd, so vhost-user backend processes (`crosvm vhost-user-vsock`,
//! `crosvm vhost-user-blk`) can serve the vsock device and the disks from our own device code.
//!
//! Disks marked `online_resize` stay on QEMU's own virtio-blk: a vhost-user backend built on
//! the vhost crates cannot send the configuration-change message that tells the guest a disk
//! grew, so only QEMU (through QMP `block_resize`) can resize a disk under a running guest.
//!
//! Start-up is ordered so that nothing races: every vhost-user backend is started and must be
//! listening on its socket before QEMU (which connects as the client) starts; then the guest
//! must write to its console within the spec's deadline. A start with no console output at all
//! has been seen under TCG, so such a start is killed and retried.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::console::{ConsolePipe, MAX_CONSOLE_BYTES, rotated_path};
use crate::fsutil::ensure_private_dir;
use crate::handle::{OwnedChild, VmControl, VmHandle, die_with_parent_thread, log_tail};
use crate::unix_listen::is_listening;
use crate::{DiskSpec, Hypervisor, HypervisorError, VmSpec};

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

/// Who serves the disks that need no online resize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskBackend {
    /// Our backend, one process per disk: `crosvm vhost-user-blk --socket S --path IMAGE
    /// [--read-only] [--serial SERIAL]`.
    Crosvm { binary: PathBuf },
    /// QEMU's own virtio-blk for every disk (a benchmark reference).
    Qemu,
}

impl DiskBackend {
    fn args(socket: &Path, disk: &DiskSpec) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "vhost-user-blk".into(),
            "--socket".into(),
            socket.into(),
            "--path".into(),
            disk.path.clone().into(),
        ];
        if disk.read_only {
            args.push("--read-only".into());
        }
        if let Some(serial) = &disk.serial {
            args.push("--serial".into());
            args.push(serial.into());
        }
        args
    }
}

/// The vhost-user sockets QEMU connects to for one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VhostUserSockets {
    /// The vsock backend's socket, when the spec has vsock.
    pub vsock: Option<PathBuf>,
    /// For each of the spec's disks, in order: the socket of the backend serving it, or `None`
    /// for a disk on QEMU's own virtio-blk.
    pub disks: Vec<Option<PathBuf>>,
    /// The network backend's socket, when the spec has a network device.
    pub net: Option<PathBuf>,
}

/// Configuration of the QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    /// `qemu-system-x86_64`, by path or looked up in PATH.
    pub qemu: PathBuf,
    pub accel: Accel,
    /// Serves the vsock device when a spec asks for one.
    pub vsock_backend: VhostUserVsockBackend,
    /// Serves every disk whose `online_resize` is false.
    pub disk_backend: DiskBackend,
    /// `crosvm`, serving the network device when a spec has one
    /// (`crosvm vhost-user-net --socket S --tap TAP`).
    pub net_backend: PathBuf,
    /// How often a start whose guest printed nothing is retried (1 = no retry).
    pub start_attempts: u32,
    /// How long a vhost-user backend may take to listen on its socket.
    pub backend_listen_timeout: Duration,
    /// Kill the VM's processes when the thread that started them dies (PR_SET_PDEATHSIG), so
    /// a killed test run or daemon leaves no VM behind. Only for callers that start each VM
    /// from a thread that lives as long as the VM (crosd does; a pool thread would not).
    pub kill_with_parent_thread: bool,
    /// Passed to a TCG guest as `tsc_early_khz=`. Under TCG the guest's TSC is the host's, and
    /// the kernel's own TSC calibration against the emulated PIT fails when the host is busy,
    /// after which the 6.1 kernel hangs early in boot with no further console output (seen
    /// here on loaded hosts: "tsc: Unable to calibrate against PIT", then nothing). `new()`
    /// measures the host's TSC rate; `None` leaves calibration to the kernel.
    pub tcg_tsc_khz: Option<u64>,
}

impl QemuBackend {
    /// TCG, our `crosvm` binary at `crosvm` as the vsock and disk backend, one retry of a
    /// stalled start.
    pub fn new(crosvm: impl Into<PathBuf>) -> Self {
        let crosvm = crosvm.into();
        QemuBackend {
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Tcg,
            vsock_backend: VhostUserVsockBackend::Crosvm {
                binary: crosvm.clone(),
            },
            disk_backend: DiskBackend::Crosvm {
                binary: crosvm.clone(),
            },
            net_backend: crosvm,
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

    /// The QEMU arguments for `spec`, connecting to the vhost-user backends on `sockets` and
    /// writing the guest console to `console_path`.
    pub fn qemu_args(
        &self,
        spec: &VmSpec,
        sockets: &VhostUserSockets,
        console_path: &Path,
    ) -> Vec<OsString> {
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
        // The console goes into a pipe (the chardev's path, see ConsolePipe) that crosd copies
        // into the bounded, rotated console log; QEMU never writes the log itself.
        let mut console = OsString::from("file,id=console,path=");
        console.push(qemu_escape_commas(console_path));
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
            if let Some(Some(socket)) = sockets.disks.get(i) {
                // Read-only and serial are the backend's: it answers GET_ID and offers RO.
                let mut chardev = OsString::from(format!("socket,id=blk{i},path="));
                chardev.push(qemu_escape_commas(socket));
                a.push("-chardev".into());
                a.push(chardev);
                a.push("-device".into());
                a.push(format!("vhost-user-blk,chardev=blk{i}").into());
                continue;
            }
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
        if let Some(socket) = &sockets.vsock {
            let mut chardev = OsString::from("socket,id=vsock,path=");
            chardev.push(qemu_escape_commas(socket));
            a.push("-chardev".into());
            a.push(chardev);
            a.extend(["-device", "vhost-user-vsock-device,chardev=vsock"].map(OsString::from));
        }
        if let (Some(socket), Some(net)) = (&sockets.net, &spec.net) {
            let mut chardev = OsString::from("socket,id=net0,path=");
            chardev.push(qemu_escape_commas(socket));
            a.push("-chardev".into());
            a.push(chardev);
            a.extend(["-netdev", "vhost-user,id=net0,chardev=net0"].map(OsString::from));
            let mut device = String::from("virtio-net-device,netdev=net0");
            if let Some(mac) = &net.mac {
                device.push_str(&format!(",mac={mac}"));
            }
            a.push("-device".into());
            a.push(device.into());
        }
        // Benchmarks only (tools/scripts/bench-9p.sh adds QEMU's own virtio-9p device to
        // compare against seneschal's server): extra arguments, split on whitespace.
        if let Some(extra) = std::env::var_os("CROSD_QEMU_EXTRA_ARGS") {
            a.extend(
                extra
                    .to_string_lossy()
                    .split_whitespace()
                    .map(OsString::from),
            );
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
        console: Option<&ConsolePipe>,
    ) -> Result<OwnedChild, HypervisorError> {
        let io_err = |source| HypervisorError::Io {
            path: log.to_path_buf(),
            source,
        };
        let out = fs::File::create(log).map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        if let Some(console) = console {
            console.pass_to(&mut cmd);
        }
        if self.kill_with_parent_thread {
            die_with_parent_thread(&mut cmd);
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

    /// Starts one vhost-user backend process and waits until it listens on `socket`.
    fn start_vhost_user_backend(
        &self,
        what: &'static str,
        binary: &Path,
        args: &[OsString],
        socket: &Path,
        log: &Path,
    ) -> Result<OwnedChild, HypervisorError> {
        let resolved = resolve_binary(binary).ok_or_else(|| HypervisorError::BinaryNotFound {
            what,
            path: binary.to_path_buf(),
            hint: " (build it: cargo build -p cros-tools --bin crosvm)",
        })?;
        remove_stale_socket(socket)?;
        let mut backend = self.spawn(what, &resolved, args, log, None)?;
        wait_listening(&mut backend, socket, self.backend_listen_timeout)?;
        Ok(backend)
    }

    /// Starts the vsock and disk backends `spec` needs, in `helpers`; returns their sockets.
    fn start_vhost_user_backends(
        &self,
        spec: &VmSpec,
        helpers: &mut Vec<OwnedChild>,
    ) -> Result<VhostUserSockets, HypervisorError> {
        let mut sockets = VhostUserSockets::default();
        if let Some(vsock) = &spec.vsock {
            let socket = spec.run_dir.join("vhost-user-vsock.sock");
            remove_stale_socket(&vsock.uds_path)?;
            let args = self
                .vsock_backend
                .args(&socket, &vsock.uds_path, vsock.guest_cid);
            helpers.push(self.start_vhost_user_backend(
                "vsock backend",
                self.vsock_backend.binary(),
                &args,
                &socket,
                &spec.run_dir.join("vsock-backend.log"),
            )?);
            sockets.vsock = Some(socket);
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            let binary = match &self.disk_backend {
                DiskBackend::Crosvm { binary } if !disk.online_resize => binary,
                _ => {
                    sockets.disks.push(None);
                    continue;
                }
            };
            let socket = spec.run_dir.join(format!("vhost-user-blk{i}.sock"));
            helpers.push(self.start_vhost_user_backend(
                "disk backend",
                binary,
                &DiskBackend::args(&socket, disk),
                &socket,
                &spec.run_dir.join(format!("disk{i}-backend.log")),
            )?);
            sockets.disks.push(Some(socket));
        }
        if let Some(net) = &spec.net {
            let socket = spec.run_dir.join("vhost-user-net.sock");
            let args: Vec<OsString> = vec![
                "vhost-user-net".into(),
                "--socket".into(),
                socket.clone().into(),
                "--tap".into(),
                net.tap.clone().into(),
            ];
            helpers.push(self.start_vhost_user_backend(
                "network backend",
                &self.net_backend,
                &args,
                &socket,
                &spec.run_dir.join("net-backend.log"),
            )?);
            sockets.net = Some(socket);
        }
        Ok(sockets)
    }

    /// One start attempt: backends, then QEMU, then the first console output.
    fn start_once(
        &self,
        spec: &VmSpec,
        qemu: &Path,
        attempt: u32,
    ) -> Result<VmHandle, HypervisorError> {
        let mut helpers = Vec::new();
        let started = self
            .start_vhost_user_backends(spec, &mut helpers)
            .and_then(|sockets| {
                remove_console_logs(&spec.console_log)?;
                remove_stale_socket(&Self::qmp_socket(spec))?;
                let console = ConsolePipe::new().map_err(|source| HypervisorError::Io {
                    path: spec.console_log.clone(),
                    source,
                })?;
                let args = self.qemu_args(spec, &sockets, &console.vmm_path());
                let log = spec.run_dir.join("qemu.log");
                tracing::info!(vm = %spec.name, attempt, "starting {} {:?}", qemu.display(), args);
                let vmm = self.spawn("QEMU", qemu, &args, &log, Some(&console))?;
                Ok((vmm, console))
            });
        let (vmm, console) = match started {
            Ok(started) => started,
            Err(e) => {
                // No handle owns the backends yet: stop the ones that did start.
                for mut helper in helpers {
                    let _ = helper.child.kill();
                    let _ = helper.child.wait();
                }
                return Err(e);
            }
        };
        let mut handle = VmHandle::new(vmm, helpers, spec.console_log.clone(), attempt)
            .with_control(VmControl::Qmp {
                socket: Self::qmp_socket(spec),
                online_resize: spec.disks.iter().map(|d| d.online_resize).collect(),
            });
        // The handle owns QEMU from here: on an error below, dropping it kills QEMU.
        let logger = console
            .start_logging(&spec.console_log, MAX_CONSOLE_BYTES)
            .map_err(|source| HypervisorError::Io {
                path: spec.console_log.clone(),
                source,
            })?;
        handle = handle.with_console(logger);
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
        ensure_private_dir(&spec.run_dir).map_err(|source| HypervisorError::Io {
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

pub(crate) fn wait_listening(
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
                what: backend.what,
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

/// The console log of an earlier start, and its rotated part: a new start begins afresh.
pub(crate) fn remove_console_logs(console_log: &Path) -> Result<(), HypervisorError> {
    remove_file_if_exists(console_log)?;
    remove_file_if_exists(&rotated_path(console_log))
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
    use crate::{DiskSpec, NetSpec, VsockSpec};

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
    fn a_network_device_is_vhost_user_net_on_its_socket() {
        let mut spec = VmSpec::new("t", "/k/vmlinuz", "/run/vm");
        spec.net = Some(NetSpec {
            tap: "crosdtap0".into(),
            mac: Some("02:00:64:73:5c:02".into()),
        });
        let sockets = VhostUserSockets {
            net: Some("/run/vm/vhost-user-net.sock".into()),
            ..VhostUserSockets::default()
        };
        let args = strings(&QemuBackend::new("crosvm").qemu_args(&spec, &sockets, Path::new("/c")));
        assert!(
            value_after(&args, "-chardev")
                .contains(&"socket,id=net0,path=/run/vm/vhost-user-net.sock"),
            "{args:?}"
        );
        assert_eq!(
            value_after(&args, "-netdev"),
            ["vhost-user,id=net0,chardev=net0"]
        );
        assert!(
            value_after(&args, "-device")
                .contains(&"virtio-net-device,netdev=net0,mac=02:00:64:73:5c:02"),
            "{args:?}"
        );
        // No network in the spec: no network device.
        spec.net = None;
        let args = strings(&QemuBackend::new("crosvm").qemu_args(&spec, &sockets, Path::new("/c")));
        assert!(value_after(&args, "-netdev").is_empty(), "{args:?}");
    }

    #[test]
    fn tcg_command_line_has_modern_mmio_shared_memory_and_console_file() {
        let mut spec = VmSpec::new("t", "/k/vmlinuz", "/run/vm");
        spec.initrd = Some("/k/initrd".into());
        spec.cmdline = "console=ttyS0 crosd.echo_port=5000".into();
        spec.mem_mib = 256;
        spec.cpus = 3;
        spec.disks = vec![
            DiskSpec {
                path: "/d/root.img".into(),
                read_only: true,
                serial: Some("crosd-rootfs".into()),
                online_resize: false,
            },
            DiskSpec {
                path: "/d/a,b.img".into(),
                read_only: true,
                serial: Some("crosd-stateful".into()),
                online_resize: true,
            },
        ];
        let mut backend = QemuBackend::new("crosvm");
        backend.tcg_tsc_khz = Some(2_596_136);
        let sockets = VhostUserSockets {
            vsock: Some("/run/vm/vu.sock".into()),
            disks: vec![Some("/run/vm/blk,0.sock".into()), None],
            net: None,
        };
        let args = strings(&backend.qemu_args(&spec, &sockets, Path::new("/dev/fd/7")));
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
                "file,id=console,path=/dev/fd/7",
                "socket,id=qmp,server=on,wait=off,path=/run/vm/qmp.sock",
                "socket,id=blk0,path=/run/vm/blk,,0.sock",
                "socket,id=vsock,path=/run/vm/vu.sock"
            ]
        );
        assert_eq!(value_after(&args, "-mon"), ["chardev=qmp,mode=control"]);
        assert_eq!(value_after(&args, "-serial"), ["chardev:console"]);
        assert_eq!(
            value_after(&args, "-drive"),
            ["if=none,id=disk1,format=raw,file=/d/a,,b.img,readonly=on"]
        );
        // Disks keep their order (the guest's vda, vdb...) whoever serves them.
        assert_eq!(
            value_after(&args, "-device"),
            [
                "vhost-user-blk,chardev=blk0",
                "virtio-blk-device,drive=disk1,serial=crosd-stateful",
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
        let args = strings(&backend.qemu_args(
            &spec,
            &VhostUserSockets::default(),
            Path::new("/dev/fd/7"),
        ));
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

    #[test]
    fn disk_backend_arguments_carry_read_only_and_serial() {
        let disk = DiskSpec {
            path: "/d/root.img".into(),
            read_only: true,
            serial: Some("crosd-rootfs".into()),
            online_resize: false,
        };
        assert_eq!(
            strings(&DiskBackend::args(Path::new("/r/b.sock"), &disk)),
            [
                "vhost-user-blk",
                "--socket",
                "/r/b.sock",
                "--path",
                "/d/root.img",
                "--read-only",
                "--serial",
                "crosd-rootfs"
            ]
        );
        let plain = DiskSpec {
            read_only: false,
            serial: None,
            ..disk
        };
        assert_eq!(
            strings(&DiskBackend::args(Path::new("/r/b.sock"), &plain)),
            [
                "vhost-user-blk",
                "--socket",
                "/r/b.sock",
                "--path",
                "/d/root.img"
            ]
        );
    }

    fn executable(path: &Path, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        fs::write(path, script).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A disk backend that exits at once is reported with its log; QEMU is never started.
    #[test]
    fn disk_backend_that_exits_is_reported_and_qemu_not_started() {
        let (dir, mut spec) = files();
        let image = dir.path().join("disk.img");
        fs::write(&image, [0u8; 512]).unwrap();
        spec.disks = vec![DiskSpec {
            path: image,
            read_only: false,
            serial: None,
            online_resize: false,
        }];
        let script = dir.path().join("fake-crosvm");
        executable(&script, "#!/bin/sh\necho \"blk: refused $*\" >&2\nexit 3\n");
        let mut backend = QemuBackend::new(&script);
        backend.qemu = "/bin/true".into();
        let err = backend.start(&spec).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                HypervisorError::ExitedEarly {
                    what: "disk backend",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("blk: refused vhost-user-blk --socket"),
            "{msg}"
        );
        assert!(!spec.run_dir.join("qemu.log").exists());
    }

    /// An online-resize disk needs no backend process: with a backend binary that does not
    /// exist, the start still reaches QEMU (here /bin/true, which exits at once).
    #[test]
    fn online_resize_disks_stay_on_qemu() {
        let (dir, mut spec) = files();
        let image = dir.path().join("stateful.img");
        fs::write(&image, [0u8; 512]).unwrap();
        spec.disks = vec![DiskSpec {
            path: image,
            read_only: false,
            serial: None,
            online_resize: true,
        }];
        let mut backend = QemuBackend::new("/nonexistent/crosvm");
        backend.qemu = "/bin/true".into();
        let err = backend.start(&spec).unwrap_err();
        assert!(
            matches!(err, HypervisorError::ExitedEarly { what: "QEMU", .. }),
            "{err}"
        );
        assert!(!spec.run_dir.join("disk0-backend.log").exists());
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

    /// A stand-in QEMU that writes its console flat out (4 MiB, to the file its `-chardev
    /// file,id=console,path=` names, as QEMU does) and then stays up: the console log stays
    /// under its bound while it runs, and after the stop it ends with the last line written.
    #[test]
    fn a_console_written_flat_out_stays_bounded_and_keeps_its_last_lines() {
        let (dir, spec) = files();
        let script = dir.path().join("chatty-vmm");
        fs::write(
            &script,
            "#!/bin/sh\n\
             for a in \"$@\"; do case \"$a\" in file,id=console,path=*) out=${a#file,id=console,path=};; esac; done\n\
             exec >\"$out\"\n\
             pad=$(printf '%100d' 0); i=0\n\
             while [ $i -lt 40000 ]; do echo \"guest line $i $pad\"; i=$((i+1)); done\n\
             echo 'guest: last line'\n\
             exec sleep 60\n",
        )
        .unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let mut backend = QemuBackend::new("crosvm");
        backend.qemu = script;
        let mut handle = backend.start(&spec).unwrap();
        let run_mode = fs::metadata(&spec.run_dir).unwrap().mode() & 0o777;
        assert_eq!(run_mode, 0o700, "the VM's run directory is private");
        let rotated = rotated_path(&spec.console_log);
        // Until the writer is done: the last line reached the log.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !crate::console::tail(&spec.console_log, 1).contains("last line") {
            for f in [&spec.console_log, &rotated] {
                let len = fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                assert!(len <= MAX_CONSOLE_BYTES, "{} is {len} bytes", f.display());
            }
            assert!(Instant::now() < deadline, "the writer never finished");
            std::thread::sleep(Duration::from_millis(20));
        }
        handle.kill();
        let tail = crate::console::tail(&spec.console_log, 2);
        assert!(
            tail.starts_with("guest line 39999 ") && tail.ends_with("\nguest: last line"),
            "{tail}"
        );
        assert!(fs::metadata(&spec.console_log).unwrap().len() <= MAX_CONSOLE_BYTES);
        assert!(fs::metadata(&rotated).unwrap().len() <= MAX_CONSOLE_BYTES);
    }
}
