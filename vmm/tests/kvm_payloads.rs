//! KVM tests of `crosvm run`'s library entry point with freestanding guest payloads
//! (vmm/tests/payloads/*.S, assembled here with binutils). They need /dev/kvm: where it cannot
//! be opened they fail and say why, they never pass without running a guest.

#[path = "support/netns.rs"]
mod netns;
#[path = "support/payload.rs"]
mod payload;

use std::path::{Path, PathBuf};

use cros_vmm::run::{SerialOutput, VmConfig, VmExit, VmmError, run};
use payload::{build_flat_payload, build_payload, require_kvm};

fn config(kernel: PathBuf, serial_log: &Path) -> VmConfig {
    VmConfig::new(kernel, 64, SerialOutput::File(serial_log.to_owned()))
}

/// A temporary directory, the serial log in it, and a VM running payload `name` (built there)
/// with its console to that log; fails the test without /dev/kvm.
fn payload_vm(name: &str) -> (tempfile::TempDir, PathBuf, VmConfig) {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let cfg = config(build_payload(dir.path(), name), &log);
    (dir, log, cfg)
}

/// Runs the probe payload with `rng` virtio-rng devices and returns its serial output.
fn run_probe(cpus: u8, mem_mib: u64, rng: usize) -> String {
    let (_dir, log, mut cfg) = payload_vm("probe");
    cfg.cpus = cpus;
    cfg.mem_mib = mem_mib;
    cfg.virtio_rng = rng;
    let exit = run(&cfg);
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    match exit {
        Ok(VmExit::GuestReset) => serial,
        other => panic!("VM did not reset: {other:#?}\nserial output:\n{serial}"),
    }
}

fn assert_probe_output(serial: &str, windows: usize) {
    let lines: Vec<&str> = serial.lines().collect();
    let has = |want: &str| lines.contains(&want);
    let starts = |prefix: &str, suffix: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(prefix) && l.ends_with(suffix))
    };
    assert!(has("payload: hello from 64-bit mode"), "{serial}");
    assert!(has("acpi: RSDP at 0x000e0000 ok"), "{serial}");
    assert!(has("acpi: zero page RSDP address ok"), "{serial}");
    for table in ["XSDT", "FACP", "APIC", "DSDT"] {
        assert!(
            starts(&format!("acpi: {table} len "), " ok"),
            "{table}: {serial}"
        );
    }
    for i in 0..windows {
        let want = format!(
            "virtio-mmio {:#010x} version 0x00000002 device 0x00000004 ok",
            0xd000_0000u64 + 0x1000 * i as u64
        );
        assert!(has(&want), "missing {want:?} in:\n{serial}");
    }
    assert!(
        has(&format!("virtio-mmio windows: {windows:#010x}")),
        "{serial}"
    );
    assert_eq!(
        has("virtio-rng: request ok"),
        windows > 0,
        "rng request result: {serial}"
    );
    assert!(!serial.contains("BAD"), "{serial}");
    assert_eq!(
        lines.last(),
        Some(&"payload: failures 0x00000000"),
        "{serial}"
    );
}

#[test]
fn probe_payload_checks_acpi_and_virtio_windows_then_resets() {
    let serial = run_probe(1, 64, 2);
    assert_probe_output(&serial, 2);
}

#[test]
fn probe_payload_without_virtio_devices_finds_no_windows() {
    let serial = run_probe(1, 64, 0);
    assert_probe_output(&serial, 0);
}

#[test]
fn probe_payload_runs_without_seccomp_too() {
    let (_dir, log, mut cfg) = payload_vm("probe");
    cfg.virtio_rng = 1;
    cfg.seccomp = false;
    assert_eq!(run(&cfg).unwrap(), VmExit::GuestReset);
    assert_probe_output(&std::fs::read_to_string(&log).unwrap(), 1);
}

#[test]
fn probe_payload_with_two_vcpus_and_ram_above_4gib() {
    // 4 GiB of RAM: part of it is placed above the MMIO hole (mapped lazily, so cheap).
    let serial = run_probe(2, 4096, 1);
    assert_probe_output(&serial, 1);
}

#[test]
fn triple_fault_is_a_fatal_error_with_the_guest_rip() {
    let (_dir, log, cfg) = payload_vm("triple_fault");
    match run(&cfg) {
        Err(VmmError::TripleFault { cpu: 0, rip }) => {
            assert!(rip.starts_with("0x2000"), "rip {rip}")
        }
        other => panic!("expected a triple fault, got {other:?}"),
    }
    let serial = std::fs::read_to_string(&log).unwrap();
    assert_eq!(serial, "payload: about to fault\n");
}

