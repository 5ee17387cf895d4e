//! End to end through QEMU/TCG: the Debian guest kernel with Linux's real virtio-vsock driver,
//! our static test guest (`vsock_echo`) as /init, and our `crosvm vhost-user-vsock` backend.
//! The host side talks only through the hybrid vsock Unix sockets, both ways.
//!
//! Needs: qemu-system-x86_64, the guest kernel (tools/scripts/guest-kernel.sh, run from here
//! unless CROSD_GUEST_KERNEL/CROSD_GUEST_MODULES are set), `target/debug/crosvm`, and the static
//! guest binaries (see `guest_bin`). A missing prerequisite fails the test with what to do.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use cros_e2e::vsock_vm::{
    self, ECHO_PORT, ProbeVm, ProbeVmOptions, guest_dial_send, listen_host_port, read_from_source,
    send_to_sink, serve_boot_dial,
};
use cros_guest::vsock_probe as probe;
use cros_hypervisor::VhostUserVsockBackend;

const BOOT_DIAL_PORT: u32 = 5500;
const CONTROL_DIAL_PORT: u32 = 5600;

/// Writes `data` on one thread while reading the echo on this one (the echo cannot be read
/// after writing everything: both directions' buffers would fill and deadlock).
fn echo_round_trip(vm: &ProbeVm, data: Vec<u8>) -> Result<(), String> {
    let stream = vm.connect(ECHO_PORT)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let len = data.len();
    let sender = thread::spawn(move || writer.write_all(&data).map(|_| data));
    let mut back = vec![0u8; len];
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    reader
        .read_exact(&mut back)
        .map_err(|e| format!("reading the echo of {len} bytes: {e}"))?;
    let sent = sender
        .join()
        .map_err(|_| "writer thread panicked".to_string())?
        .map_err(|e| format!("writing {len} bytes: {e}"))?;
    if back != sent {
        let at = back.iter().zip(&sent).position(|(a, b)| a != b);
        return Err(format!("echo of {len} bytes differs at byte {at:?}"));
    }
    Ok(())
}

fn step(name: &str) {
    eprintln!("vsock_qemu: {name}");
}

/// Keeps the run directory (console, QEMU and backend logs) when the test fails.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && thread::panicking()
        {
            eprintln!("test failed: logs kept in {}", dir.keep().display());
        }
    }
}

