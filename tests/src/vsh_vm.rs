//! A QEMU/TCG guest running our static `vshd` on AF_VSOCK port 9001, and the `vsh` binary
//! driving it through the VM's hybrid vsock socket. Shared by the vsh end-to-end test and the
//! vsh round-trip benchmark.
//!
//! maitred is not part of it: a busybox script as /init mounts what vshd needs (/proc, /dev,
//! /dev/pts), loads the vsock modules and execs vshd, so only vsh/vshd and the vsock path are
//! exercised.
//!
//! Needs qemu-system-x86_64, busybox-static, the guest kernel (tools/scripts/guest-kernel.sh),
//! `target/debug/{crosvm,vsh}` and the static guest vshd (`RUSTFLAGS='-C
//! target-feature=+crt-static' cargo build -p cros-guest --bins --target
//! x86_64-unknown-linux-gnu`). CROSD_TEST_REFERENCE_VSOCK_BACKEND=/path/to/vhost-device-vsock
//! runs the guest with rust-vmm's vsock backend instead of ours, to tell a vsh/vshd bug from a
//! backend bug.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cros_hypervisor::{
    DiskSpec, Hypervisor, Initramfs, QemuBackend, VhostUserVsockBackend, VmHandle, VmSpec,
    VsockSpec,
};

use crate::vsock_vm::{guest_bin, guest_kernel, tail};

const BUSYBOX: &str = "/bin/busybox";
/// Prefix of the lines the /init script prints on the console.
const MARKER: &str = "CROSD-VSH:";
/// How long the guest may take to boot to a listening vshd (TCG on a loaded host).
const BOOT_DEADLINE: Duration = Duration::from_secs(180);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
for m in $(cat /lib/modules/crosd/load-order); do
    insmod /lib/modules/crosd/$m || echo "CROSD-VSH: error insmod $m"
done
echo "CROSD-VSH: release $(uname -r)"
exec /bin/vshd --listen vsock:9001
"#;

/// A running guest with vshd listening.
pub struct VshVm {
    pub handle: VmHandle,
    /// The VM's hybrid vsock socket (what `vsh --socket` takes).
    pub uds: PathBuf,
    pub console_log: PathBuf,
    /// `uname -r` as the guest's init printed it on the console.
    pub guest_release: String,
    _dir: tempfile::TempDir,
}

fn console(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

impl VshVm {
    /// Boots the guest and waits until vshd listens. Panics with the console on failure.
    pub fn start(name: &str) -> VshVm {
        Self::start_with_disks(name, Vec::new())
    }

    /// As [`VshVm::start`], with `disks` attached (the qemu backend serves each through
    /// `crosvm vhost-user-blk`, or QEMU's own virtio-blk where `online_resize` is set). The
    /// guest needs virtio_blk among CROSD_GUEST_MODULES (`guest-kernel.sh --modules`).
    pub fn start_with_disks(name: &str, disks: Vec<DiskSpec>) -> VshVm {
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} missing: apt-get install -y --no-install-recommends busybox-static"
        );
        let kernel = guest_kernel();
        let vshd = guest_bin("vshd");
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd.cpio");
        let mut fs = Initramfs::with_base_layout().unwrap();
        fs.add_file("init", 0o755, INIT.as_bytes().to_vec())
            .and_then(|fs| fs.add_file_from("bin/busybox", 0o755, Path::new(BUSYBOX)))
            .and_then(|fs| fs.add_file_from("bin/vshd", 0o755, &vshd))
            .and_then(|fs| fs.add_dir_files_from("lib/modules/crosd", &kernel.modules_dir))
            .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
        fs.write_to(&initrd).unwrap();

        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let uds = run_dir.join("vsock.sock");
        let mut spec = VmSpec::new(name, &kernel.kernel, &run_dir);
        spec.initrd = Some(initrd);
        spec.cmdline = "console=ttyS0 panic=-1 loglevel=4".to_string();
        spec.mem_mib = 512;
        spec.cpus = 2;
        spec.disks = disks;
        spec.vsock = Some(VsockSpec {
            guest_cid: 3,
            uds_path: uds.clone(),
        });
        let mut backend = QemuBackend::new(crate::bin("crosvm"));
        backend.kill_with_parent_thread = true;
        if let Some(binary) = std::env::var_os("CROSD_TEST_REFERENCE_VSOCK_BACKEND") {
            backend.vsock_backend = VhostUserVsockBackend::VhostDeviceVsock {
                binary: binary.into(),
            };
        }
        let handle = backend
            .start(&spec)
            .unwrap_or_else(|e| panic!("QEMU did not start: {e}"));
        let mut vm = VshVm {
            handle,
            uds,
            console_log: spec.console_log.clone(),
            guest_release: String::new(),
            _dir: dir,
        };
        let release = vm.wait_console(&format!("{MARKER} release "));
        vm.guest_release = release
            .split_once(&format!("{MARKER} release "))
            .map(|(_, r)| r.trim().to_string())
            .unwrap_or_default();
        vm.wait_console("vshd: listening on vsock port 9001");
        vm
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        console(&self.console_log)
    }

    /// The console's last lines, for failure messages.
    pub fn console_tail(&self) -> String {
        tail(&self.console())
    }

    /// Waits for a console line containing `needle` and returns it.
    fn wait_console(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + BOOT_DEADLINE;
        loop {
            let text = self.console();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                !text.contains(&format!("{MARKER} error")),
                "guest error:\n{}",
                tail(&text)
            );
            if let Ok(Some(status)) = self.handle.try_wait() {
                panic!("QEMU exited ({status}) before {needle:?}:\n{}", tail(&text));
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the console within {BOOT_DEADLINE:?}:\n{}",
                tail(&text)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `vsh --vm_name termina --socket UDS ARGS…` with `stdin` piped in.
    pub fn vsh(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(crate::bin("vsh"))
            .args(["--vm_name", "termina", "--socket"])
            .arg(&self.uds)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(mut input) = child.stdin.take() {
            // The remote may exit without reading; a broken pipe here is not the test's failure.
            let _ = input.write_all(stdin);
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for VshVm {
    fn drop(&mut self) {
        self.handle.kill();
    }
}
