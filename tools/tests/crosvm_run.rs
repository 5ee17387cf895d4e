//! `crosvm run` as a process on /dev/kvm with the freestanding payloads of vmm/tests/payloads:
//! exit status, serial log, error messages, and `--help`. Without /dev/kvm the KVM tests fail
//! and say why.

#[path = "../../vmm/tests/support/payload.rs"]
mod payload;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use payload::{build_payload, require_kvm};

const CROSVM: &str = env!("CARGO_BIN_EXE_crosvm");

fn crosvm(args: &[&str]) -> Output {
    Command::new(CROSVM)
        .args(args)
        .output()
        .expect("cannot start crosvm")
}

#[test]
fn run_probe_payload_exits_zero_with_the_serial_log() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let payload = build_payload(dir.path(), "probe");
    let log = dir.path().join("serial.log");
    let out = crosvm(&[
        "run",
        "--cpus",
        "2",
        "--mem",
        "128",
        "--kernel",
        payload.to_str().unwrap(),
        "--params",
        "console=ttyS0",
        "--serial-log",
        log.to_str().unwrap(),
        "--virtio-rng",
        "3",
    ]);
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "status {:?}\nstderr: {}\nserial: {serial}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        serial.contains("payload: hello from 64-bit mode\n"),
        "{serial}"
    );
    assert!(
        serial.contains("virtio-mmio windows: 0x00000003\n"),
        "{serial}"
    );
    assert!(serial.contains("virtio-rng: request ok\n"), "{serial}");
    assert!(!serial.contains("BAD"), "{serial}");
    assert!(
        serial.ends_with("payload: failures 0x00000000\n"),
        "{serial}"
    );
    // The serial log went to the file, not stdout.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn run_without_serial_log_prints_the_console_on_stdout() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let payload = build_payload(dir.path(), "probe");
    let out = crosvm(&["run", "--mem", "32", "--kernel", payload.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("payload: hello from 64-bit mode\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("virtio-mmio windows: 0x00000000\n"),
        "{stdout}"
    );
}

#[test]
fn run_triple_fault_exits_non_zero_with_a_clear_message() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let payload = build_payload(dir.path(), "triple_fault");
    let out = crosvm(&["run", "--kernel", payload.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("vCPU 0 triple-faulted"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "payload: about to fault\n"
    );
}

#[test]
fn run_missing_kernel_names_the_path() {
    let out = crosvm(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Without /dev/kvm the VMM stops earlier, at opening KVM; both name what is wrong.
    assert!(
        stderr.contains("cannot open kernel /nonexistent/vmlinux") || stderr.contains("/dev/kvm"),
        "{stderr}"
    );
}

#[test]
fn run_help_documents_every_flag() {
    let out = crosvm(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cpus",
        "--mem",
        "--kernel",
        "--initrd",
        "--params",
        "--serial-log",
        "--virtio-rng",
        "--block",
        "--pmem",
        "--cid",
        "--vsock-uds",
        "--socket",
        "--no-seccomp",
        "--stop-timeout",
    ] {
        let line = help
            .lines()
            // Option lines are indented 6 spaces, their descriptions 10.
            .position(|l| l.starts_with(&format!("      {flag}")))
            .unwrap_or_else(|| panic!("{flag} missing from:\n{help}"));
        // The line after the flag is its description.
        let desc = help.lines().nth(line + 1).unwrap_or("").trim();
        assert!(!desc.is_empty(), "{flag} has no description:\n{help}");
    }
}

#[test]
fn run_rejects_zero_cpus() {
    let out = crosvm(&["run", "--cpus", "0", "--kernel", "/x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cpus"));
}

#[test]
fn probe_says_whether_a_stock_kernel_can_boot() {
    require_kvm();
    let out = crosvm(&["probe"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        assert!(stdout.starts_with("ok: "), "{stdout}");
    } else {
        // The nested /dev/kvm of the build machines: the reason names the instruction.
        assert!(
            stderr.contains("cannot run") && stderr.contains("stock Linux kernel"),
            "{stderr}"
        );
    }
}

/// Starts `crosvm run` on `payload` with a control socket (and `extra` flags), its stderr
/// piped, and waits until the guest has printed `ready` (its whole serial output so far).
fn start_with_control(
    dir: &Path,
    payload: &str,
    ready: &str,
    extra: &[&str],
) -> (std::process::Child, PathBuf) {
    start_with_control_under_umask(dir, payload, ready, extra, 0o022)
}

/// [`start_with_control`] with the VMM started under `umask`.
fn start_with_control_under_umask(
    dir: &Path,
    payload: &str,
    ready: &str,
    extra: &[&str],
    umask: libc::mode_t,
) -> (std::process::Child, PathBuf) {
    use std::os::unix::process::CommandExt;
    let payload = build_payload(dir, payload);
    let ctrl = dir.join("ctrl.sock");
    let log = dir.join("serial.log");
    let mut command = Command::new(CROSVM);
    // SAFETY: umask(2) is async-signal-safe and touches nothing the parent shares.
    unsafe {
        command.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    let vm = command
        .args(["run", "--mem", "32", "--kernel"])
        .arg(&payload)
        .arg("--socket")
        .arg(&ctrl)
        .arg("--serial-log")
        .arg(&log)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start crosvm run");
    // A hang guard, not a timing assertion.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // The socket file exists from bind(); connects are refused until listen(). The log is
    // checked first so that the control socket sees one probe, not one per poll.
    while !(std::fs::read_to_string(&log).is_ok_and(|s| s == ready)
        && std::os::unix::net::UnixStream::connect(&ctrl).is_ok())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "VM never got ready: {:?}",
            std::fs::read_to_string(&log)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (vm, ctrl)
}

/// `crosvm stop` presses the power button and returns only once the VMM has exited; the
/// payload powered off on its own, so the VMM exits 0 and says so.
#[test]
fn status_and_stop_through_the_control_socket() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, ctrl) = start_with_control(dir.path(), "power_button", "ready\n", &[]);
    let ctrl = ctrl.to_str().unwrap();
    let out = crosvm(&["status", ctrl]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "Running");
    // The main thread runs the event loop under its own filter (Seccomp: 2 is filter mode).
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", vm.id())).unwrap();
    assert!(
        proc_status.lines().any(|l| l == "Seccomp:\t2"),
        "{proc_status}"
    );
    assert_eq!(status["pid"], vm.id());
    assert_eq!(status["vcpus"], 1);
    assert_eq!(status["memory_mib"], 32);
    let out = crosvm(&["stop", ctrl]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = vm.try_wait().unwrap();
    assert!(
        status.is_some(),
        "crosvm stop returned before the VMM exited"
    );
    let out = vm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("shut down in answer to the power button"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("serial.log")).unwrap(),
        "ready\npower button pressed\n"
    );
    // Nothing listens any more: a clear error naming the socket.
    let out = crosvm(&["status", ctrl]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(ctrl));
}

/// A guest that ignores the power button is forced off after --stop-timeout: `crosvm stop`
/// still returns once the VMM has gone, and the VMM exits 3 saying it forced the stop.
#[test]
fn stop_forces_a_guest_that_ignores_the_power_button_and_exits_3() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, ctrl) =
        start_with_control(dir.path(), "spin", "ready\n", &["--stop-timeout", "1"]);
    let out = crosvm(&["stop", ctrl.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        vm.try_wait().unwrap().is_some(),
        "crosvm stop returned before the VMM exited"
    );
    let out = vm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("VM ended: forced off"), "{stderr}");
}

/// Sends `signal` to `child`.
fn signal(child: &std::process::Child, signal: libc::c_int) {
    // SAFETY: kill(2) of our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

/// SIGTERM is a graceful stop, as `crosvm stop` is: the power button is pressed, the
/// power_button payload powers off, and the VMM exits 0.
#[test]
fn sigterm_presses_the_power_button_and_a_guest_that_answers_exits_zero() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let (vm, _ctrl) = start_with_control(dir.path(), "power_button", "ready\n", &[]);
    signal(&vm, libc::SIGTERM);
    let out = vm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(
        stderr.contains("shut down in answer to the power button"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("serial.log")).unwrap(),
        "ready\npower button pressed\n"
    );
}

/// SIGINT to a guest that ignores the power button: forced off after --stop-timeout, exit 3,
/// as for a Stop request.
#[test]
fn sigint_forces_a_guest_that_ignores_the_power_button_and_exits_3() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let (vm, _ctrl) = start_with_control(dir.path(), "spin", "ready\n", &["--stop-timeout", "1"]);
    signal(&vm, libc::SIGINT);
    let out = vm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("SIGINT received"), "{stderr}");
    assert!(stderr.contains("VM ended: forced off"), "{stderr}");
}

