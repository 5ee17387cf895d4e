//! The core flow end to end: a real crosd, real QEMU with TCG, the real termina component built
//! by `crosimg build-termina` (Debian's kernel, our static maitred/vshd/vm_syslog), driven by
//! the real `vmc` and `vsh` binaries.
//!
//! Needs what tools/scripts/test.sh prepares: qemu-system-x86, btrfs-progs, busybox-static, the
//! host binaries and the static guest binaries. Missing pieces fail the tests with the reason.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cros_e2e::bin;
use cros_e2e::crosd::{
    Crosd, alive, assert_no_vms, qemu_pid, spawn_vmc, start_termina, termina_component, text,
    vmc_err, vmc_ok, wait_for,
};

fn kernel_release() -> String {
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(termina_component().join("manifest.json")).unwrap(),
    )
    .unwrap();
    m["kernel_release"].as_str().unwrap().to_string()
}

#[test]
fn termina_boots_runs_commands_keeps_state_and_stops_cleanly() {
    let crosd = Crosd::start();
    // A boot that misses its deadline is an error quoting the console, and leaves nothing behind.
    let o = crosd.run("vmc", &["start", "--no-shell", "--timeout", "1", "termina"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no VmReady within 1s") && err.contains("console lines"),
        "{}",
        text(&o)
    );
    assert_no_vms(&crosd);

    let o = start_termina(&crosd, "vmc start failed");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("termina is running"), "{stderr}");

    // The guest's kernel answers, not the host's.
    let o = crosd.vsh(&["uname", "-r"], b"");
    assert!(o.status.success(), "{}", text(&o));
    let guest = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(guest, kernel_release());
    let host = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert_ne!(guest, host, "vsh must run in the guest");

    // maitred is an actor on the bus like any other: crosmsg reaches it through the VM's bridge.
    let o = crosd.run(
        "crosmsg",
        &["send", "maitred@termina", r#"{"GetKernelVersion":{}}"#],
    );
    assert!(o.status.success(), "{}", text(&o));
    let reply: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        reply["KernelVersion"]["release"],
        kernel_release(),
        "{}",
        text(&o)
    );

    let o = crosd.vsh(&["sh", "-c", "exit 7"], b"");
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    let o = crosd.vsh(
        &[
            "sh",
            "-c",
            "echo persisted-$((6*7)) > /mnt/stateful/e2e && sync",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));

    // Clear errors: already running, unknown VM.
    let o = crosd.run("vmc", &["start", "--no-shell", "--no-start-lxd", "termina"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already running"),
        "{}",
        text(&o)
    );
    let o = crosd.run("vmc", &["stop", "nosuch"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no VM named \"nosuch\""),
        "{}",
        text(&o)
    );

    // Stop leaves no hypervisor process.
    let pid = qemu_pid(&crosd);
    assert!(alive(pid));
    let o = crosd.run("vmc", &["stop", "termina"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!alive(pid), "QEMU (pid {pid}) still runs after vmc stop");
    assert_no_vms(&crosd);
    // The VM's bridges went with it.
    let o = crosd.run(
        "crosmsg",
        &["send", "maitred@termina", r#"{"GetKernelVersion":{}}"#],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no actor maitred@termina is registered"),
        "{}",
        text(&o)
    );

    // The stateful disk keeps the file across stop and start.
    start_termina(&crosd, "second start");
    let o = crosd.vsh(&["cat", "/mnt/stateful/e2e"], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "persisted-42",
        "{}",
        text(&o)
    );

    // vm_syslog shipped the guest kernel's log to the host.
    let o = crosd.run("vmc", &["logs", "termina"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("kernel: "),
        "{}",
        text(&o)
    );

    // A hypervisor that dies is noticed: the VM is reported stopped and its resources freed.
    let pid = qemu_pid(&crosd);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let o = crosd.run("vmc", &["list"]);
        if String::from_utf8_lossy(&o.stdout).contains("no VMs are running") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a killed VM is still listed: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        crosd.log().contains("HypervisorExited"),
        "crosd log says why:\n{}",
        crosd.log()
    );
    assert!(
        crosd.state.join("logs/termina.console.log").exists(),
        "the console log is kept after the VM ends"
    );

    // crosd going away takes its VMs with it.
    start_termina(&crosd, "third start");
    let pid = qemu_pid(&crosd);
    drop(crosd);
    assert!(!alive(pid), "QEMU (pid {pid}) outlived crosd's SIGTERM");
}

#[test]
fn a_corrupted_kernel_is_refused_by_name() {
    let crosd = Crosd::start_on("qemu", |dir| {
        let k = dir.join("vm_kernel");
        let mut bytes = std::fs::read(&k).unwrap();
        bytes[4096] ^= 0xff;
        std::fs::remove_file(&k).unwrap(); // break the hard link before writing
        std::fs::write(&k, bytes).unwrap();
    });
    let o = crosd.run("vmc", &["start", "--no-shell", "--no-start-lxd", "termina"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("vm_kernel") && err.contains("SHA-256"),
        "{}",
        text(&o)
    );
    assert_no_vms(&crosd);
}

#[test]
fn vmc_says_when_crosd_is_not_running() {
    let o = Command::new(bin("vmc"))
        .args(["--socket", "/nonexistent/crosd.sock", "list"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("crosd is not running"),
        "{}",
        text(&o)
    );
}

/// The disk's identity: an import renames a new file over it, a write changes its mtime.
fn disk_identity(path: &Path) -> (u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.ino(), m.size(), m.mtime(), m.mtime_nsec())
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.contains(".import-"))
        .collect()
}

#[test]
fn disk_export_destroy_import_keeps_the_guest_files() {
    let mut crosd = Crosd::start();
    let out = crosd.dir.path().join("exports");
    std::fs::create_dir_all(&out).unwrap();
    let (file, digest) = (out.join("termina.zst"), out.join("termina.zst.sha256"));
    let (file_s, digest_s) = (file.to_str().unwrap(), digest.to_str().unwrap());
    let disks = crosd.state.join("disks");
    let disk = disks.join("termina.img");

    vmc_ok(&crosd, &["create", "--size", "2G", "termina"]);
    let o = vmc_ok(&crosd, &["list"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("2.0 GiB"),
        "{}",
        text(&o)
    );
    start_termina(&crosd, "first start");
    let o = crosd.vsh(&[
        "sh",
        "-c",
        "head -c 3000000 /dev/urandom > /mnt/stateful/blob && sync && sha256sum /mnt/stateful/blob",
    ], b"");
    assert!(o.status.success(), "{}", text(&o));
    let written = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(written.contains("/mnt/stateful/blob"), "{written}");

    // Running: export needs --force, import is refused (vmc opens the file it names itself, so
    // the import is given one that exists).
    vmc_err(&crosd, &["export", "termina", file_s], "is running");
    assert!(!file.exists(), "a refused export leaves no file");
    std::fs::write(&file, b"not an export").unwrap();
    vmc_err(&crosd, &["import", "termina", file_s], "is running");
    std::fs::remove_file(&file).unwrap();
    vmc_ok(&crosd, &["stop", "termina"]);

    let o = vmc_ok(&crosd, &["export", "--digest", digest_s, "termina", file_s]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("done"),
        "{}",
        text(&o)
    );
    assert!(std::fs::metadata(&file).unwrap().len() > 3_000_000);
    assert!(
        std::fs::read_to_string(&digest)
            .unwrap()
            .ends_with("  termina.zst\n")
    );
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));

    // Without -y and without a terminal, destroy refuses; with -y the disk is gone.
    let o = Command::new(bin("vmc"))
        .args(["destroy", "termina"])
        .env("CROSD_SOCKET", &crosd.socket)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(disk.exists());
    vmc_ok(&crosd, &["destroy", "-y", "termina"]);
    assert!(!disk.exists());

    vmc_ok(&crosd, &["import", "--digest", digest_s, "termina", file_s]);
    assert!(leftovers(&disks).is_empty(), "{:?}", leftovers(&disks));

    // A corrupted export is refused and the disk is left as it was.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    let bad = out.join("bad.zst");
    std::fs::write(&bad, &bytes).unwrap();
    let before = disk_identity(&disk);
    vmc_err(
        &crosd,
        &["import", "termina", bad.to_str().unwrap()],
        "not a valid disk export",
    );
    // An intact stream that is not the file the digest names is refused too.
    let wrong_digest = out.join("wrong.sha256");
    std::fs::write(&wrong_digest, format!("{}  termina.zst\n", "0".repeat(64))).unwrap();
    vmc_err(
        &crosd,
        &[
            "import",
            "--digest",
            wrong_digest.to_str().unwrap(),
            "termina",
            file_s,
        ],
        "does not match its digest",
    );
    assert_eq!(
        disk_identity(&disk),
        before,
        "a refused import touched the disk"
    );
    assert!(leftovers(&disks).is_empty(), "{:?}", leftovers(&disks));

    // The guest reads back the same bytes from the imported disk.
    start_termina(&crosd, "start on the imported disk");
    let o = crosd.vsh(&["sha256sum", "/mnt/stateful/blob"], b"");
    assert_eq!(String::from_utf8_lossy(&o.stdout), written, "{}", text(&o));

    // Destroy stops the running VM first.
    let pid = qemu_pid(&crosd);
    vmc_ok(&crosd, &["destroy", "-y", "termina"]);
    assert!(!alive(pid), "QEMU (pid {pid}) still runs after destroy");
    assert!(!disk.exists());
    assert_no_vms(&crosd);

    // kill -9 crosd in the middle of an export: on restart no partial file is left and the
    // operation is reported failed.
    vmc_ok(&crosd, &["import", "termina", file_s]);
    let big = disks.join("termina.img");
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.set_len(16 << 30).unwrap();
    drop(f);
    let partial = out.join("crash.zst.partial");
    let crash = out.join("crash.zst");
    let exporter = spawn_vmc(&crosd, &["export", "termina", crash.to_str().unwrap()]);
    // vmc creates the partial file itself and crosd writes into it: wait for the first bytes.
    let writing = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    wait_for(
        "the export to start writing",
        Duration::from_secs(30),
        || writing(&partial).then_some(()),
    );
    crosd.kill9_and_restart();
    let o = exporter.wait_with_output().unwrap();
    assert!(!o.status.success(), "the export cannot have finished");
    assert!(!crash.exists(), "a 16 GiB export finished before the kill");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let uuid = stderr
        .split("(operation ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("vmc names the operation: {stderr}"))
        .to_string();
    let o = vmc_ok(&crosd, &["disk-op-status", &uuid]);
    let status = String::from_utf8_lossy(&o.stdout);
    assert!(
        status.contains("Failed") && status.contains("crosd stopped during the operation"),
        "{status}"
    );
    // Checked once concierge answers: it cleans up as it starts, maybe after the socket is up.
    assert!(!partial.exists(), "the partial export survived the restart");

    // Ctrl-C in vmc cancels the export: neither the partial nor the export file is left.
    let exporter = spawn_vmc(&crosd, &["export", "termina", crash.to_str().unwrap()]);
    wait_for(
        "the second export to start writing",
        Duration::from_secs(30),
        || writing(&partial).then_some(()),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(exporter.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = exporter.wait_with_output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cancelled"),
        "{}",
        text(&o)
    );
    assert!(
        !partial.exists() && !crash.exists(),
        "{:?}",
        leftovers(&out)
    );
}

/// The stateful filesystem's size as the guest's `df` reports it, in bytes.
fn guest_df_size(crosd: &Crosd) -> u64 {
    // busybox df: a header, then "DEVICE SIZE USED AVAILABLE USE% MOUNTPOINT".
    let o = crosd.vsh(&["df", "-B1", "/mnt/stateful"], b"");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.ends_with("/mnt/stateful"))
        .find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("df printed no size: {}", text(&o)))
}

#[test]
fn disk_grows_online_and_shrinks_no_further_than_its_filesystem() {
    const GIB: u64 = 1 << 30;
    let mut crosd = Crosd::start();
    let disk = crosd.state.join("disks").join("termina.img");
    vmc_ok(&crosd, &["create", "--size", "2G", "termina"]);
    start_termina(&crosd, "start for resize");
    let before = guest_df_size(&crosd);
    assert!(before <= 2 * GIB, "df says {before} bytes on a 2 GiB disk");
    let o = crosd.vsh(&[
        "sh",
        "-c",
        "head -c 1000000 /dev/urandom > /mnt/stateful/blob && sync && sha256sum /mnt/stateful/blob",
    ], b"");
    assert!(o.status.success(), "{}", text(&o));
    let written = String::from_utf8_lossy(&o.stdout).to_string();

    // Grow while running: the guest's filesystem follows at once.
    let o = vmc_ok(&crosd, &["resize", "termina", "3G"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("done"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 3 * GIB);
    let grown = guest_df_size(&crosd);
    assert!(
        grown > before + GIB / 2 && grown <= 3 * GIB,
        "df says {grown} bytes after growing from {before} to 3 GiB"
    );

    // Fill the filesystem past 1 GiB: shrinking to 1 GiB is refused with the minimum, and
    // nothing changes.
    let o = crosd.vsh(
        &["sh", "-c", "fallocate -l 1200M /mnt/stateful/big && sync"],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));
    vmc_err(&crosd, &["resize", "termina", "1G"], "needs at least");
    // ListVmDisks has the running VM's minimum from its filesystem: above the data, below the
    // disk.
    let o = vmc_ok(&crosd, &["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let min = listed["disks"][0]["min_size"].as_u64().unwrap();
    assert!(
        min > 1200 << 20 && min < 3 * GIB,
        "min_size {min} for 1.2 GiB of data on a 3 GiB disk"
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 3 * GIB);
    assert_eq!(guest_df_size(&crosd), grown);

    // Shrinking to a size the data fits in works: filesystem first, then the disk. (btrfs's
    // minimum counts whole chunks, so it is well above the 1.2 GiB of data.)
    vmc_ok(&crosd, &["resize", "termina", "2560M"]);
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 2560 << 20);
    let shrunk = guest_df_size(&crosd);
    assert!(
        shrunk <= 2560 << 20 && shrunk > GIB,
        "df says {shrunk} bytes after shrinking to 2.5 GiB"
    );
    let o = crosd.vsh(&["sha256sum", "/mnt/stateful/blob"], b"");
    assert_eq!(String::from_utf8_lossy(&o.stdout), written, "{}", text(&o));

    // Stopped: a grow only resizes the file, and the next boot grows the filesystem.
    vmc_ok(&crosd, &["stop", "termina"]);
    vmc_err(&crosd, &["resize", "termina", "1G"], "start it to shrink");
    vmc_ok(&crosd, &["resize", "termina", "4G"]);
    start_termina(&crosd, "start after an offline grow");
    let regrown = guest_df_size(&crosd);
    assert!(
        regrown > shrunk + GIB && regrown <= 4 * GIB,
        "df says {regrown} bytes after an offline grow from {shrunk} to 4 GiB"
    );

    // kill -9 crosd in the middle of a shrink: the VM goes with it (no orphan QEMU for the
    // next crosd to boot a second time on the same disk), the operation is reported failed (or
    // done, if it beat the kill), the disk has its old size or its new one, and the guest's
    // files are intact at the next boot.
    let qemu = qemu_pid(&crosd);
    let ops = crosd.state.join("disk_ops");
    let records = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".json")
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = records(&ops);
    let resizer = spawn_vmc(&crosd, &["resize", "termina", "2560M"]);
    // The operation's record is written before vmc hears of it: its name is the uuid.
    let uuid = wait_for("the resize to start", Duration::from_secs(60), || {
        records(&ops).into_iter().find(|r| !before.contains(r))
    });
    crosd.kill9_and_restart();
    let o = resizer.wait_with_output().unwrap();
    assert!(!o.status.success(), "vmc lost its crosd: {}", text(&o));
    wait_for(
        &format!("QEMU (pid {qemu}) to die with the crosd that started it"),
        Duration::from_secs(10),
        || (!alive(qemu)).then_some(()),
    );
    let o = vmc_ok(&crosd, &["disk-op-status", "--json", &uuid]);
    let op: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let size = std::fs::metadata(&disk).unwrap().len();
    eprintln!("resize interrupted by kill -9: {op}, disk of {size} bytes");
    match op["state"].as_str() {
        Some("Failed") => assert!(
            size == 4 * GIB || size == 2560 << 20,
            "an interrupted resize left a disk of {size} bytes"
        ),
        Some("Done") => assert_eq!(size, 2560 << 20),
        other => panic!("resize state after a crash: {other:?} ({op})"),
    }
    start_termina(&crosd, "start after a crash mid-resize");
    let o = crosd.vsh(&["sha256sum", "/mnt/stateful/blob"], b"");
    assert_eq!(String::from_utf8_lossy(&o.stdout), written, "{}", text(&o));
    assert!(guest_df_size(&crosd) <= size);
    vmc_ok(&crosd, &["stop", "termina"]);
}

/// Where a test that cannot run on this host says why: test.sh prints this file after the
/// suite, so a test that did not run is never mistaken for one that passed.
fn report_not_run(test: &str, reason: &str) {
    use std::io::Write;
    let line = format!("NOT RUN: {test}: {reason}");
    eprintln!("{line}");
    let path = cros_e2e::bin_dir().join("e2e/not-run.txt");
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// termina on our own VMM (`crosd --hypervisor crosvm`): booted, maitred VmReady, a command
/// in the guest, a clean stop — where `crosvm probe` says this host's /dev/kvm runs a stock
/// kernel. Elsewhere (nested KVM without the instructions a kernel needs) crosd must refuse
/// with the probe's reason instead of hanging, and the boot is reported as not run.
#[test]
fn termina_boots_on_our_own_vmm_where_kvm_can_run_linux() {
    let probe = Command::new(bin("crosvm")).arg("probe").output().unwrap();
    let crosd = Crosd::start_on("crosvm", |_| {});
    vmc_ok(&crosd, &["create", "--size", "2G", "termina"]);
    if !probe.status.success() {
        let stderr = String::from_utf8_lossy(&probe.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| l.contains("error:"))
            .unwrap_or("crosvm probe failed without a reason")
            .to_string();
        let o = crosd.run(
            "vmc",
            &[
                "start",
                "--no-shell",
                "--no-start-lxd",
                "--timeout",
                "60",
                "termina",
            ],
        );
        assert!(!o.status.success(), "{}", text(&o));
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(
            said.contains("cannot boot a Linux guest on this host") && said.contains("qemu"),
            "crosd must say why the crosvm backend cannot boot here: {}",
            text(&o)
        );
        report_not_run(
            "termina_boots_on_our_own_vmm_where_kvm_can_run_linux",
            &format!("crosvm probe failed on this host's /dev/kvm: {reason}"),
        );
        return;
    }
    start_termina(&crosd, "start on crosvm");
    let o = crosd.vsh(&["uname", "-r"], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        kernel_release(),
        "{}",
        text(&o)
    );
    let o = vmc_ok(&crosd, &["list", "--json"]);
    let vms: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vms["vms"][0]["hypervisor"], "crosvm", "{vms}");
    vmc_ok(&crosd, &["stop", "termina"]);
    assert_no_vms(&crosd);
}

/// A copy of `trace` with every envelope passed through `change`.
fn rewrite_trace(trace: &Path, out: &Path, mut change: impl FnMut(&mut cros_messages::Envelope)) {
    use cros_messages::trace::{TraceReader, TraceRecord, TraceWriter};
    let reader = TraceReader::new(std::fs::File::open(trace).unwrap()).unwrap();
    let mut writer = TraceWriter::new(std::fs::File::create(out).unwrap()).unwrap();
    for item in reader {
        let (_, rec) = item.unwrap();
        let mut env = rec.decode_envelope().unwrap();
        change(&mut env);
        writer
            .append(&TraceRecord::new(rec.mono_ns, rec.wall_ns, &env).unwrap())
            .unwrap();
    }
    writer.flush().unwrap();
}

fn crosmsg_trace(args: &[&str]) -> Output {
    Command::new(bin("crosmsg"))
        .arg("trace")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_traced_start_and_stop_replays_in_isolation() {
    let mut crosd = Crosd::start_traced();
    vmc_ok(&crosd, &["create", "--size", "2G", "termina"]);
    start_termina(&crosd, "traced start");
    let o = crosd.run(
        "crosmsg",
        &["send", "maitred@termina", r#"{"GetKernelVersion":{}}"#],
    );
    assert!(o.status.success(), "{}", text(&o));
    vmc_ok(&crosd, &["stop", "termina"]);
    crosd.terminate();
    let trace = crosd.trace.clone().unwrap();
    let trace_arg = trace.to_str().unwrap();

    // Every host<->guest envelope went through the bus, so the trace has them.
    let o = crosmsg_trace(&["show", trace_arg]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    for needle in [
        "maitred@termina -> concierge MaitredEvent::VmReady",
        "concierge -> maitred@termina Maitred::StartTermina",
        "maitred@termina -> concierge MaitredReply::TerminaStarted",
        "concierge -> maitred@termina Maitred::Shutdown",
        "-> maitred@termina Maitred::GetKernelVersion",
        "vm_syslog@termina -> vmlog_forwarder VmlogForwarder::Records",
    ] {
        assert!(
            shown.contains(needle),
            "trace show lacks {needle:?}:\n{shown}"
        );
    }

    // concierge alone, no VM: its requests to imageloader and maitred@termina are answered from
    // the trace, a stand-in takes the hypervisor's place, and every reply matches the recording.
    let o = crosmsg_trace(&["replay", trace_arg, "--actor", "concierge"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("isolated replay of concierge:\n{out}");
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.contains(": 0 divergence(s)"), "{out}");
    let replayed: usize = out
        .split("replayed ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {out}"));
    assert!(
        replayed >= 4,
        "create, create-or-exists, start and stop at least: {out}"
    );

    // A trace in which maitred failed StartTermina is not what this concierge recorded.
    let mutated = trace.with_extension("mutated");
    rewrite_trace(&trace, &mutated, |env| {
        if let cros_messages::Body::MaitredReply(
            cros_messages::maitred::MaitredReply::TerminaStarted { .. },
        ) = env.body
        {
            env.body = cros_messages::CrosError::internal("mkfs.btrfs failed").into();
        }
    });
    let o = crosmsg_trace(&["replay", mutated.to_str().unwrap(), "--actor", "concierge"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("isolated replay of the mutated trace:\n{out}");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        out.contains("DIVERGENCE")
            && out.contains("Concierge::StartVm")
            && out.contains("mkfs.btrfs failed"),
        "{out}"
    );
}

#[test]
fn crosd_stopped_or_killed_loses_no_guest_data() {
    let mut crosd = Crosd::start();
    start_termina(&crosd, "first start");
    // Written, not synced: only an orderly shutdown of the guest puts it on the disk in time.
    let o = crosd.vsh(
        &[
            "sh",
            "-c",
            "echo unsynced-$((6*7)) > /mnt/stateful/unsynced",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));
    let qemu = qemu_pid(&crosd);
    let status = crosd.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "crosd exits 0 after SIGTERM: {status:?}\n{}",
        crosd.log()
    );
    assert!(!alive(qemu), "QEMU (pid {qemu}) outlived crosd");
    let log = crosd.log();
    assert!(
        log.contains("stopping every VM") && log.contains("VMs stopped"),
        "crosd stopped the VM in order:\n{log}"
    );

    crosd.restart();
    start_termina(&crosd, "start after SIGTERM");
    let o = crosd.vsh(&["cat", "/mnt/stateful/unsynced"], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "unsynced-42",
        "{}",
        text(&o)
    );

    // Killed outright, crosd takes its VM with it; the next crosd says what happened.
    let qemu = qemu_pid(&crosd);
    crosd.kill9_and_restart();
    wait_for(
        &format!("QEMU (pid {qemu}) to die with its crosd"),
        Duration::from_secs(10),
        || (!alive(qemu)).then_some(()),
    );
    let o = vmc_ok(&crosd, &["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let vm = &listed["vms"][0];
    assert_eq!(vm["name"], "termina", "{listed}");
    assert_eq!(vm["status"], "Stopped", "{listed}");
    assert!(
        vm["detail"]
            .as_str()
            .is_some_and(|d| d.contains("was killed")),
        "{listed}"
    );
    let o = vmc_ok(&crosd, &["list"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Stopped"),
        "{}",
        text(&o)
    );
    // Its disk is as the VM left it: it boots, and the file is there.
    start_termina(&crosd, "start after SIGKILL");
    let o = crosd.vsh(&["cat", "/mnt/stateful/unsynced"], b"");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "unsynced-42");
    vmc_ok(&crosd, &["stop", "termina"]);
    assert_no_vms(&crosd);
}

/// `sh -c SCRIPT` in termina as root, which must succeed; its stdout.
fn guest_sh(crosd: &Crosd, script: &str) -> String {
    let o = crosd.vsh(&["sh", "-c", script], b"");
    assert!(o.status.success(), "{script}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A busybox container image in LXD's unified format (metadata.yaml and rootfs/ in one
/// tarball), made from the host's static busybox; its init sleeps.
fn busybox_image() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    for d in ["bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (apt-get install busybox-static)");
    for applet in ["sh", "sleep", "cat", "id"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("sbin/init"), "#!/bin/sh\nexec sleep 1000000\n").unwrap();
    std::fs::set_permissions(
        root.join("sbin/init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(
        dir.path().join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: busybox test image\n  os: busybox\n  release: test\n",
    )
    .unwrap();
    let tar = dir.path().join("image.tar.xz");
    let o = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-cJf")
        .arg(&tar)
        .args(["metadata.yaml", "rootfs"])
        .output()
        .unwrap();
    assert!(o.status.success(), "tar: {}", text(&o));
    std::fs::read(&tar).unwrap()
}

/// Real LXD in termina's Debian userland: what it needs of the read-only root (cgroup2, tmpfs
/// /var /run /tmp and homes, lo up, the module tree for its modprobe calls, /dev/fuse and
/// /dev/net/tun), then LXD 5.0 itself — ready on the stateful disk, a btrfs pool and lxdbr0
/// (bridge, NAT with nftables, dnsmasq) — and an unprivileged container with the default
/// profile's raw.idmap (which /etc/subuid must allow) that runs, its root an unprivileged id.
#[test]
fn termina_runs_real_lxd() {
    let crosd = Crosd::start();
    start_termina(&crosd, "vmc start failed");

    let mounts = guest_sh(&crosd, "cat /proc/mounts");
    for (target, fstype) in [
        ("/sys/fs/cgroup", "cgroup2"),
        ("/var", "tmpfs"),
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/root", "tmpfs"),
        ("/home", "tmpfs"),
        ("/", "ext4"),
    ] {
        assert!(
            mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(target)
                    && l.split(' ').nth(2) == Some(fstype)),
            "{target} is not {fstype}: {mounts}"
        );
    }
    let lo = guest_sh(&crosd, "ip -o link show lo");
    assert!(lo.contains("UP"), "{lo}");
    guest_sh(
        &crosd,
        "test -L /var/run && test -w /var/log && test -w /root && test -d /home/chronos \
         && test \"$(readlink /etc/resolv.conf)\" = /run/resolv.conf \
         && test -c /dev/fuse && test -c /dev/net/tun && grep -q '^lxd:.*chronos' /etc/group",
    );
    // The kernel's module tree: modprobe resolves a module LXD asks for (veth), with its deps.
    guest_sh(
        &crosd,
        "modprobe veth && grep -q '^veth ' /proc/modules && modprobe -n overlay",
    );

    let lxd = "export LXD_DIR=/mnt/stateful/lxd;";
    // Started as tremplin does, detached from the vsh session.
    guest_sh(
        &crosd,
        &format!(
            "{lxd} mkdir -p $LXD_DIR && setsid lxd --group lxd --logfile /var/log/lxd.log \
             </dev/null >/dev/null 2>&1 & {lxd} lxd waitready --timeout 240"
        ),
    );
    let info = guest_sh(&crosd, &format!("{lxd} lxc info"));
    assert!(info.contains("server_version: 5.0."), "{info}");
    guest_sh(
        &crosd,
        &format!(
            "{lxd} lxc storage create default btrfs source=/mnt/stateful/lxd/storage-pools/default \
             && lxc network create lxdbr0"
        ),
    );
    let rules = guest_sh(&crosd, "nft list table inet lxd");
    assert!(
        rules.contains("chain pstrt.lxdbr0") && rules.contains("masquerade"),
        "{rules}"
    );
    let dnsmasq = guest_sh(&crosd, "cat /proc/*/comm");
    assert!(dnsmasq.lines().any(|c| c == "dnsmasq"), "{dnsmasq}");

    let o = crosd.vsh(
        &["sh", "-c", "cat > /mnt/stateful/busybox.tar.xz"],
        &busybox_image(),
    );
    assert!(o.status.success(), "{}", text(&o));
    // The default profile's id map (REFERENCE.md); the fuse and tun devices it also gives
    // containers need device nodes under LXD_DIR, i.e. a stateful mount without nodev.
    guest_sh(
        &crosd,
        &format!(
            "{lxd} lxc image import /mnt/stateful/busybox.tar.xz --alias busybox \
             && lxc profile device add default root disk path=/ pool=default \
             && lxc profile device add default eth0 nic network=lxdbr0 name=eth0 \
             && printf 'both 1000 1000\\nboth 655360 655360\\nboth 665357 665357\\nboth 1001 1001\\n' \
                | lxc profile set default raw.idmap - \
             && lxc launch busybox c1"
        ),
    );
    let list = guest_sh(&crosd, &format!("{lxd} lxc list --format csv -c ns"));
    assert_eq!(list.trim(), "c1,RUNNING", "{list}");
    let uid_map = guest_sh(
        &crosd,
        &format!("{lxd} lxc exec c1 -- cat /proc/self/uid_map"),
    );
    let rows: Vec<Vec<u64>> = uid_map
        .lines()
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    // Container root is host id 1000000 (unprivileged); the raw.idmap ids map straight through.
    assert_eq!(rows[0][..2], [0, 1_000_000], "{uid_map}");
    for id in [1000, 1001, 655360, 665357] {
        assert!(
            rows.contains(&vec![id, id, 1]),
            "{id} not mapped: {uid_map}"
        );
    }
    vmc_ok(&crosd, &["stop", "termina"]);
}