#[test]
fn missing_and_invalid_kernels_are_named_in_the_error() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let missing = dir.path().join("no-such-kernel");
    let err = run(&config(missing.clone(), &log)).unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5au8; 8192]).unwrap();
    let err = run(&config(garbage.clone(), &log)).unwrap_err();
    assert!(
        matches!(err, VmmError::Loader(_)) && err.to_string().contains("garbage"),
        "{err}"
    );
}

#[test]
fn bad_configurations_are_refused_before_the_vm_starts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let kernel = dir.path().join("unused");
    let mut cfg = config(kernel.clone(), &log);
    cfg.cpus = 0;
    assert!(matches!(run(&cfg), Err(VmmError::Config(_))));
    let mut cfg = config(kernel.clone(), &log);
    cfg.virtio_rng = 30;
    assert!(matches!(run(&cfg), Err(VmmError::Config(_))));
    require_kvm();
    let mut cfg = config(build_payload(dir.path(), "probe"), &log);
    cfg.mem_mib = 1;
    let result = run(&cfg);
    assert!(matches!(result, Err(VmmError::Memory(_))), "{result:?}");
}

/// A disk whose sector 0 starts with a line the payload prints, the rest filled with 0x11.
fn make_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let mut bytes = b"hello from the host disk\n".to_vec();
    bytes.resize(512, 0);
    bytes.resize(4 * 512, 0x11);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn run_blk(read_only: bool, serial: Option<&str>) -> (String, Vec<u8>, PathBuf, tempfile::TempDir) {
    let (dir, log, mut cfg) = payload_vm("blk");
    let disk = make_disk(dir.path());
    cfg.block = vec![cros_vmm::run::BlockConfig {
        path: disk.clone(),
        read_only,
        serial: serial.map(str::to_owned),
    }];
    // An rng after the disk: the payload must pick the block device by its id.
    cfg.virtio_rng = 1;
    let exit = run(&cfg);
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        matches!(exit, Ok(VmExit::GuestReset)),
        "{exit:?}\nserial:\n{serial}"
    );
    let bytes = std::fs::read(&disk).unwrap();
    (serial, bytes, disk, dir)
}

#[test]
fn blk_payload_reads_and_writes_the_host_file() {
    use std::os::unix::fs::MetadataExt;
    let (serial, bytes, disk, _dir) = run_blk(false, None);
    let lines: Vec<&str> = serial.lines().collect();
    let meta = std::fs::metadata(&disk).unwrap();
    let id = format!("virtio-blk: id {}:{}", meta.dev(), meta.ino());
    for want in [
        "virtio-blk: device at 0xd0000000",
        "virtio-blk: get-id status 0x00000000",
        id.as_str(),
        "virtio-blk: read status 0x00000000",
        "virtio-blk: sector 0: hello from the host disk",
        "virtio-blk: write status 0x00000000",
        "virtio-blk: flush status 0x00000000",
        "payload: done",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{serial}");
    }
    let mut want_sector1 = b"written by the guest\n".to_vec();
    want_sector1.resize(512, 0);
    assert_eq!(&bytes[512..1024], &want_sector1[..]);
    // Only sector 1 changed.
    assert!(bytes.starts_with(b"hello from the host disk\n"));
    assert!(bytes[1024..].iter().all(|&b| b == 0x11));
}

#[test]
fn blk_payload_cannot_write_a_read_only_disk() {
    let (serial, bytes, _disk, _dir) = run_blk(true, Some("crosvm-test-disk"));
    // GET_ID answers with the configured serial.
    assert!(
        serial.contains("virtio-blk: id crosvm-test-disk\n"),
        "{serial}"
    );
    assert!(
        serial.contains("virtio-blk: read status 0x00000000\n"),
        "{serial}"
    );
    assert!(
        serial.contains("virtio-blk: write status 0x00000001\n"),
        "write must fail with IOERR: {serial}"
    );
    assert!(bytes[512..].iter().all(|&b| b == 0x11), "disk was modified");
}

#[test]
fn missing_disk_image_is_named_in_the_error() {
    let (dir, _log, mut cfg) = payload_vm("probe");
    let missing = dir.path().join("no-such-disk.img");
    cfg.block = vec![cros_vmm::run::BlockConfig {
        path: missing.clone(),
        read_only: false,
        serial: None,
    }];
    let err = run(&cfg).unwrap_err();
    let chain = format!("{err}");
    assert!(chain.contains(&missing.display().to_string()), "{chain}");
}

