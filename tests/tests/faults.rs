//! The fault suite: real crosd, real QEMU/TCG running termina, real `vmc`/`vsh`/`crosmsg`, and
//! a guest or a host that misbehaves on purpose. Each test says which faults it injects; every
//! fault ends in bounded time (the waits here are hang guards, not timing assertions), with a
//! clear error, and leaves crosd serving its other clients. RELIABILITY.md ("Fault suite") lists
//! the faults with their outcomes, and what other tests cover.
//!
//! Needs what tools/scripts/test.sh prepares (as tests/tests/termina.rs does), plus root for the
//! loop-mounted filesystem of the disk-full test.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cros_e2e::bin;
use cros_e2e::crosd::{
    Crosd, alive, assert_no_vms, qemu_pid, spawn_vmc, start_termina, text, vmc_ok, wait_for,
};

// ---- observing crosd from outside ------------------------------------------------------------

/// Every process below `root` (children, grandchildren…), as `pid comm`, sorted by comm.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut parent_of = BTreeMap::new();
    let mut comm_of = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 2..].split_whitespace();
        let state = rest.next().unwrap_or("");
        let Some(ppid) = rest.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if state != "Z" {
            parent_of.insert(pid, ppid);
            comm_of.insert(pid, stat[open + 1..close].to_string());
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&child, &parent) in &parent_of {
            if parent == p {
                found.push((child, comm_of[&child].clone()));
                frontier.push(child);
            }
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Every path under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Files under `dir` whose names say they are unfinished: crosd's partial disks, imports,
/// exports and temporary files.
fn temp_files(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            name.contains("partial") || name.contains(".import-") || name.contains(".tmp")
        })
        .collect()
}

/// What crosd holds: compared before and after a fault, it must come back to the same.
#[derive(Debug, Clone, PartialEq)]
struct Holdings {
    fds: usize,
    processes: Vec<String>,
    run_files: Vec<String>,
    temp_files: Vec<String>,
    mounts: usize,
}

fn holdings(crosd: &Crosd) -> Holdings {
    Holdings {
        fds: open_fds(crosd.pid()),
        processes: descendants(crosd.pid()).into_iter().map(|p| p.1).collect(),
        run_files: files_under(&crosd.run_dir),
        temp_files: temp_files(&crosd.state),
        mounts: mounts_under(&[&crosd.run_dir, &crosd.state]),
    }
}

/// Mounts below this crosd's run and state directories (seneschal's per-VM tmpfs and shared
/// folders): the ones it could leak. Other tests' crosds in this binary mount and unmount their
/// own at the same time, so the whole table would not do.
fn mounts_under(dirs: &[&Path]) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d)))
        .count()
}

