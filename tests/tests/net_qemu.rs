//! End to end through QEMU/TCG: the Debian guest kernel with Linux's real virtio_net driver on
//! our `crosvm vhost-user-net` backend, a tap behind it. Inside a network namespace this test
//! makes for itself (nothing it sends can leave it; the namespace, the tap and their addresses
//! go when the test ends, passed or failed), the guest brings eth0 up with a static address,
//! pings the host side of the tap, and TCP carries 1 MiB each way with its SHA-256 checked.
//!
//! Needs: root (for the namespace), qemu-system-x86_64, busybox-static, the guest kernel
//! (tools/scripts/guest-kernel.sh, run from here), `target/debug/crosvm`.

use std::time::Duration;

use cros_e2e::net_vm::{
    self, NetVm, NetVmOptions, Nic, SHA_SINK_PORT, net_guest_kernel, netns, receive_all, send_all,
    sha256,
};

/// Keeps the run directory (console, QEMU and backend logs) when the test fails.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && std::thread::panicking()
        {
            eprintln!("test failed: logs kept in {}", dir.keep().display());
        }
    }
}

#[test]
fn linux_virtio_net_pings_and_carries_tcp_through_our_vhost_user_backend() {
    netns::enter_new_netns();
    let kernel = net_guest_kernel();
    let keep = KeepOnPanic(Some(
        tempfile::Builder::new()
            .prefix("crosd-net-qemu-")
            .tempdir()
            .unwrap(),
    ));
    let dir = keep.0.as_ref().unwrap().path();
    let mut vm = NetVm::start(NetVmOptions {
        kernel: &kernel,
        dir,
        nics: &[Nic::Ours],
        blob_kib: 1024,
        mem_mib: 256,
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let ping = vm.lines("ping ");
    assert_eq!(ping.len(), 1, "{}", vm.logs());
    assert!(ping[0].starts_with("ping 10.78.0.1 ok"), "{}", vm.logs());

    // Guest → host: the guest's random MiB, compared with the hash it printed.
    let blob = vm.wait_console("blob ", Duration::from_secs(5)).unwrap();
    let (data, _) = receive_all(Nic::Ours).unwrap_or_else(|e| panic!("{e}\n{}", vm.logs()));
    assert_eq!(data.len(), 1024 * 1024, "{}", vm.logs());
    assert_eq!(blob, format!("blob {}", sha256(&data)));

    // Host → guest: a MiB of pattern, hashed by the guest.
    let pattern: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    send_all(Nic::Ours, SHA_SINK_PORT, &pattern).unwrap_or_else(|e| panic!("{e}\n{}", vm.logs()));
    let sink = vm
        .wait_console("sink ", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink, format!("sink {}", sha256(&pattern)), "{}", vm.logs());

    assert!(vm.backend_running(), "{}", vm.logs());
    // Linux took the offloads: checksum, TSO4/6 and UFO towards the guest (the tap's
    // TUN_F_CSUM | TSO4 | TSO6 | UFO), and mergeable rx buffers (bit 15).
    let log = std::fs::read_to_string(&vm.backend_log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("virtio-net: driver features"))
        .unwrap_or_else(|| panic!("no features line in the backend log:\n{log}"));
    assert!(line.ends_with("offloads 0x17"), "{line}");
    let features = line
        .split("driver features 0x")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert_ne!(features & (1 << 15), 0, "MRG_RXBUF not negotiated: {line}");
    let _ = net_vm::MARKER;
}