#[test]
fn stock_kernel_probe_runs_and_names_what_fails() {
    require_kvm();
    // Both answers are real outcomes (hardware KVM passes; the nested /dev/kvm of the build
    // machines fails); anything else means the probe itself is broken.
    match cros_vmm::probe::probe_stock_kernel_boot() {
        Ok(()) => eprintln!("this /dev/kvm can run a stock kernel's early instructions"),
        Err(e @ cros_vmm::probe::ProbeError::Instruction { .. }) => {
            let text = e.to_string();
            assert!(text.contains("stock Linux kernel"), "{text}");
            assert!(text.contains("guest rip 0x2000"), "{text}");
            eprintln!("probe: {text}");
        }
        Err(e) => panic!("the probe did not run: {e:?}"),
    }
}

/// A minimal bzImage around the probe payload: a setup part of 5 sectors whose header
/// (boot protocol 2.15, loaded high at 1 MiB) the loader checks and copies into the zero
/// page, then the protected-mode part whose 64-bit entry point (offset 0x200) is the payload.
fn build_bzimage(dir: &Path) -> PathBuf {
    let flat = build_flat_payload(dir, "probe", 0x10_0200);
    let setup_sects = 4u8;
    let mut image = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    image[0x1f1] = setup_sects;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image.extend_from_slice(&[0xf4; 0x200]); // the 32-bit entry we do not use: hlt
    image.extend_from_slice(&std::fs::read(&flat).unwrap());
    let path = dir.join("bzImage");
    std::fs::write(&path, image).unwrap();
    path
}

#[test]
fn bzimage_is_entered_at_its_64_bit_entry_point() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let mut cfg = config(build_bzimage(dir.path()), &log);
    cfg.virtio_rng = 1;
    cfg.params = "console=ttyS0".into();
    let exit = run(&cfg);
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(matches!(exit, Ok(VmExit::GuestReset)), "{exit:?}\n{serial}");
    assert_probe_output(&serial, 1);
}

/// Waits (up to 20 s, a hang guard) until `cond` holds.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether a Unix socket accepts connections: its file appears at bind(), before listen().
fn listening(path: &std::path::Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[test]
fn control_socket_status_pause_resume_stop() {
    use cros_messages::crosvm::{CrosvmReply, CrosvmRequest, VmRunState};
    use cros_vmm::control::{ControlError, send_request};
    let (dir, log, mut cfg) = payload_vm("spin");
    let ctrl = dir.path().join("ctrl.sock");
    cfg.cpus = 2;
    cfg.control_socket = Some(ctrl.clone());
    // spin ignores the power button: the stop below is forced after this.
    cfg.stop_timeout = std::time::Duration::from_millis(200);
    let vm = std::thread::spawn(move || run(&cfg));
    wait_until("the guest to print ready", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s == "ready\n")
    });
    wait_until("the control socket", || listening(&ctrl));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&ctrl).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let state = |ctrl: &Path| match send_request(ctrl, CrosvmRequest::Status {}).unwrap() {
        CrosvmReply::Status {
            state,
            pid,
            vcpus,
            memory_mib,
        } => {
            assert_eq!((pid, vcpus, memory_mib), (std::process::id(), 2, 64));
            state
        }
        other => panic!("status answered {other:?}"),
    };
    assert_eq!(state(&ctrl), VmRunState::Running);
    assert_eq!(
        send_request(&ctrl, CrosvmRequest::Pause {}).unwrap(),
        CrosvmReply::Ack {}
    );
    assert_eq!(state(&ctrl), VmRunState::Paused);
    assert_eq!(
        send_request(&ctrl, CrosvmRequest::Resume {}).unwrap(),
        CrosvmReply::Ack {}
    );
    assert_eq!(state(&ctrl), VmRunState::Running);
    match send_request(
        &ctrl,
        CrosvmRequest::ResizeDisk {
            index: 0,
            size: 1 << 30,
        },
    ) {
        // This VM has no disks.
        Err(ControlError::Refused(e)) => {
            assert_eq!(e.kind, cros_messages::ErrorKind::NotFound);
            assert!(e.message.contains("no disk 0: the VM has 0"), "{e:?}");
        }
        other => panic!("resize answered {other:?}"),
    }
    // Pause, then stop: parked vCPUs must still see the stop.
    send_request(&ctrl, CrosvmRequest::Pause {}).unwrap();
    assert_eq!(
        send_request(&ctrl, CrosvmRequest::Stop {}).unwrap(),
        CrosvmReply::Ack {}
    );
    assert_eq!(vm.join().unwrap().unwrap(), VmExit::StopForced);
    assert!(!ctrl.exists(), "the socket is removed when the VM ends");
}