/// Waits (a hang guard) until crosd holds what it held in `before`, or fewer descriptors (one
/// open when `before` was counted, a client's connection, may have closed since).
fn assert_holds_again(crosd: &Crosd, before: &Holdings, after_what: &str) {
    let start = Instant::now();
    loop {
        let now = holdings(crosd);
        let same_but_fds = Holdings {
            fds: before.fds,
            ..now.clone()
        };
        if now.fds <= before.fds && &same_but_fds == before {
            eprintln!("after {after_what}: holds {now:?}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "after {after_what} crosd holds {now:?}, before it held {before:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- driving the guest -------------------------------------------------------------------

/// The run directory of the one VM running (`RUN/vm.CID`).
fn vm_run_dir(crosd: &Crosd) -> Option<PathBuf> {
    std::fs::read_dir(&crosd.run_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vm."))
        })
}

/// `vsh --vm_name VM -- CMD…` in the background, stdout and stderr piped.
fn spawn_vsh(crosd: &Crosd, vm: &str, cmd: &[&str]) -> Child {
    Command::new(bin("vsh"))
        .args(["--vm_name", vm, "--"])
        .args(cmd)
        .env("CROSD_SOCKET", &crosd.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn vsh_ok(crosd: &Crosd, vm: &str, cmd: &[&str]) -> String {
    let o = crosd.run_with_stdin("vsh", &[&["--vm_name", vm, "--"], cmd].concat(), b"");
    assert!(o.status.success(), "vsh {vm} {cmd:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Copies the guest_fault test tool (stripped) into termina's /tmp over vsh.
fn install_guest_fault(crosd: &Crosd) {
    let built = cros_e2e::vsock_vm::guest_bin("guest_fault");
    let stripped = crosd.dir.path().join("guest_fault");
    let s = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&built)
        .status()
        .unwrap();
    assert!(s.success(), "strip guest_fault");
    let bytes = std::fs::read(&stripped).unwrap();
    let o = crosd.vsh(
        &[
            "sh",
            "-c",
            "cat > /tmp/guest_fault && chmod 755 /tmp/guest_fault",
        ],
        &bytes,
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// `key=value` fields of guest_fault's report line.
fn report(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(r: &BTreeMap<String, String>, key: &str) -> u64 {
    r.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("guest_fault reported no {key}: {r:?}"))
}

/// QMP `stop` on the VM's QEMU: the guest's CPUs halt, so maitred never answers and vsock
/// connections into the guest get no reply — a silent guest, without changing its software.
fn freeze(qmp: &Path) {
    cros_hypervisor::qmp::execute(qmp, "stop", serde_json::json!({}))
        .unwrap_or_else(|e| panic!("QMP stop: {e}"));
    let status = cros_hypervisor::qmp::execute(qmp, "query-status", serde_json::json!({}))
        .unwrap_or_else(|e| panic!("QMP query-status: {e}"));
    eprintln!("QEMU after QMP stop: {status}");
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---- the faults --------------------------------------------------------------------------

/// A silent maitred (the guest frozen through QMP) during boot, during a resize, a request and
/// a stop: each ends in bounded time with an error that says what timed out, and StopVm still
/// stops the VM (Shutdown times out, then the power button, then SIGTERM to QEMU).
#[test]
fn a_silent_guest_fails_boot_requests_and_resize_and_is_still_stopped() {
    let crosd = Crosd::start();
    vmc_ok(&crosd, &["create", "--size", "2G", "termina"]);

    // Boot: frozen once the kernel has written to the console (before that, a guest with no
    // console output is restarted by the QEMU backend: its TCG start-up watchdog), so maitred
    // never sends VmReady.
    let starter = spawn_vmc(
        &crosd,
        &[
            "start",
            "--no-shell",
            "--no-start-lxd",
            "--timeout",
            "20",
            "termina",
        ],
    );
    let qmp = wait_for(
        "QEMU's first console output",
        Duration::from_secs(120),
        || {
            let dir = vm_run_dir(&crosd)?;
            let written = std::fs::metadata(dir.join("console.log")).ok()?.len();
            (written > 0).then(|| dir.join("qmp.sock"))
        },
    );
    freeze(&qmp);
    let o = starter.wait_with_output().unwrap();
    assert!(
        !o.status.success(),
        "{}\ncrosd log:\n{}",
        text(&o),
        crosd.log()
    );
    let err = stderr_of(&o);
    assert!(err.contains("no VmReady within 20s"), "{}", text(&o));
    assert_no_vms(&crosd);
    assert!(
        !descendants(crosd.pid())
            .iter()
            .any(|p| p.1.contains("qemu")),
        "a failed boot left QEMU running: {:?}",
        descendants(crosd.pid())
    );

    // A booted guest, then frozen.
    start_termina(&crosd, "start for the freeze");
    let qemu = qemu_pid(&crosd);
    freeze(&vm_run_dir(&crosd).unwrap().join("qmp.sock"));

    // A request to maitred times out; crosd says so.
    let o = crosd.run(
        "crosmsg",
        &[
            "send",
            "--timeout",
            "5",
            "maitred@termina",
            r#"{"GetKernelVersion":{}}"#,
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    eprintln!("crosmsg send to a frozen maitred: {}", text(&o));
    assert!(
        stderr_of(&o).contains("within") || stderr_of(&o).contains("timed out"),
        "{}",
        text(&o)
    );
    // crosd itself answers meanwhile; the listing waits at most its short query.
    vmc_ok(&crosd, &["list"]);
    let o = crosd.run("crosmsg", &["list"]);
    assert!(o.status.success(), "{}", text(&o));

    // A shrink asks maitred for the filesystem's minimum: the VMM gives up on the guest's
    // answer to the CONNECT, crosd says so, and the disk is kept.
    let disk = crosd.state.join("disks/termina.img");
    let size = std::fs::metadata(&disk).unwrap().len();
    let o = crosd.run("vmc", &["resize", "termina", "1G"]);
    eprintln!("shrink of a frozen guest's disk: {}", text(&o));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("the guest does not answer"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), size);

    // A grow goes on in the background while the VM is stopped: the stop still stops it, and
    // the grow ends (it cannot finish without maitred).
    let grower = spawn_vmc(&crosd, &["resize", "termina", "3G"]);
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    let o = crosd.run("vmc", &["stop", "termina"]);
    eprintln!(
        "stop of a frozen guest took {:?}: {}",
        stopped.elapsed(),
        text(&o)
    );
    assert!(o.status.success(), "{}\n{}", text(&o), crosd.log());
    assert!(!alive(qemu), "QEMU (pid {qemu}) outlived vmc stop");
    assert_no_vms(&crosd);
    let log = crosd.log();
    assert!(
        log.contains("maitred Shutdown failed") && log.contains("SIGTERM"),
        "crosd says how it stopped the VM:\n{log}"
    );
    let o = grower.wait_with_output().unwrap();
    eprintln!(
        "grow of a frozen guest's disk, stopped meanwhile: {}",
        text(&o)
    );
    assert!(!o.status.success(), "{}", text(&o));

    // And the VM boots again on its disk.
    start_termina(&crosd, "start after the frozen stop");
    vsh_ok(&crosd, "termina", &["true"]);
    vmc_ok(&crosd, &["stop", "termina"]);
}

/// A guest that opens 2,000 connections to a host port, floods valid frames on another and
/// garbage on a third, then writes its console flat out: crosd stays up, a second VM and the
/// control socket keep working, crosd's descriptors come back, and the logs stay bounded.
#[test]
fn a_flooding_guest_harms_nobody_else_and_its_logs_stay_bounded() {
    let mut crosd = Crosd::start();
    start_termina(&crosd, "start termina");
    let o = crosd.run(
        "vmc",
        &[
            "start",
            "--no-shell",
            "--no-start-lxd",
            "--timeout",
            "300",
            "other",
        ],
    );
    assert!(o.status.success(), "start other: {}", text(&o));
    install_guest_fault(&crosd);
    let before = open_fds(crosd.pid());

    // 2,000 silent connections to concierge's startup port.
    let o = crosd.vsh(&["/tmp/guest_fault", "connect", "7777", "2000"], b"");
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&o);
    eprintln!("2,000 connections: {r:?}");
    let opened = field(&r, "opened");
    assert_eq!(opened + field(&r, "failed"), 2000, "{r:?}");
    assert!(
        field(&r, "closed_by_host") + 16 >= opened,
        "crosd keeps at most 16 connections a port: {r:?}"
    );
    assert!(crosd.is_running(), "crosd died:\n{}", crosd.log());

    // Valid Records requests flat out as vm_syslog, garbage flat out on 7777, for 20 s.
    let flood = spawn_vsh(
        &crosd,
        "termina",
        &[
            "/tmp/guest_fault",
            "flood",
            "9999",
            "vm_syslog",
            "termina",
            "20",
        ],
    );
    let junk = spawn_vsh(
        &crosd,
        "termina",
        &["/tmp/guest_fault", "junk", "7777", "20"],
    );
    std::thread::sleep(Duration::from_secs(3));
    // Meanwhile the other VM, the bus and the control socket answer.
    assert_eq!(vsh_ok(&crosd, "other", &["echo", "fine"]).trim(), "fine");
    let o = crosd.run("crosmsg", &["list"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("concierge"),
        "{}",
        text(&o)
    );
    vmc_ok(&crosd, &["list"]);
    let o = crosd.run(
        "crosmsg",
        &["send", "maitred@other", r#"{"GetKernelVersion":{}}"#],
    );
    assert!(o.status.success(), "{}", text(&o));
    let flood = flood.wait_with_output().unwrap();
    let junk = junk.wait_with_output().unwrap();
    assert!(flood.status.success(), "{}", text(&flood));
    assert!(junk.status.success(), "{}", text(&junk));
    let (flood, junk) = (report(&flood), report(&junk));
    eprintln!("frame flood: {flood:?}; garbage flood: {junk:?}");
    assert!(field(&flood, "frames") > 0, "{flood:?}");
    assert!(field(&junk, "connections") > 0, "{junk:?}");
    assert!(crosd.is_running(), "crosd died:\n{}", crosd.log());

    // The flooding guest still works too, and crosd lets go of what the floods opened.
    assert_eq!(vsh_ok(&crosd, "termina", &["echo", "fine"]).trim(), "fine");
    // SIGKILL of maitred from inside: the kernel does not deliver it to init.
    let o = crosd.vsh(&["kill", "-9", "1"], b"");
    eprintln!("kill -9 1 in the guest: {}", text(&o));
    let o = crosd.run(
        "crosmsg",
        &["send", "maitred@termina", r#"{"GetKernelVersion":{}}"#],
    );
    assert!(o.status.success(), "maitred after kill -9 1: {}", text(&o));
    wait_for(
        "crosd's descriptors to come back to what they were",
        Duration::from_secs(30),
        || (open_fds(crosd.pid()) <= before).then_some(()),
    );
    let logs = crosd.state.join("logs");
    for f in files_under(&logs) {
        let len = std::fs::metadata(logs.join(&f)).unwrap().len();
        eprintln!("log {f}: {len} bytes");
        assert!(len <= log_bound(&f), "{f} grew to {len} bytes");
    }

    // The console flat out: 3 MiB into ttyS0, with termina the one VM left. console.log
    // rotates at 1 MiB.
    vmc_ok(&crosd, &["stop", "other"]);
    let vm_dir = vm_run_dir(&crosd).unwrap();
    let o = crosd.vsh(
        &[
            "sh",
            "-c",
            "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz \
             | head -c 3145728 > /dev/ttyS0",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));
    let console = vm_dir.join("console.log");
    let rotated = vm_dir.join("console.log.1");
    let (len, rotated_len) = wait_for(
        "the console flood to reach the log",
        Duration::from_secs(60),
        || {
            let r = std::fs::metadata(&rotated).ok()?.len();
            Some((std::fs::metadata(&console).ok()?.len(), r))
        },
    );
    eprintln!("console after 3 MiB: console.log {len} bytes, console.log.1 {rotated_len}");
    let max = cros_hypervisor::console::MAX_CONSOLE_BYTES;
    assert!(len <= max && rotated_len <= max, "{len} / {rotated_len}");
    vmc_ok(&crosd, &["stop", "termina"]);
}

/// The bound of a log under STATE/logs: the console log's or the syslog's.
fn log_bound(name: &str) -> u64 {
    if name.contains("console") {
        cros_hypervisor::console::MAX_CONSOLE_BYTES
    } else {
        // vmlog_forwarder's MAX_LOG_BYTES (actors/src/vmlog_forwarder): 4 MiB a file.
        4 << 20
    }
}

fn cycles() -> usize {
    std::env::var("CROSD_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Start/stop cycles, a SIGKILLed QEMU and a SIGKILLed crosd: afterwards crosd holds the
/// descriptors, child processes, run-directory files and mounts it held before, no temporary
/// file is left in the state directory, and the next start works.
#[test]
fn start_stop_cycles_and_killed_processes_leak_nothing() {
    let mut crosd = Crosd::start();
    // The first start creates the disk and the log directory: count from after it.
    start_termina(&crosd, "first start");
    vmc_ok(&crosd, &["stop", "termina"]);
    let before = holdings(&crosd);
    eprintln!("before the cycles: {before:?}");
    let n = cycles();
    let started = Instant::now();
    for i in 0..n {
        start_termina(&crosd, &format!("cycle {i}"));
        vsh_ok(&crosd, "termina", &["true"]);
        vmc_ok(&crosd, &["stop", "termina"]);
        eprintln!("cycle {} of {n} done at {:?}", i + 1, started.elapsed());
    }
    assert_holds_again(&crosd, &before, &format!("{n} start/stop cycles"));

    // SIGKILL of the VMM and of each of its device backends (the vsock backend, the disk
    // backends of the root and tools images; the stateful disk is QEMU's own): noticed, the VM
    // stopped and cleaned up, and the next start works.
    for victim in [
        "qemu-system",
        "vhost-user-vsock.sock",
        "vhost-user-blk0.sock",
        "vhost-user-blk1.sock",
    ] {
        start_termina(&crosd, &format!("start before killing {victim}"));
        let running = descendants(crosd.pid());
        let (pid, _) = running
            .iter()
            .find(|(pid, _)| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(victim)
            })
            .unwrap_or_else(|| panic!("no process of the VM runs {victim}: {running:?}"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_for(
            &format!("the VM to be reported gone after SIGKILL of {victim}"),
            Duration::from_secs(30),
            || {
                String::from_utf8_lossy(&crosd.run("vmc", &["list"]).stdout)
                    .contains("no VMs are running")
                    .then_some(())
            },
        );
        assert_holds_again(&crosd, &before, &format!("SIGKILL of {victim}"));
        if victim != "qemu-system" {
            let said = "a device backend of the VM exited; stopping the VM";
            assert!(
                crosd.log().contains(said),
                "crosd says why:\n{}",
                crosd.log()
            );
        }
    }
    start_termina(&crosd, "start after the kills");
    vsh_ok(&crosd, "termina", &["true"]);

    // SIGKILL of crosd with the VM running: its QEMU dies with it (no orphan), and the next
    // crosd holds what a fresh one holds.
    let qemu = qemu_pid(&crosd);
    crosd.kill9_and_restart();
    wait_for(
        &format!("QEMU (pid {qemu}) to die with its crosd"),
        Duration::from_secs(10),
        || (!alive(qemu)).then_some(()),
    );
    start_termina(&crosd, "start after crosd was killed");
    vmc_ok(&crosd, &["stop", "termina"]);
    let after = holdings(&crosd);
    assert_eq!(
        (&after.processes, &after.temp_files, after.mounts),
        (&before.processes, &before.temp_files, before.mounts),
        "after a SIGKILL of crosd: {after:?}, before {before:?}"
    );
}

// ---- disk full ---------------------------------------------------------------------------

/// A small ext4 filesystem on a loop device, unmounted and removed on drop whatever happens.
struct LoopFs {
    image: PathBuf,
    mount: PathBuf,
}

impl LoopFs {
    /// `mib` MiB, `inodes` inodes, no blocks reserved for root (crosd runs as root).
    fn new(dir: &Path, mib: u64, inodes: u32) -> LoopFs {
        let image = dir.join("small.ext4");
        let mount = dir.join("small");
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let run = |cmd: &mut Command| {
            let o = cmd.output().unwrap();
            assert!(o.status.success(), "{cmd:?}: {}", text(&o));
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-N", &inodes.to_string()])
            .arg(&image));
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&image)
            .arg(&mount));
        LoopFs { image, mount }
    }

    /// Fills every free block with files of 4 MiB, then smaller ones: the first is 4 MiB.
    fn fill_blocks(&self) -> Vec<PathBuf> {
        let mut fillers = Vec::new();
        for chunk in [4usize << 20, 64 << 10, 4096] {
            loop {
                let p = self.mount.join(format!("filler-{}", fillers.len()));
                let Ok(mut f) = std::fs::File::create(&p) else {
                    break;
                };
                let ok = f.write_all(&vec![0x5a; chunk]).and_then(|_| f.sync_all());
                fillers.push(p);
                if ok.is_err() {
                    break;
                }
            }
        }
        fillers
    }

    /// Uses up every free inode with empty files.
    fn fill_inodes(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        loop {
            let p = self.mount.join(format!("inode-{}", files.len()));
            if std::fs::File::create(&p).is_err() {
                return files;
            }
            files.push(p);
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let o = Command::new("umount").arg(&self.mount).output();
        if !o.is_ok_and(|o| o.status.success()) {
            // Still busy (a process of a failed test): detach it lazily.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The state directory on a 96 MiB filesystem that fills up: create, export and import fail
/// with "No space left on device", nothing partial is left, the old disk is intact, and with
/// space freed the same operations work.
#[test]
fn a_full_state_filesystem_fails_create_export_and_import_cleanly() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("the disk-full test mounts a loop device: run it as root (as test.sh does)");
    }
    let scratch = tempfile::tempdir_in(cros_e2e::bin_dir()).unwrap();
    let fs = LoopFs::new(scratch.path(), 96, 256);
    let state = fs.mount.join("state");
    let crosd = Crosd::start_on_state(&state);
    let disk = state.join("disks/termina.img");
    vmc_ok(&crosd, &["create", "--size", "1G", "termina"]);
    // 24 MiB that do not compress, at the start of the disk: what the guest would have written.
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
        std::io::copy(&mut std::io::Read::take(&mut urandom, 24 << 20), &mut f).unwrap();
        f.sync_all().unwrap();
    }
    let digest = sha256(&disk);
    // An export kept off the small filesystem, to import later.
    let elsewhere = scratch.path().join("termina.zst");
    vmc_ok(&crosd, &["export", "termina", elsewhere.to_str().unwrap()]);

    let fillers = fs.fill_blocks();
    // Room for crosd's small records, not for the disk's data.
    std::fs::remove_file(&fillers[0]).unwrap();
    let exports = fs.mount.join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let target = exports.join("termina.zst");

    // Export onto the full filesystem.
    let o = crosd.run("vmc", &["export", "termina", target.to_str().unwrap()]);
    eprintln!("export to a full filesystem: {}", text(&o));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("No space left on device"),
        "{}",
        text(&o)
    );
    assert!(
        files_under(&exports).is_empty(),
        "{:?}",
        files_under(&exports)
    );

    // Import over the existing disk: the new disk cannot be written, the old one stays.
    let o = crosd.run("vmc", &["import", "termina", elsewhere.to_str().unwrap()]);
    eprintln!("import onto a full filesystem: {}", text(&o));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("No space left on device"),
        "{}",
        text(&o)
    );
    assert_eq!(
        sha256(&disk),
        digest,
        "a failed import touched the old disk"
    );
    assert!(temp_files(&state).is_empty(), "{:?}", temp_files(&state));

    // Create with no inode left.
    let inodes = fs.fill_inodes();
    let o = crosd.run("vmc", &["create", "--size", "1G", "other"]);
    eprintln!("create on a full filesystem: {}", text(&o));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("No space left on device"),
        "{}",
        text(&o)
    );
    assert!(!state.join("disks/other.img").exists());
    assert!(temp_files(&state).is_empty(), "{:?}", temp_files(&state));

    // The faults were the full filesystem: with room again, all three work.
    for f in fillers.iter().skip(1).chain(&inodes) {
        std::fs::remove_file(f).unwrap();
    }
    vmc_ok(&crosd, &["create", "--size", "1G", "other"]);
    vmc_ok(&crosd, &["export", "termina", target.to_str().unwrap()]);
    vmc_ok(&crosd, &["import", "other", target.to_str().unwrap()]);
    assert_eq!(sha256(&state.join("disks/other.img")), digest);
    assert_eq!(sha256(&disk), digest);
    drop(crosd);
}
