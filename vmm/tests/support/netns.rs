//! Network namespaces for the network tests (issue 14's hygiene rule): a test moves its own
//! thread into a fresh, empty network namespace before it creates any tap or socket, so no
//! frame it makes can reach another namespace, let alone leave the machine, and everything it
//! created (taps, addresses, routes) goes with the namespace when the thread and the
//! descriptors it opened are gone, whether the test passed or panicked.

#![allow(dead_code)]

use std::process::Command;

/// Moves the calling thread (and the threads and processes it starts from now on) into a new
/// network namespace, with its loopback up. Needs CAP_SYS_ADMIN (root); panics saying so.
pub fn enter_new_netns() {
    // SAFETY: unshare(2) with a flag only; it changes the calling thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!(
            "unshare(CLONE_NEWNET): {} (the network tests need root to make their own \
             network namespace)",
            std::io::Error::last_os_error()
        );
    }
    // No IPv6 on the interfaces made here: router solicitations and DAD probes would be
    // frames the tests did not send.
    for knob in ["default", "all"] {
        let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
        if std::path::Path::new(&path).exists() {
            std::fs::write(&path, "1").unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
    ip(&["link", "set", "lo", "up"]);
}

/// Runs `ip ARGS` in the calling thread's namespace; panics with its output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` ({e}): install iproute2"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The MAC address of interface `name` in the calling thread's namespace.
pub fn mac_of(name: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-o", "link", "show", name])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no link/ether in {text:?}"));
    let mut out = [0u8; 6];
    for (b, part) in out.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    out
}