#[test]
fn vsock_both_ways_through_qemu_tcg_with_our_vhost_user_backend() {
    let kernel = vsock_vm::guest_kernel();
    let init = vsock_vm::guest_bin("vsock_echo");
    let crosvm = cros_e2e::bin("crosvm");
    let keep = KeepOnPanic(Some(
        tempfile::Builder::new()
            .prefix("crosd-vsock-qemu-")
            .tempdir()
            .unwrap(),
    ));
    let dir = keep.0.as_ref().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    vsock_vm::build_probe_initramfs(&init, &kernel, &initrd);
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();

    // Guest → host listeners exist before the guest boots and dials.
    let uds = run_dir.join("vsock.sock");
    let boot_dial = listen_host_port(&uds, BOOT_DIAL_PORT);
    let control_dial = listen_host_port(&uds, CONTROL_DIAL_PORT);
    let boot_dial_server =
        thread::spawn(move || serve_boot_dial(&boot_dial, Duration::from_secs(180)));

    let mut vm = ProbeVm::start(ProbeVmOptions {
        name: "vsock-e2e",
        kernel: &kernel,
        initrd: &initrd,
        run_dir: &run_dir,
        vsock_backend: VhostUserVsockBackend::Crosvm { binary: crosvm },
        dial_port: Some(BOOT_DIAL_PORT),
        guest_timeout_s: 300,
    })
    .unwrap_or_else(|e| panic!("VM did not come up: {e}"));
    let qemu_pid = vm.handle.pid();

    step("boot-time dial guest → host");
    // Guest → host at boot: the host got the guest's payload, and the guest got it back intact.
    let line = vm
        .wait_console("dial port=", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains(&format!(
            "dial port={BOOT_DIAL_PORT} ok bytes={}",
            probe::DIAL_PAYLOAD_LEN
        )),
        "guest side of its dial: {line}\nconsole:\n{}",
        vsock_vm::tail(&vm.console())
    );
    let served = boot_dial_server.join().unwrap();
    assert_eq!(
        served,
        Ok(probe::DIAL_PAYLOAD_LEN),
        "host side of the guest's dial"
    );

    step("host → guest echo");
    // Host → guest: echo of a small and a large payload, then several connections at once.
    echo_round_trip(&vm, b"hello, guest\n".to_vec()).unwrap();
    echo_round_trip(&vm, probe::pattern(1 << 20)).unwrap();
    thread::scope(|s| {
        let vm = &vm;
        let workers: Vec<_> = (0..4)
            .map(|i| s.spawn(move || echo_round_trip(vm, probe::pattern(256 * 1024 + i))))
            .collect();
        for (i, w) in workers.into_iter().enumerate() {
            w.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("concurrent echo {i}: {e}"));
        }
    });

    step("bulk sink/source/dial");
    // Bulk both ways with every byte checked by the receiving side.
    send_to_sink(&vm, 4 << 20, 64 * 1024).unwrap_or_else(|e| panic!("host → guest sink: {e}"));
    read_from_source(&vm, 4 << 20, 64 * 1024, true)
        .unwrap_or_else(|e| panic!("guest → host source: {e}"));
    guest_dial_send(&vm, &control_dial, CONTROL_DIAL_PORT, 2 << 20, true)
        .unwrap_or_else(|e| panic!("guest-initiated guest → host: {e}"));

    step("CONNECT 9999");
    // A port no guest listens on: the host socket is closed (EOF or reset), not left hanging.
    let mut s = std::os::unix::net::UnixStream::connect(&vm.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"CONNECT 9999\n").unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "CONNECT 9999 (no guest listener) answered {:?} instead of closing",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!(
            "CONNECT 9999 (no guest listener) was neither closed nor answered after {:?}: {e}",
            t0.elapsed()
        ),
    }
    // The refused connection did not disturb the device: the echo still works.
    echo_round_trip(&vm, b"still here\n".to_vec()).unwrap();

    step("malformed CONNECT");
    // A malformed handshake is refused without affecting the VM.
    let mut bad = std::os::unix::net::UnixStream::connect(&vm.uds).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    bad.write_all(b"CONNECT banana\n").unwrap();
    let mut buf = Vec::new();
    let _ = bad.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).starts_with("OK"),
        "a bad CONNECT line was accepted: {:?}",
        String::from_utf8_lossy(&buf)
    );
    send_to_sink(&vm, 1 << 20, 4096).unwrap_or_else(|e| panic!("sink after bad CONNECT: {e}"));

    step("quit");
    // Clean power-off on request: QEMU exits and leaves no process behind.
    vm.quit().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        vm.console().contains("quit received; powering off"),
        "{}",
        vsock_vm::tail(&vm.console())
    );
    let helpers = vm.handle.helper_pids();
    drop(vm);
    for pid in std::iter::once(qemu_pid).chain(helpers) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists after the VM stopped"
        );
    }
}

/// Boots the test guest in a temporary run directory (kept if the test fails), with or without
/// the vsock modules in its initramfs.
fn boot_probe(
    name: &str,
    with_modules: bool,
    guest_timeout_s: u32,
) -> Result<(ProbeVm, KeepOnPanic), String> {
    let kernel = vsock_vm::guest_kernel();
    let init = vsock_vm::guest_bin("vsock_echo");
    let keep = KeepOnPanic(Some(
        tempfile::Builder::new()
            .prefix("crosd-vsock-qemu-")
            .tempdir()
            .unwrap(),
    ));
    let dir = keep.0.as_ref().unwrap().path().to_path_buf();
    let initrd = dir.join("initrd.cpio");
    let modules = with_modules.then_some(kernel.modules_dir.as_path());
    vsock_vm::build_initramfs(&init, modules, &initrd);
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let vm = ProbeVm::boot(ProbeVmOptions {
        name,
        kernel: &kernel,
        initrd: &initrd,
        run_dir: &run_dir,
        vsock_backend: VhostUserVsockBackend::Crosvm {
            binary: cros_e2e::bin("crosvm"),
        },
        dial_port: None,
        guest_timeout_s,
    })?;
    Ok((vm, keep))
}

