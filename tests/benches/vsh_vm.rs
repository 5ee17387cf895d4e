//! `vsh -- true` round trip on a running QEMU/TCG guest (the target: p50 <= 50 ms under
//! TCG): the whole `vsh` command, from spawn to exit, through the VM's hybrid vsock socket to
//! vshd on port 9001. Prints p50/p90/p99. ITERATIONS (default 100) sets the sample count; see
//! `cros_e2e::vsh_vm` for what the guest needs.

use std::time::{Duration, Instant};

use cros_e2e::vsh_vm::VshVm;

fn main() {
    let iterations: usize = std::env::var("ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let backend = std::env::var("CROSD_TEST_REFERENCE_VSOCK_BACKEND")
        .map(|b| format!("reference backend {b}"))
        .unwrap_or_else(|_| "our crosvm vhost-user-vsock backend".to_string());
    let vm = VshVm::start("vsh-bench");
    let run = || {
        let t = Instant::now();
        let out = vm.vsh(&["--", "true"], b"");
        assert_eq!(
            out.status.code(),
            Some(0),
            "vsh -- true failed: {}\nconsole:\n{}",
            String::from_utf8_lossy(&out.stderr),
            vm.console_tail()
        );
        t.elapsed()
    };
    for _ in 0..3 {
        run();
    }
    let mut samples: Vec<Duration> = (0..iterations).map(|_| run()).collect();
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "vsh -- true on a QEMU/TCG guest ({backend}): n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}