/// Every control request is carried out on the main thread under its event-loop filter:
/// pause (kicking the vCPUs), resume, status and a disk resize (reading the image's size,
/// interrupting the guest), then SIGTERM; the VMM never dies of a denied call (exit 159).
#[test]
fn control_requests_run_under_the_event_loop_filter() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let block = format!("{}", disk.display());
    let (vm, ctrl) = start_with_control(
        dir.path(),
        "spin",
        "ready\n",
        &["--block", &block, "--stop-timeout", "1"],
    );
    let ctrl = ctrl.to_str().unwrap();
    let ok = |args: &[&str]| {
        let out = crosvm(args);
        assert!(
            out.status.success(),
            "crosvm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    ok(&["pause", ctrl]);
    let status: serde_json::Value = serde_json::from_slice(&ok(&["status", ctrl])).unwrap();
    assert_eq!(status["state"], "Paused");
    ok(&["resume", ctrl]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(8192)
        .unwrap();
    ok(&["resize-disk", ctrl, "0", "8192"]);
    signal(&vm, libc::SIGTERM);
    let out = vm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("seccomp"), "{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("disk resized"), "{stderr}");
}

/// The control socket and the hybrid vsock socket are 0600 even when the VMM starts under
/// umask 0: their mode is set at bind(), with no moment at which another user could connect.
#[test]
fn control_socket_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let vsock = ["--cid", "3", "--vsock-uds", uds.to_str().unwrap()];
    let (vm, ctrl) =
        start_with_control_under_umask(dir.path(), "power_button", "ready\n", &vsock, 0);
    let mode = std::fs::metadata(&ctrl).unwrap().permissions().mode() & 0o777;
    let vsock_mode = std::fs::metadata(&uds).unwrap().permissions().mode() & 0o777;
    // A file the VMM creates itself follows the umask: the test did set it.
    let log_mode = std::fs::metadata(dir.path().join("serial.log"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    signal(&vm, libc::SIGTERM);
    let out = vm.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(log_mode, 0o666);
    assert_eq!(mode, 0o600);
    assert_eq!(vsock_mode, 0o600);
}

/// The vsock device thread runs under its own seccomp filter, started with the VM: the guest
/// starts the device (DRIVER_OK on a vCPU thread, whose filter allows no new threads or
/// sockets), resets it (on the vCPU thread: the connections go, the host socket stays bound)
/// and starts it again, a host client connects and sends its CONNECT line (the thread accepts and reads
/// it), and the VM still stops cleanly instead of dying of a denied system call (exit 159).
#[test]
fn vsock_device_thread_serves_under_its_seccomp_filter() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let (vm, ctrl) = start_with_control(
        dir.path(),
        "vsock_activate",
        "vsock driver ok\nvsock driver ok\nready\n",
        &["--cid", "3", "--vsock-uds", uds.to_str().unwrap()],
    );
    let mut host = std::os::unix::net::UnixStream::connect(&uds)
        .expect("the device still listens after the guest reset it");
    host.write_all(b"CONNECT 1234\n").unwrap();
    let out = crosvm(&["stop", ctrl.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("seccomp"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("serial.log")).unwrap(),
        "vsock driver ok\nvsock driver ok\nready\npower button pressed\n"
    );
}

/// Every thread of `crosvm vhost-user-vsock` runs under the seccomp filter once a frontend
/// has connected (Seccomp: 2 in /proc/PID/task/*/status), and the backend still cleans up and
/// exits 0, under the filter, when the frontend hangs up.
#[test]
fn vhost_user_vsock_backend_confines_every_thread_once_connected() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhost.sock");
    let mut backend = Command::new(CROSVM)
        .args(["vhost-user-vsock", "--guest-cid", "3", "--socket"])
        .arg(&sock)
        .arg("--uds-path")
        .arg(dir.path().join("vsock.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start crosvm vhost-user-vsock");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(backend.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("listening on"), "{line:?}");
    let frontend = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let seccomp_modes = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", backend.id()))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Seccomp:").map(|m| m.trim().to_string()))
            })
            .collect()
    };
    // A hang guard, not a timing assertion.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let modes = seccomp_modes();
        if modes.len() >= 2 && modes.iter().all(|m| m == "2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "threads not all filtered: {modes:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(frontend);
    let out = backend.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!sock.exists(), "the backend removes its socket");
}

