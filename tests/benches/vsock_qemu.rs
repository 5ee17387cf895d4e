//! End-to-end vsock throughput through QEMU/TCG: our `crosvm vhost-user-vsock` beside rust-vmm's
//! `vhost-device-vsock`, the same kernel and the same test guest, in the same run. Both VMs are
//! up at once and measured in alternation, so a change in host load hits both alike.
//!
//! Run through tools/scripts/bench-vsock-qemu.sh (it builds and installs what this needs).
//! Environment: CROSD_VHOST_DEVICE_VSOCK (path of the reference backend; without it only ours
//! is measured, and the output says so), CROSD_BENCH_MIB (bytes per transfer, default 64),
//! CROSD_BENCH_ROUNDS (default 3).
//!
//! Directions: host → guest (host writes to the guest's sink port), guest → host (the guest's
//! source port writes to the host over a host-initiated connection), and guest-dialed
//! guest → host (the guest connects to cid 2 and writes; the host accepts on UDS_<port>).

use std::path::PathBuf;
use std::time::Duration;

use cros_e2e::vsock_vm::{
    self, ProbeVm, ProbeVmOptions, guest_dial_send, listen_host_port, read_from_source,
    send_to_sink,
};
use cros_hypervisor::VhostUserVsockBackend;

const DIAL_PORT: u32 = 5600;

struct Measured {
    backend: &'static str,
    direction: &'static str,
    mb_per_s: Vec<f64>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let bytes = env_u64("CROSD_BENCH_MIB", 64) << 20;
    let rounds = env_u64("CROSD_BENCH_ROUNDS", 3).max(1);
    let kernel = vsock_vm::guest_kernel();
    let init = vsock_vm::guest_bin("vsock_echo");
    let dir = tempfile::Builder::new()
        .prefix("crosd-bench-vsock-qemu-")
        .tempdir()
        .expect("tempdir");
    let initrd = dir.path().join("initrd.cpio");
    vsock_vm::build_probe_initramfs(&init, &kernel, &initrd);

    let mut backends: Vec<(&'static str, VhostUserVsockBackend)> = vec![(
        "crosvm vhost-user-vsock",
        VhostUserVsockBackend::Crosvm {
            binary: cros_e2e::bin("crosvm"),
        },
    )];
    match std::env::var_os("CROSD_VHOST_DEVICE_VSOCK") {
        Some(p) => backends.push((
            "vhost-device-vsock",
            VhostUserVsockBackend::VhostDeviceVsock {
                binary: PathBuf::from(p),
            },
        )),
        None => {
            eprintln!("CROSD_VHOST_DEVICE_VSOCK not set: measuring our backend only (no reference)")
        }
    }

    let mut vms = Vec::new();
    for (i, (name, backend)) in backends.iter().enumerate() {
        let run_dir = dir.path().join(format!("vm{i}"));
        std::fs::create_dir_all(&run_dir).expect("run dir");
        eprintln!("booting the test guest with {name}");
        let vm = ProbeVm::start(ProbeVmOptions {
            name: &format!("bench-{i}"),
            kernel: &kernel,
            initrd: &initrd,
            run_dir: &run_dir,
            vsock_backend: backend.clone(),
            dial_port: None,
            guest_timeout_s: 1800,
        })
        .unwrap_or_else(|e| panic!("{name}: VM did not come up: {e}"));
        let listener = listen_host_port(&vm.uds, DIAL_PORT);
        vms.push((*name, vm, listener));
    }

    let directions = ["host → guest", "guest → host", "guest → host (guest dials)"];
    let mut results: Vec<Measured> = Vec::new();
    for (name, _, _) in &vms {
        for d in directions {
            results.push(Measured {
                backend: name,
                direction: d,
                mb_per_s: Vec::new(),
            });
        }
    }
    for round in 1..=rounds {
        for (b, (name, vm, listener)) in vms.iter().enumerate() {
            let fail = |what: &str, e: String| -> ! { panic!("{name}: {what}: {e}") };
            let t = send_to_sink(vm, bytes, 64 * 1024).unwrap_or_else(|e| fail("host → guest", e));
            results[b * 3].mb_per_s.push(mb_per_s(bytes, t));
            let t = read_from_source(vm, bytes, 64 * 1024, false)
                .unwrap_or_else(|e| fail("guest → host", e));
            results[b * 3 + 1].mb_per_s.push(mb_per_s(bytes, t));
            let t = guest_dial_send(vm, listener, DIAL_PORT, bytes, false)
                .unwrap_or_else(|e| fail("guest dial", e));
            results[b * 3 + 2].mb_per_s.push(mb_per_s(bytes, t));
            eprintln!(
                "round {round}/{rounds} {name}: {:.1} / {:.1} / {:.1} MB/s",
                results[b * 3].mb_per_s.last().unwrap_or(&0.0),
                results[b * 3 + 1].mb_per_s.last().unwrap_or(&0.0),
                results[b * 3 + 2].mb_per_s.last().unwrap_or(&0.0)
            );
        }
    }
    for (name, mut vm, _) in vms {
        if let Err(e) = vm.quit() {
            eprintln!("{name}: {e}");
        }
    }

    println!(
        "\nvsock through QEMU/TCG, {} MiB per transfer in 64 KiB writes, {rounds} rounds (median [min..max] MB/s)",
        bytes >> 20
    );
    println!(
        "{:<26} {:<28} {:>10} {:>22}",
        "backend", "direction", "median", "range"
    );
    for m in &mut results {
        m.mb_per_s.sort_by(f64::total_cmp);
        let median = m.mb_per_s[m.mb_per_s.len() / 2];
        let (lo, hi) = (m.mb_per_s[0], m.mb_per_s[m.mb_per_s.len() - 1]);
        println!(
            "{:<26} {:<28} {:>10.1} {:>22}",
            m.backend,
            m.direction,
            median,
            format!("[{lo:.1}..{hi:.1}]")
        );
    }
    if vms_compared(&results) {
        println!("\nours / vhost-device-vsock (median):");
        for d in directions {
            let med = |b: &str| {
                results
                    .iter()
                    .find(|m| m.backend.starts_with(b) && m.direction == d)
                    .map(|m| m.mb_per_s[m.mb_per_s.len() / 2])
            };
            if let (Some(ours), Some(reference)) = (med("crosvm"), med("vhost-device")) {
                println!("  {d:<28} {:.2}x", ours / reference);
            }
        }
    }
}

fn vms_compared(results: &[Measured]) -> bool {
    results.iter().any(|m| m.backend == "vhost-device-vsock")
}
