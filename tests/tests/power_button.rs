//! The ACPI power button end to end: the termina component (Debian's kernel, our maitred)
//! booted by the qemu hypervisor backend directly, with QEMU/TCG; `VmHandle::request_shutdown`
//! presses microvm's GED power button (QMP `system_powerdown`); Linux's `button` driver turns
//! it into KEY_POWER on an evdev device, maitred sees the press and powers off in order
//! (services stopped, sync, stateful unmounted), and QEMU exits on its own.
//!
//! Needs what tools/scripts/test.sh prepares (see tests/tests/termina.rs).

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use cros_e2e::bin;
use cros_e2e::crosd::termina_component;
use cros_hypervisor::{DiskSpec, Hypervisor, QemuBackend, VmSpec, VsockSpec};
use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, read_message};
use cros_messages::maitred::MaitredEvent;
use cros_messages::termina::{ROOTFS_SERIAL, STATEFUL_SERIAL, TOOLS_SERIAL};
use cros_messages::{Addr, Body, Envelope, ports};

/// How long TCG may take to boot termina to VmReady: a hang guard, not a timing assertion.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// How long the guest may take to power off once the button is pressed: maitred stops its
/// services (3 s at most) and unmounts; a guest that ignored the button would never exit.
const POWER_OFF_DEADLINE: Duration = Duration::from_secs(120);

/// Waits for maitred's VmReady on the host side of vsock port 7777 (as concierge does).
fn wait_vm_ready(listener: &UnixListener) {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(start.elapsed() < BOOT_DEADLINE, "no VmReady from maitred");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("accept on the VmReady socket: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    handshake(&mut stream, &Addr::host("concierge")).expect("maitred's handshake");
    let env: Envelope = read_message(&mut stream, MAX_CONTROL_FRAME).expect("VmReady");
    assert!(
        matches!(env.body, Body::MaitredEvent(MaitredEvent::VmReady {})),
        "{:?}",
        env.body
    );
}

fn wait_for_console(console: &Path, line: &str, deadline: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains(line) {
            return text;
        }
        assert!(
            start.elapsed() < deadline,
            "the console never showed {line:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn power_button_makes_maitred_power_the_vm_off_in_order() {
    let component = termina_component();
    let scratch = cros_e2e::bin_dir().join("e2e/tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let dir = tempfile::tempdir_in(scratch).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let uds = run.join("vsock.sock");
    let ready =
        UnixListener::bind(format!("{}_{}", uds.display(), ports::CONCIERGE_STARTUP)).unwrap();
    // A blank stateful disk, as vmc create makes it: maitred only mounts it on request.
    let stateful = dir.path().join("stateful.img");
    std::fs::File::create(&stateful)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();

    let mut spec = VmSpec::new("termina", component.join("vm_kernel"), &run);
    spec.initrd = Some(component.join("initramfs.img"));
    spec.cmdline = "console=ttyS0 panic=-1 quiet crosd.vm=termina".into();
    spec.mem_mib = 512;
    spec.cpus = 1;
    spec.first_output_timeout = Duration::from_secs(120);
    spec.disks = vec![
        DiskSpec {
            path: component.join("vm_rootfs.img"),
            read_only: true,
            serial: Some(ROOTFS_SERIAL.into()),
            online_resize: false,
        },
        DiskSpec {
            path: component.join("vm_tools.img"),
            read_only: true,
            serial: Some(TOOLS_SERIAL.into()),
            online_resize: false,
        },
        DiskSpec {
            path: stateful,
            read_only: false,
            serial: Some(STATEFUL_SERIAL.into()),
            online_resize: true,
        },
    ];
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: uds,
    });
    let mut handle = QemuBackend::new(bin("crosvm"))
        .start(&spec)
        .expect("start termina under QEMU");
    wait_vm_ready(&ready);
    // The watcher starts once the late modules (button, evdev) have loaded.
    wait_for_console(
        &spec.console_log,
        "maitred: watching the power button",
        BOOT_DEADLINE,
    );

    let pressed = Instant::now();
    handle.request_shutdown().expect("QMP system_powerdown");
    let status = handle
        .wait_timeout(POWER_OFF_DEADLINE)
        .expect("wait for QEMU");
    let took = pressed.elapsed();
    let mut console = String::new();
    std::fs::File::open(&spec.console_log)
        .unwrap()
        .read_to_string(&mut console)
        .unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the VM did not power off within {POWER_OFF_DEADLINE:?} of the power button:\n{console}"
        )
    });
    assert!(status.success(), "QEMU ended with {status}:\n{console}");
    assert!(
        console.contains("maitred: power button pressed (/dev/input/event"),
        "{console}"
    );
    assert!(
        console.contains("shutting down"),
        "maitred's orderly shutdown is on the console:\n{console}"
    );
    eprintln!("power button to QEMU exit (TCG): {took:?}");
}