/// `crosvm stop` on a socket nobody serves names the socket.
#[test]
fn stop_without_a_vmm_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = dir.path().join("nobody.sock");
    let out = crosvm(&["stop", ctrl.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(ctrl.to_str().unwrap()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crosvm_backend_starts_a_vm_and_the_control_socket_stops_it() {
    use cros_hypervisor::{CrosvmBackend, DiskSpec, Hypervisor, VmSpec};
    use cros_messages::crosvm::CrosvmRequest;
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    // The payload powers off when the stop below presses its power button.
    let kernel = build_payload(dir.path(), "power_button");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut spec = VmSpec::new("payload", &kernel, dir.path().join("run"));
    spec.mem_mib = 64;
    spec.cpus = 1;
    spec.disks = vec![DiskSpec {
        path: disk,
        read_only: true,
        serial: Some("payload-disk".into()),
        online_resize: false,
    }];
    let backend = CrosvmBackend::new(CROSVM);
    assert_eq!(backend.name(), "crosvm");
    // Returns once the guest has printed on its console.
    let mut handle = backend.start(&spec).expect("crosvm backend start");
    assert_eq!(
        std::fs::read_to_string(&spec.console_log).unwrap(),
        "ready\n"
    );
    let reply = cros_vmm::control::send_request(
        &CrosvmBackend::control_socket(&spec),
        CrosvmRequest::Status {},
    )
    .unwrap();
    assert!(
        format!("{reply:?}").contains(&format!("pid: {}", handle.pid())),
        "{reply:?}"
    );
    cros_vmm::control::send_request(
        &CrosvmBackend::control_socket(&spec),
        CrosvmRequest::Stop {},
    )
    .unwrap();
    assert!(handle.wait().unwrap().success());
}

#[test]
fn stdin_reaches_the_guest_serial_port() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let payload = build_payload(dir.path(), "echo");
    let mut vm = Command::new(CROSVM)
        .args(["run", "--mem", "32", "--kernel"])
        .arg(&payload)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start crosvm run");
    // The byte waits in the UART's receive FIFO until the guest reads it.
    vm.stdin.take().unwrap().write_all(b"x").unwrap();
    let out = vm.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\ngot x\n");
}
