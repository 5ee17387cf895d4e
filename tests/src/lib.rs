//! Helpers shared by the end-to-end tests: finding the workspace's built binaries, and the
//! QEMU test guest of the vsock tests ([`vsock_vm`]).
//!
//! The tests start real processes, so the binaries must be built first
//! (`cargo build --workspace --bins`, which the README's test command does).

use std::path::PathBuf;

/// The directory holding the workspace's binaries (`target/debug` or `target/release`),
/// derived from the running test executable (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent directory");
    deps.parent()
        .expect("deps directory has a parent")
        .to_path_buf()
}

/// Path of workspace binary `name`; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` before the end-to-end tests",
        p.display()
    );
    p
}
pub mod containers;
pub mod crosd;
pub mod net_vm;
pub mod uplink;
pub mod vsh_vm;
pub mod vsock_vm;
