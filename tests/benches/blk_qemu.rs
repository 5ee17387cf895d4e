//! Sequential read throughput of a disk from a QEMU/TCG guest: the same image file served by
//! our `crosvm vhost-user-blk` backend and by QEMU's own virtio-blk, both attached read-only
//! to the same VM, read alternately in the same run (`dd if=/dev/vdX of=/dev/null bs=1M` in
//! the guest, through vsh, with the guest's page cache dropped before each read). Prints MiB/s
//! per round and the median of each.
//!
//! MIB (default 128) sets the image size and ROUNDS (default 3) the rounds. The guest needs
//! virtio_blk among CROSD_GUEST_MODULES: tools/scripts/bench-vhost-user-blk.sh sets that up.

use std::io::Write;
use std::time::Instant;

use cros_e2e::vsh_vm::VshVm;
use cros_hypervisor::DiskSpec;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mib = env_usize("MIB", 128);
    let rounds = env_usize("ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("bench.img");
    {
        // Non-zero, non-repeating data: nothing the host can serve as a hole.
        let mut file = std::io::BufWriter::new(std::fs::File::create(&image).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for chunk in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            file.write_all(&block).unwrap();
        }
        file.flush().unwrap();
    }
    // Both backends read the file from the host's page cache.
    std::fs::read(&image).unwrap();

    let disk = |serial: &str, online_resize: bool| DiskSpec {
        path: image.clone(),
        read_only: true,
        serial: Some(serial.into()),
        online_resize,
    };
    // online_resize keeps a disk on QEMU's own virtio-blk; the other goes to our backend.
    let vm = VshVm::start_with_disks(
        "blk-bench",
        vec![disk("vhost-user", false), disk("qemu", true)],
    );
    let device = |serial: &str| {
        let script = format!(
            "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = {serial} ] && echo ${{d##*/}}; done; true"
        );
        let out = vm.vsh(&["--", "sh", "-c", &script], b"");
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            name.starts_with("vd"),
            "no disk with serial {serial}: {}\nconsole:\n{}",
            String::from_utf8_lossy(&out.stderr),
            vm.console_tail()
        );
        name
    };
    let ours = device("vhost-user");
    let qemu = device("qemu");
    let read = |dev: &str| {
        let cmd = format!(
            "echo 3 > /proc/sys/vm/drop_caches && dd if=/dev/{dev} of=/dev/null bs=1M 2>&1"
        );
        let t = Instant::now();
        let out = vm.vsh(&["--", "sh", "-c", &cmd], b"");
        let secs = t.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("{mib}+0 records in")),
            "dd on {dev} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        mib as f64 / secs
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let x = read(&ours);
        let y = read(&qemu);
        println!("round {round}: crosvm vhost-user-blk {x:.1} MiB/s, QEMU virtio-blk {y:.1} MiB/s");
        a.push(x);
        b.push(y);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ma, mb) = (median(&mut a), median(&mut b));
    println!(
        "sequential read of {mib} MiB from a QEMU/TCG guest, median of {rounds}: crosvm \
         vhost-user-blk {ma:.1} MiB/s, QEMU virtio-blk {mb:.1} MiB/s ({:.2}x)",
        ma / mb
    );
}