/// The guest never outlives its timeout: with nobody sending `quit`, it powers the VM off.
#[test]
fn guest_powers_off_by_itself_after_its_timeout() {
    let (mut vm, _keep) = boot_probe("vsock-timeout", true, 20).unwrap_or_else(|e| panic!("{e}"));
    vm.wait_console("ready ", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let exited = vm.handle.wait_timeout(Duration::from_secs(180)).unwrap();
    assert!(
        exited.is_some(),
        "QEMU still running long after the guest's 20 s timeout; console:\n{}",
        vsock_vm::tail(&vm.console())
    );
    let console = vm.console();
    assert!(
        console.contains("CROSD-GUEST: error: timeout: no quit within 20 s; powering off"),
        "{}",
        vsock_vm::tail(&console)
    );
}

/// A broken guest image (no modules) is reported on the console by name, and the VM ends.
#[test]
fn guest_without_its_modules_reports_the_error_and_powers_off() {
    let (mut vm, _keep) =
        boot_probe("vsock-no-modules", false, 300).unwrap_or_else(|e| panic!("{e}"));
    let exited = vm.handle.wait_timeout(Duration::from_secs(180)).unwrap();
    let console = vm.console();
    assert!(
        exited.is_some(),
        "QEMU still running; console:\n{}",
        vsock_vm::tail(&console)
    );
    assert!(
        console.contains(
            "CROSD-GUEST: error: cannot read the module load order '/lib/modules/crosd/load-order'"
        ),
        "{}",
        vsock_vm::tail(&console)
    );
    assert!(
        !console.contains("CROSD-GUEST: ready"),
        "{}",
        vsock_vm::tail(&console)
    );
}

/// tools/scripts/guest-kernel.sh: a second run is served from the cache, and the modules come
/// out decompressed in dependency order.
#[test]
fn guest_kernel_script_is_cached_and_orders_the_vsock_modules() {
    let script = vsock_vm::repo_root().join("tools/scripts/guest-kernel.sh");
    let run = || {
        let out = std::process::Command::new(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (first, _) = run();
    let (second, log) = run();
    assert_eq!(first, second, "the two runs disagree on the paths");
    assert!(log.contains("using cached"), "{log}");
    assert!(
        !log.contains("downloading"),
        "second run downloaded again: {log}"
    );
    let var = |name: &str| {
        second
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {second}"))
            .to_string()
    };
    let kernel = std::fs::read(var("KERNEL")).unwrap();
    // bzImage: "HdrS" setup header magic at 0x202.
    assert_eq!(
        kernel.get(0x202..0x206),
        Some(&b"HdrS"[..]),
        "KERNEL is not a bzImage"
    );
    assert!(var("KERNEL_RELEASE").starts_with("6.1."), "{second}");
    let modules = std::path::PathBuf::from(var("MODULES_DIR"));
    let order = std::fs::read_to_string(modules.join("load-order")).unwrap();
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(
        order,
        [
            "virtio_ring.ko",
            "virtio.ko",
            "virtio_mmio.ko",
            "vsock.ko",
            "vmw_vsock_virtio_transport_common.ko",
            "vmw_vsock_virtio_transport.ko"
        ]
    );
    for m in order {
        let bytes = std::fs::read(modules.join(m)).unwrap();
        assert_eq!(
            &bytes[..4],
            b"\x7fELF",
            "{m} is not an uncompressed ELF module"
        );
    }
}
