//! VM ↔ host TCP throughput through virtio-net under QEMU/TCG: our device (`crosvm
//! vhost-user-net` on a tap) and QEMU's own virtio-net (`-netdev tap`, vhost=off) on another
//! tap, both cards of the same guest, measured alternately in the same run. Guest → host: the
//! host reads the guest's MIB-MiB /tmp/blob (busybox `nc -l < /tmp/blob`); host → guest: the
//! host sends MIB MiB to the guest's `nc -l > /dev/null`, timed until the guest closes. Prints
//! MiB/s per round and the median of each.
//!
//! Runs in a network namespace it makes (needs root): the taps and their addresses exist
//! only there. MIB (default 32) and ROUNDS (default 3) set the sizes;
//! tools/scripts/bench-net-qemu.sh builds what it needs and runs it.

use std::time::Duration;

use cros_e2e::net_vm::{
    NetVm, NetVmOptions, Nic, SINK_PORT, net_guest_kernel, netns, receive_all, send_all,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn mib_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mib = env_usize("MIB", 32);
    let rounds = env_usize("ROUNDS", 3);
    netns::enter_new_netns();
    let kernel = net_guest_kernel();
    let dir = tempfile::tempdir().unwrap();
    let vm = NetVm::start(NetVmOptions {
        kernel: &kernel,
        dir: dir.path(),
        nics: &[Nic::Ours, Nic::Qemu],
        blob_kib: (mib * 1024) as u32,
        mem_mib: 256 + 2 * mib as u32,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for nic in [Nic::Ours, Nic::Qemu] {
        let ping = vm.lines(&format!("ping {} ok", nic.host_ip()));
        assert_eq!(
            ping.len(),
            1,
            "{nic:?} did not ping its host side:\n{}",
            vm.logs()
        );
    }
    let bytes = mib << 20;
    let data = vec![0x5au8; bytes];
    let names = [
        (Nic::Ours, "crosvm vhost-user-net"),
        (Nic::Qemu, "QEMU virtio-net (tap)"),
    ];
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); 2];
    for round in 1..=rounds {
        for (i, (nic, name)) in names.iter().enumerate() {
            let (got, t_out) = receive_all(*nic).unwrap_or_else(|e| panic!("{e}\n{}", vm.logs()));
            assert_eq!(got.len(), bytes, "{name}: short transfer\n{}", vm.logs());
            let t_in =
                send_all(*nic, SINK_PORT, &data).unwrap_or_else(|e| panic!("{e}\n{}", vm.logs()));
            let (out, inn) = (mib_per_s(bytes, t_out), mib_per_s(bytes, t_in));
            println!(
                "round {round} {name:24} guest→host {out:7.1} MiB/s   host→guest {inn:7.1} MiB/s"
            );
            results[i].0.push(out);
            results[i].1.push(inn);
        }
    }
    println!("median of {rounds} rounds, {mib} MiB each way:");
    for (i, (_, name)) in names.iter().enumerate() {
        println!(
            "  {name:24} guest→host {:7.1} MiB/s   host→guest {:7.1} MiB/s",
            median(results[i].0.clone()),
            median(results[i].1.clone())
        );
    }
    let ratio = |k: usize| {
        let (a, b) = if k == 0 {
            (median(results[0].0.clone()), median(results[1].0.clone()))
        } else {
            (median(results[0].1.clone()), median(results[1].1.clone()))
        };
        a / b
    };
    println!(
        "ours / QEMU's: guest→host {:.2}×, host→guest {:.2}×",
        ratio(0),
        ratio(1)
    );
}
