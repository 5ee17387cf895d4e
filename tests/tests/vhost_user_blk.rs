//! Linux's virtio-blk driver on our vhost-user-blk backend (`crosvm vhost-user-blk`) under
//! QEMU/TCG, through the whole stack: crosd's StartVm attaches extra disks, the qemu backend
//! serves them (and the termina rootfs and tools disks) from crosvm processes, and the guest
//! reads and writes them with dd through vsh; the host checks the bytes in the image files.
//!
//! Needs what tools/scripts/test.sh prepares (see tests/tests/termina.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use cros_e2e::crosd::{Crosd, text};

const MIB: usize = 1 << 20;

/// `len` bytes of a fixed pseudo-random sequence (xorshift64 from `seed`).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The hex SHA-256 of `bytes`, from the host's sha256sum.
fn sha256(dir: &Path, bytes: &[u8]) -> String {
    let file = dir.join("sha256-input");
    std::fs::write(&file, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&file).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The pids of the `crosvm vhost-user-blk` processes serving `image`.
fn backends_serving(image: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let has = |s: &[u8]| args.contains(&s);
        if has(b"vhost-user-blk") && has(image.as_os_str().as_encoded_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// The VM's run directory (run/vm.<cid>).
fn vm_run_dir(crosd: &Crosd) -> PathBuf {
    std::fs::read_dir(&crosd.run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vm."))
        })
        .expect("a vm.<cid> run directory")
}

/// The guest block device (vda, vdb...) whose serial is `serial`.
fn device_with_serial(crosd: &Crosd, serial: &str) -> String {
    let script = format!(
        "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = {serial} ] && echo ${{d##*/}}; done; true"
    );
    let o = crosd.vsh(&["sh", "-c", &script], b"");
    assert!(o.status.success(), "{}", text(&o));
    let devices: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        devices.len(),
        1,
        "one device with serial {serial}: {}",
        text(&o)
    );
    devices[0].clone()
}

#[test]
fn guest_reads_and_writes_extra_disks_through_our_vhost_user_blk_backend() {
    let crosd = Crosd::start();
    let images = crosd.dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let host_pattern = pattern(0x5eed, MIB);
    let guest_pattern = pattern(0xc0ffee, MIB);
    let rw = images.join("rw.img");
    let mut rw_bytes = host_pattern.clone();
    rw_bytes.resize(4 * MIB, 0);
    std::fs::write(&rw, &rw_bytes).unwrap();
    let ro = images.join("ro.img");
    let ro_bytes = pattern(0xbeef, MIB);
    std::fs::write(&ro, &ro_bytes).unwrap();

    let o = crosd.run("vmc", &["create", "termina"]);
    assert!(o.status.success(), "{}", text(&o));
    let request = serde_json::json!({"StartVm": {
        "name": "termina",
        "timeout_secs": 300,
        "disks": [
            {"path": rw.to_string_lossy(), "writable": true},
            {"path": ro.to_string_lossy(), "writable": false},
        ],
    }});
    let o = crosd.run(
        "crosmsg",
        &[
            "send",
            "--timeout",
            "400",
            "concierge",
            &request.to_string(),
        ],
    );
    assert!(
        o.status.success(),
        "{}\ncrosd log:\n{}",
        text(&o),
        crosd.log()
    );

    // Every disk but the stateful one (online resize stays on QEMU) has its own backend.
    let run = vm_run_dir(&crosd);
    for i in [0, 1, 3, 4] {
        assert!(
            run.join(format!("disk{i}-backend.log")).exists(),
            "disk {i} is not served by crosvm vhost-user-blk"
        );
    }
    assert!(!run.join("disk2-backend.log").exists());
    let rw_backends = backends_serving(&rw);
    assert_eq!(rw_backends.len(), 1, "one backend process for rw.img");
    assert_eq!(
        backends_serving(&ro).len(),
        1,
        "one backend process for ro.img"
    );

    // Reads: the guest sees the host's bytes.
    let dev = device_with_serial(&crosd, "crosd-extra0");
    let o = crosd.vsh(
        &[
            "sh",
            "-c",
            &format!("dd if=/dev/{dev} bs=65536 count=16 2>/dev/null | sha256sum"),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));
    let guest_sum = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        guest_sum.split_whitespace().next(),
        Some(sha256(&images, &host_pattern).as_str()),
        "{}",
        text(&o)
    );
    let o = crosd.vsh(&["cat", &format!("/sys/block/{dev}/size")], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "8192",
        "{}",
        text(&o)
    );

    // Writes: the second MiB, from the guest, flushed.
    let o = crosd.vsh(
        &[
            "sh",
            "-c",
            &format!("dd of=/dev/{dev} bs=65536 seek=16 conv=fsync 2>&1 && sync"),
        ],
        &guest_pattern,
    );
    assert!(o.status.success(), "{}", text(&o));

    // The read-only disk: Linux sees it read-only and refuses to write it.
    let ro_dev = device_with_serial(&crosd, "crosd-extra1");
    let o = crosd.vsh(&["cat", &format!("/sys/block/{ro_dev}/ro")], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "1",
        "{}",
        text(&o)
    );
    let o = crosd.vsh(
        &[
            "sh",
            "-c",
            &format!("dd if=/dev/zero of=/dev/{ro_dev} bs=512 count=1 conv=fsync"),
        ],
        b"",
    );
    assert!(
        !o.status.success(),
        "a write to the read-only disk succeeded: {}",
        text(&o)
    );

    let o = crosd.run("vmc", &["stop", "termina"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        backends_serving(&rw).is_empty(),
        "the disk backends outlived the VM"
    );

    let after = std::fs::read(&rw).unwrap();
    assert_eq!(after.len(), 4 * MIB, "size kept");
    assert!(after[..MIB] == host_pattern[..], "first MiB changed");
    assert!(
        after[MIB..2 * MIB] == guest_pattern[..],
        "the guest's write is not in the file"
    );
    assert!(
        after[2 * MIB..].iter().all(|&b| b == 0),
        "bytes past the write changed"
    );
    assert!(
        std::fs::read(&ro).unwrap() == ro_bytes,
        "the read-only image changed"
    );
}

#[test]
fn start_with_a_missing_extra_disk_is_refused_by_name() {
    let crosd = Crosd::start();
    let missing = crosd.dir.path().join("no-such.img");
    let request = serde_json::json!({"StartVm": {
        "name": "termina",
        "disks": [{"path": missing.to_string_lossy(), "writable": true}],
    }});
    let o = crosd.run("crosmsg", &["send", "concierge", &request.to_string()]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("extra disk 0") && err.contains("no-such.img"),
        "{}",
        text(&o)
    );
    let o = crosd.run("vmc", &["list"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no VMs are running"),
        "{}",
        text(&o)
    );
}
