//! `crosvm run` with freestanding payloads (vmm/tests/payloads), as whole commands on this
//! host's /dev/kvm: time from spawning `crosvm run` to the payload's first serial byte (its
//! first instructions print), time to the payload's power-off (process exit), and the VMM's
//! memory overhead: VmRSS minus the resident pages of the guest memory mapping (read from
//! /proc/PID/smaps while the guest runs), as Firecracker measures it; and a graceful stop:
//! time from `crosvm stop` (which presses the ACPI power button) until it returns, which is
//! once the power_button payload has powered off and the VMM has exited.
//!
//! `cargo bench -p cros-tools --bench crosvm_run [-- RUNS]` (default 20 runs). Prints numbers;
//! asserts nothing about them.

#[path = "../../vmm/tests/support/payload.rs"]
mod payload;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use payload::{build_payload, require_kvm};

const CROSVM: &str = env!("CARGO_BIN_EXE_crosvm");
/// Guest RAM for the runs; an odd size so its mapping is easy to find in smaps.
const MEM_MIB: u64 = 136;

struct Run {
    first_byte: Duration,
    exit: Duration,
    rss_kib: Option<(u64, u64)>,
}

/// VmRSS of `pid` and the Rss of its guest memory mapping (the one of MEM_MIB), in KiB.
fn sample_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let vm_rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            in_guest = size.trim() == format!("{} kB", MEM_MIB * 1024);
        } else if let Some(rss) = line.strip_prefix("Rss:")
            && in_guest
        {
            return Some((vm_rss, rss.trim().trim_end_matches(" kB").parse().ok()?));
        }
    }
    None
}

fn run_once(payload: &Path, extra: &[&str], sample: bool) -> Run {
    let start = Instant::now();
    let mut child = Command::new(CROSVM)
        .args(["run", "--mem", &MEM_MIB.to_string(), "--kernel"])
        .arg(payload)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start crosvm");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("no guest output");
    let first_byte = start.elapsed();
    let mut line = Vec::new();
    stdout.read_until(b'\n', &mut line).expect("guest output");
    let rss_kib = if sample { sample_rss(child.id()) } else { None };
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("guest output");
    let status = child.wait().expect("crosvm");
    let exit = start.elapsed();
    assert!(status.success(), "crosvm run failed: {status}");
    Run {
        first_byte,
        exit,
        rss_kib,
    }
}

/// Starts the power_button payload with a control socket, waits for its "ready", and returns
/// how long `crosvm stop` took (it returns once the VMM has exited).
fn stop_once(payload: &Path, dir: &Path) -> Duration {
    let ctrl = dir.join("stop-bench.sock");
    let mut child = Command::new(CROSVM)
        .args(["run", "--mem", &MEM_MIB.to_string(), "--kernel"])
        .arg(payload)
        .arg("--socket")
        .arg(&ctrl)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start crosvm");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("guest output");
    assert_eq!(line, "ready\n");
    while std::os::unix::net::UnixStream::connect(&ctrl).is_err() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    let out = Command::new(CROSVM)
        .arg("stop")
        .arg(&ctrl)
        .output()
        .expect("crosvm stop");
    let took = start.elapsed();
    assert!(out.status.success(), "crosvm stop failed");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("guest output");
    assert_eq!(rest, "power button pressed\n");
    assert!(child.wait().expect("crosvm").success());
    took
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = v[v.len() / 2];
    format!(
        "median {median:.1}, min {:.1}, max {:.1}",
        v[0],
        v[v.len() - 1]
    )
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    require_kvm();
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = build_payload(dir.path(), "probe");
    let idle = build_payload(dir.path(), "idle");

    let probe_runs: Vec<Run> = (0..runs)
        .map(|_| run_once(&probe, &["--virtio-rng", "1"], false))
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "crosvm run, probe payload (ACPI checks, 1 virtio-rng request), {runs} runs, {MEM_MIB} MiB:"
    );
    println!(
        "  spawn to first guest serial byte: {} ms",
        stats(probe_runs.iter().map(|r| ms(r.first_byte)).collect())
    );
    println!(
        "  spawn to power-off (process exit): {} ms",
        stats(probe_runs.iter().map(|r| ms(r.exit)).collect())
    );

    let power_button = build_payload(dir.path(), "power_button");
    let stops: Vec<f64> = (0..runs)
        .map(|_| ms(stop_once(&power_button, dir.path())))
        .collect();
    println!(
        "crosvm stop, power_button payload (polls the GED register, powers off via S5), {runs} runs:"
    );
    println!(
        "  crosvm stop to its return (button pressed, guest powered off, VMM exited): {} ms",
        stats(stops)
    );

    let idle_runs: Vec<Run> = (0..runs).map(|_| run_once(&idle, &[], true)).collect();
    let samples: Vec<(u64, u64)> = idle_runs.iter().filter_map(|r| r.rss_kib).collect();
    if samples.is_empty() {
        println!("  memory: no sample (could not find the guest mapping in smaps)");
        return;
    }
    println!(
        "crosvm run, idle payload, sampled while the guest runs ({} samples):",
        samples.len()
    );
    println!(
        "  VmRSS: {} MiB",
        stats(samples.iter().map(|s| s.0 as f64 / 1024.0).collect())
    );
    println!(
        "  guest memory resident: {} KiB",
        stats(samples.iter().map(|s| s.1 as f64).collect())
    );
    println!(
        "  VMM overhead (VmRSS - guest resident): {} MiB (target <= 5 MiB)",
        stats(
            samples
                .iter()
                .map(|s| (s.0 - s.1) as f64 / 1024.0)
                .collect()
        )
    );
}