#[test]
fn control_socket_path_that_is_a_file_is_refused() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let ctrl = dir.path().join("not-a-socket");
    std::fs::write(&ctrl, "keep me").unwrap();
    let mut cfg = config(build_payload(dir.path(), "spin"), &log);
    cfg.control_socket = Some(ctrl.clone());
    let err = run(&cfg).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&ctrl).unwrap(), "keep me");
}

fn run_pmem(read_only: bool) -> (String, Vec<u8>, tempfile::TempDir) {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let image = dir.path().join("pmem.img");
    let mut bytes = b"hello from the pmem image\n".to_vec();
    bytes.resize(2 << 20, 0);
    std::fs::write(&image, bytes).unwrap();
    let mut cfg = config(build_payload(dir.path(), "pmem"), &log);
    // A disk first: the payload must find the pmem device by its id.
    let disk = make_disk(dir.path());
    cfg.block = vec![cros_vmm::run::BlockConfig {
        path: disk,
        read_only: true,
        serial: None,
    }];
    cfg.pmem = vec![cros_vmm::run::BlockConfig {
        path: image.clone(),
        read_only,
        serial: None,
    }];
    let exit = run(&cfg);
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        matches!(exit, Ok(VmExit::GuestReset)),
        "{exit:?}\nserial:\n{serial}"
    );
    let bytes = std::fs::read(&image).unwrap();
    (serial, bytes, dir)
}

#[test]
fn pmem_payload_reads_and_writes_the_mapped_image_and_flushes() {
    let (serial, bytes, _dir) = run_pmem(false);
    for want in [
        // 64 MiB of RAM: the region starts at 4 GiB.
        "virtio-pmem: region 0x000000010x00000000 size 0x00200000",
        "virtio-pmem: first line: hello from the pmem image",
        "virtio-pmem: flush response 0x00000000",
        "payload: done",
    ] {
        assert!(
            serial.lines().any(|l| l == want),
            "missing {want:?} in:\n{serial}"
        );
    }
    assert_eq!(&bytes[4096..4096 + 21], b"written by the guest\n");
    assert_eq!(bytes.len(), 2 << 20);
}

#[test]
fn read_only_pmem_keeps_the_image() {
    let (serial, bytes, _dir) = run_pmem(true);
    assert!(
        serial.contains("virtio-pmem: first line: hello from the pmem image\n"),
        "{serial}"
    );
    assert!(
        bytes[4096..8192].iter().all(|&b| b == 0),
        "the image was modified"
    );
}

#[test]
fn vsock_device_is_probed_in_its_window_and_listens_on_the_host_socket() {
    use cros_messages::crosvm::CrosvmRequest;
    use cros_vmm::devices::vsock::VsockConfig;
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let vsock = VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    };

    // The probe payload finds the vsock device (id 19) in the window after the disk's.
    let log = dir.path().join("probe.log");
    let mut cfg = config(build_payload(dir.path(), "probe"), &log);
    cfg.block = vec![cros_vmm::run::BlockConfig {
        path: make_disk(dir.path()),
        read_only: true,
        serial: None,
    }];
    cfg.vsock = Some(vsock.clone());
    assert_eq!(run(&cfg).unwrap(), VmExit::GuestReset);
    let serial = std::fs::read_to_string(&log).unwrap();
    for want in [
        "virtio-mmio 0xd0000000 version 0x00000002 device 0x00000002 ok",
        "virtio-mmio 0xd0001000 version 0x00000002 device 0x00000013 ok",
        "virtio-mmio windows: 0x00000002",
        "payload: failures 0x00000000",
    ] {
        assert!(
            serial.lines().any(|l| l == want),
            "missing {want:?}:\n{serial}"
        );
    }

    // While a VM runs, host clients reach the device's socket.
    let log = dir.path().join("spin.log");
    let ctrl = dir.path().join("ctrl.sock");
    let mut cfg = config(build_payload(dir.path(), "spin"), &log);
    cfg.vsock = Some(vsock);
    cfg.control_socket = Some(ctrl.clone());
    cfg.stop_timeout = std::time::Duration::ZERO;
    let vm = std::thread::spawn(move || run(&cfg));
    wait_until("the control socket", || listening(&ctrl));
    wait_until("the vsock host socket", || {
        std::os::unix::net::UnixStream::connect(&uds).is_ok()
    });
    cros_vmm::control::send_request(&ctrl, CrosvmRequest::Stop {}).unwrap();
    assert_eq!(vm.join().unwrap().unwrap(), VmExit::StopForced);
}

