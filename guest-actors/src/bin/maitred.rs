//! maitred: the termina VM's init. See `cros_guest::maitred`.
//!
//! As `/init` of the initramfs it runs stage 1 (modules, root switch); as `/sbin/maitred
//! --stage2` it runs the VM. `maitred --listen unix:PATH` serves requests without being init
//! (for tests on the host).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cros_guest::cmdline::CrosdParams;
use cros_guest::maitred::handlers::{LateModules, Maitred};
use cros_guest::maitred::reaper::Reaper;
use cros_guest::maitred::services::Services;
use cros_guest::maitred::{
    CONSOLE_PREFIX, INITRAMFS_MARKER, LATE_MODULES, TOOLS_MOUNT, TOOLS_SERIAL, disks, init,
    power_button, server, stage1,
};
use cros_guest::pid1;
use cros_messages::{Addr, ports};

fn say(msg: &str) {
    pid1::console_line(CONSOLE_PREFIX, msg);
}

fn fatal(msg: &str) -> ! {
    say(&format!("fatal: {msg}; powering off"));
    pid1::power_off()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "maitred: the crosd guest init.\n\n  as /init in the initramfs: load modules, mount the root disk (serial crosd-rootfs), switch root\n  --stage2                   run the VM: mounts, vm_syslog, vshd, VmReady to host port 7777, serve vsock port 8888\n  --listen unix:PATH         serve requests on a Unix socket without being init (tests)"
        );
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--listen") {
        let Some(path) = args.get(i + 1).and_then(|a| a.strip_prefix("unix:")) else {
            eprintln!("maitred: --listen needs unix:PATH");
            std::process::exit(2);
        };
        serve_for_tests(path);
        return;
    }
    if std::process::id() == 1 && std::path::Path::new(INITRAMFS_MARKER).exists() {
        match stage1::run() {
            Ok(never) => match never {},
            Err(e) => fatal(&format!("stage 1: {e}")),
        }
    }
    stage2();
}

fn maitred_state(services: Arc<Services>, late_modules: LateModules) -> Arc<Maitred> {
    Arc::new(Maitred {
        services,
        sys_block: "/sys/block".into(),
        timezone: Default::default(),
        late_modules,
        shutdown_requested: AtomicBool::new(false),
    })
}

fn serve_for_tests(path: &str) {
    let listener = match cros_guest::vshd::listener::bind_unix(std::path::Path::new(path)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("maitred: cannot listen on {path}: {e}");
            std::process::exit(1);
        }
    };
    let maitred = maitred_state(Services::new(Reaper::start()), LateModules::none());
    // Not init: Shutdown only ends this process.
    let err = server::serve(listener, Addr::host("maitred"), maitred, |_| {
        std::process::exit(0)
    });
    eprintln!("maitred: listener failed: {err}");
    std::process::exit(1);
}

fn stage2() {
    if let Err(e) = init::mount_early() {
        fatal(&e.to_string());
    }
    pid1::attach_console();
    let params = CrosdParams::from_proc().unwrap_or_default();
    let vm = params.get("vm").unwrap_or("termina").to_string();
    init::set_hostname(&vm);
    let me = Addr::in_vm("maitred", vm.as_str());
    let services = Services::new(Reaper::start());

    // The tools image (vshd for containers, garcon) is optional for the VM shell itself.
    if let Some(dev) = disks::find_by_serial(std::path::Path::new("/sys/block"), TOOLS_SERIAL) {
        let ro = nix::mount::MsFlags::MS_RDONLY
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOSUID;
        match disks::probe(&dev) {
            Ok(Some(fs)) => {
                if let Err(e) = nix::mount::mount(
                    Some(&dev),
                    TOOLS_MOUNT,
                    Some(fs.mount_type()),
                    ro,
                    None::<&str>,
                ) {
                    say(&format!("cannot mount tools image {}: {e}", dev.display()));
                }
            }
            other => say(&format!(
                "tools image {} holds no known filesystem ({other:?})",
                dev.display()
            )),
        }
    }

    for (name, argv) in [
        ("vm_syslog", vec!["/sbin/vm_syslog".to_string()]),
        (
            "vshd",
            vec![
                "/sbin/vshd".into(),
                "--listen".into(),
                format!("vsock:{}", ports::VSHD),
            ],
        ),
    ] {
        if let Err(e) = services.start(
            name,
            argv,
            vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
        ) {
            say(&format!("cannot start {name}: {e}"));
        }
    }

    let listener =
        match vsock::VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, ports::MAITRED) {
            Ok(l) => l,
            Err(e) => fatal(&format!(
                "cannot listen on vsock port {}: {e}",
                ports::MAITRED
            )),
        };
    let ready = server::announce_ready(
        || {
            vsock::VsockStream::connect_with_cid_port(
                vsock::VMADDR_CID_HOST,
                ports::CONCIERGE_STARTUP,
            )
        },
        &me,
        50,
    );
    match ready {
        Ok(()) => say("VmReady sent"),
        Err(e) => say(&e),
    }
    // btrfs and friends load while the host finishes its side of the start (StartTermina waits).
    let maitred = maitred_state(
        services,
        LateModules::start(std::path::Path::new(LATE_MODULES)),
    );
    let watcher = maitred.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("power-button".into())
        .spawn(move || watch_power_button(&watcher))
    {
        say(&format!("power button not watched: {e}"));
    }
    let err = server::serve(listener, me, maitred, |m| m.power_off());
    fatal(&format!("vsock listener failed: {err}"));
}

/// Powers off, as a `Shutdown` request does, when the host presses the ACPI power button
/// (QEMU `system_powerdown`, `crosvm stop`). Its driver and evdev are late modules, so the
/// devices are looked for once those have loaded.
fn watch_power_button(maitred: &Maitred) {
    if let Err(e) = maitred.late_modules.wait() {
        say(&format!("power button: {e}"));
    }
    let dir = std::path::Path::new(power_button::INPUT_DIR);
    let mut buttons =
        match power_button::find_power_buttons_within(dir, std::time::Duration::from_secs(5)) {
            Ok(b) => b,
            Err(e) => {
                say(&format!("power button not watched: {e}"));
                return;
            }
        };
    let names: Vec<String> = buttons
        .iter()
        .map(|b| b.path.display().to_string())
        .collect();
    say(&format!("watching the power button ({})", names.join(", ")));
    match power_button::wait_for_press(&mut buttons) {
        // A Shutdown request got there first and is already powering off.
        Ok(_) if maitred.shutdown_requested.load(Ordering::SeqCst) => {}
        Ok(path) => {
            say(&format!(
                "power button pressed ({}): shutting down",
                path.display()
            ));
            maitred.power_off();
        }
        Err(e) => say(&format!("power button no longer watched: {e}")),
    }
}
