//! vsh into a real Linux guest under QEMU/TCG: the Debian guest kernel with its virtio-vsock
//! driver, our static `vshd` on AF_VSOCK port 9001, and the `vsh` binary reaching it through the
//! VM's hybrid vsock socket (`CONNECT 9001`). See `cros_e2e::vsh_vm` for the guest and what it
//! needs.

use std::process::Command;

use cros_e2e::vsh_vm::VshVm;

#[test]
fn vsh_reaches_vshd_in_a_qemu_guest_over_vsock() {
    let vm = VshVm::start("vsh-e2e");
    let why = |out: &std::process::Output| {
        format!(
            "stdout {:?}, stderr {:?}\nconsole:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            vm.console_tail()
        )
    };

    // The guest's kernel, not the host's.
    let out = vm.vsh(&["--", "uname", "-r"], b"");
    let host = Command::new("uname").arg("-r").output().unwrap().stdout;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        vm.guest_release,
        "{}",
        why(&out)
    );
    assert_ne!(out.stdout, host);
    assert_eq!(out.status.code(), Some(0), "{}", why(&out));

    let out = vm.vsh(&["--", "sh", "-c", "exit 7"], b"");
    assert_eq!(out.status.code(), Some(7), "{}", why(&out));

    let out = vm.vsh(&["--", "sh", "-c", "cat; echo err >&2"], b"through vsock\n");
    assert_eq!(out.stdout, b"through vsock\n", "{}", why(&out));
    assert_eq!(out.stderr, b"err\n", "{}", why(&out));

    let out = vm.vsh(&["-t", "--", "sh", "-c", "tty; stty size"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("/dev/pts/"), "{}", why(&out));
    assert_eq!(out.status.code(), Some(0), "{}", why(&out));

    // A login shell (no command) reading its commands from the pipe.
    let out = vm.vsh(&[], b"echo \"$0 in $(pwd)\"; exit 3\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "-sh in /\n",
        "{}",
        why(&out)
    );
    assert_eq!(out.status.code(), Some(3), "{}", why(&out));
}