#[test]
fn acpi_sleep_control_powers_off_and_reset_register_resets() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let payload = build_payload(dir.path(), "acpi_exit");
    let mut cfg = config(payload.clone(), &log);
    cfg.params = "poweroff".into();
    assert_eq!(run(&cfg).unwrap(), VmExit::GuestPowerOff);
    let mut cfg = config(payload, &log);
    cfg.params = "reset".into();
    assert_eq!(run(&cfg).unwrap(), VmExit::GuestReset);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "A\nA\n");
}

/// Starts `payload` with a control socket and `stop_timeout`, waits for "ready" on its serial
/// port, sends Stop, and returns how the VM ended, its serial output and how long after the
/// Stop request the VM ended.
fn stop_payload(
    payload: &str,
    stop_timeout: std::time::Duration,
) -> (VmExit, String, std::time::Duration) {
    use cros_messages::crosvm::{CrosvmReply, CrosvmRequest};
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let ctrl = dir.path().join("ctrl.sock");
    let mut cfg = config(build_payload(dir.path(), payload), &log);
    cfg.control_socket = Some(ctrl.clone());
    cfg.stop_timeout = stop_timeout;
    let vm = std::thread::spawn(move || run(&cfg));
    wait_until("the guest to print ready", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.starts_with("ready\n"))
    });
    wait_until("the control socket", || listening(&ctrl));
    let asked = std::time::Instant::now();
    assert_eq!(
        cros_vmm::control::send_request(&ctrl, CrosvmRequest::Stop {}).unwrap(),
        CrosvmReply::Ack {}
    );
    let exit = vm.join().unwrap().unwrap();
    let took = asked.elapsed();
    (exit, std::fs::read_to_string(&log).unwrap(), took)
}

/// Stop presses the ACPI power button: the payload sees the GED event, says so and powers off
/// through S5 on its own, so the VM ends as a guest power-off, not a forced stop.
#[test]
fn stop_presses_the_power_button_and_the_guest_powers_off() {
    let (exit, serial, took) = stop_payload("power_button", std::time::Duration::from_secs(60));
    assert_eq!(exit, VmExit::GuestPowerOff, "{serial}");
    assert_eq!(serial, "ready\npower button pressed\n");
    eprintln!("stop request to guest power-off: {took:?}");
}

/// A guest that ignores the power button is forced off once the stop timeout has passed.
#[test]
fn guest_that_ignores_the_power_button_is_forced_off_after_the_stop_timeout() {
    let timeout = std::time::Duration::from_millis(300);
    let (exit, serial, took) = stop_payload("spin", timeout);
    assert_eq!(exit, VmExit::StopForced);
    assert_eq!(serial, "ready\n");
    assert!(
        took >= timeout,
        "forced after {took:?}, before the {timeout:?} timeout"
    );
    eprintln!("stop request to forced stop with a {timeout:?} timeout: {took:?}");
}

/// A stop timeout of zero does not press the button: the VM is forced off at once, and the
/// payload that would have powered off never saw an event.
#[test]
fn zero_stop_timeout_forces_the_vm_off_at_once() {
    let (exit, serial, _) = stop_payload("power_button", std::time::Duration::ZERO);
    assert_eq!(exit, VmExit::StopForced);
    assert_eq!(serial, "ready\n");
}

#[test]
fn resize_disk_tells_the_guest_through_the_config_change_interrupt() {
    use cros_messages::crosvm::{CrosvmReply, CrosvmRequest};
    use cros_vmm::control::{ControlError, send_request};
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let ctrl = dir.path().join("ctrl.sock");
    let disk = make_disk(dir.path());
    let read_only = dir.path().join("ro.img");
    std::fs::write(&read_only, [0u8; 512]).unwrap();
    let mut cfg = config(build_payload(dir.path(), "blk_resize"), &log);
    cfg.control_socket = Some(ctrl.clone());
    cfg.block = vec![
        cros_vmm::run::BlockConfig {
            path: disk.clone(),
            read_only: false,
            serial: None,
        },
        cros_vmm::run::BlockConfig {
            path: read_only,
            read_only: true,
            serial: None,
        },
    ];
    let vm = std::thread::spawn(move || run(&cfg));
    let serial = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the guest to print ready", || serial().contains("ready\n"));
    wait_until("the control socket", || listening(&ctrl));
    let refused = |request| match send_request(&ctrl, request) {
        Err(ControlError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Refusals change nothing the guest can see (checked below: one interrupt, one change).
    let e = refused(CrosvmRequest::ResizeDisk {
        index: 2,
        size: 8192,
    });
    assert!(e.message.contains("no disk 2"), "{e:?}");
    let e = refused(CrosvmRequest::ResizeDisk {
        index: 1,
        size: 512,
    });
    assert!(e.message.contains("read-only"), "{e:?}");
    let e = refused(CrosvmRequest::ResizeDisk {
        index: 0,
        size: 1000,
    });
    assert!(e.message.contains("multiple of 512"), "{e:?}");

    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(64 * 512)
        .unwrap();
    assert_eq!(
        send_request(
            &ctrl,
            CrosvmRequest::ResizeDisk {
                index: 0,
                size: 64 * 512
            }
        )
        .unwrap(),
        CrosvmReply::Ack {}
    );
    let exit = vm.join().unwrap();
    let serial = serial();
    assert!(
        matches!(exit, Ok(VmExit::GuestReset)),
        "{exit:?}\nserial:\n{serial}"
    );
    let lines: Vec<&str> = serial.lines().collect();
    assert_eq!(
        lines,
        [
            "virtio-blk: capacity 0x00000004",
            "virtio-blk: generation 0x00000000",
            "ready",
            "virtio-blk: interrupt status 0x00000002",
            "virtio-blk: generation 0x00000001",
            "virtio-blk: capacity 0x00000040",
            "virtio-blk: interrupt status after ack 0x00000000",
            "payload: done",
        ],
        "{serial}"
    );
}

/// The same stop, taken by interrupt as Linux's GED driver takes it: the payload routes IOAPIC
/// pin 23 (the GED's interrupt in the DSDT) to a vector, halts with interrupts on, and its
/// handler reads the GED register; so the press reaches the guest through the GED irqfd.
#[test]
fn stop_raises_the_ged_interrupt_on_ioapic_pin_23() {
    let (exit, serial, took) = stop_payload("ged_irq", std::time::Duration::from_secs(60));
    assert_eq!(exit, VmExit::GuestPowerOff, "{serial}");
    assert_eq!(serial, "ready\npower button interrupt\n");
    eprintln!("stop request to guest power-off, by interrupt: {took:?}");
}

/// virtio-net under `crosvm run`, in a network namespace the test makes: the payload sends a
/// UDP datagram through our device and the tap to a socket of the host stack, which answers;
/// the answer comes back through the tap into the payload's rx buffer.
#[test]
fn net_payload_exchanges_udp_with_the_host_through_the_tap() {
    let (_dir, log, mut cfg) = payload_vm("net");
    netns::enter_new_netns();
    let tap = "crosdpayload0";
    netns::ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
    netns::ip(&["link", "set", tap, "address", "02:00:00:77:00:01"]);
    netns::ip(&["addr", "add", "10.77.0.1/24", "dev", tap]);
    netns::ip(&["link", "set", tap, "up"]);
    netns::ip(&[
        "neigh",
        "add",
        "10.77.0.2",
        "lladdr",
        "52:54:00:77:00:02",
        "dev",
        tap,
        "nud",
        "permanent",
    ]);
    let socket = std::net::UdpSocket::bind("10.77.0.1:7777").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let host = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(b"hello guest\0", from)?;
        Ok::<_, std::io::Error>((buf[..n].to_vec(), from))
    });
    cfg.net = vec![cros_vmm::run::NetConfig {
        tap: tap.into(),
        mac: Some("52:54:00:77:00:02".parse().unwrap()),
    }];
    let exit = run(&cfg);
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        matches!(exit, Ok(VmExit::GuestReset)),
        "{exit:?}\nserial:\n{serial}"
    );
    let (got, from) = host
        .join()
        .unwrap()
        .expect("the host got the guest's datagram");
    assert_eq!(got, b"hello host");
    assert_eq!(from.to_string(), "10.77.0.2:4000");
    let lines: Vec<&str> = serial.lines().collect();
    for want in [
        "virtio-net: tx done",
        // 12-byte header + 14 + 20 + 8 + "hello guest\0".
        "virtio-net: rx used length 0x00000042",
        "virtio-net: rx payload hello guest",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{serial}");
    }
}
