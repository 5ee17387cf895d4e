//! Builds the freestanding guest payloads of vmm/tests/payloads with GNU binutils: `as --64`
//! with the payloads folder on the include path (for their `.include "lib/…"` routines), then
//! `ld` into a static image whose code starts at a fixed guest address.
//!
//! One source for every test and benchmark that boots a payload: cros-vmm's tests reach it as
//! `#[path = "support/payload.rs"] mod payload;`, cros-tools' as
//! `#[path = "../../vmm/tests/support/payload.rs"] mod payload;`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the payloads' code starts in guest memory: our loader's load address for ELF kernels.
const ELF_LOAD_ADDRESS: u64 = 0x20_0000;

/// Panics, with the reason, when /dev/kvm cannot be opened read-write: a test that boots a
/// payload must fail there, never pass without running it.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("/dev/kvm cannot be opened ({e}); booting a guest payload needs KVM");
    }
}

/// vmm/tests/payloads. Both crates that include this file sit in the workspace root, so the
/// path from either manifest folder is the same.
pub fn payloads_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/tests/payloads")
}

/// Assembles and links `vmm/tests/payloads/<name>.S` into a static ELF in `dir`, loaded at
/// 2 MiB and entered at `_start`. Panics, naming the tool, when binutils is missing or the
/// source does not build.
pub fn build_payload(dir: &Path, name: &str) -> PathBuf {
    let elf = dir.join(format!("{name}.elf"));
    link(&assemble(dir, name), ELF_LOAD_ADDRESS, &[], &elf);
    elf
}

/// Assembles and links `vmm/tests/payloads/<name>.S` into flat machine code in `dir` (no ELF
/// headers) whose first byte, `_start`, runs at guest address `text_address`.
#[allow(dead_code, reason = "only cros-vmm's kvm_payloads builds a bzImage")]
pub fn build_flat_payload(dir: &Path, name: &str, text_address: u64) -> PathBuf {
    let flat = dir.join(format!("{name}.bin"));
    link(
        &assemble(dir, name),
        text_address,
        &["--oformat", "binary"],
        &flat,
    );
    flat
}

fn assemble(dir: &Path, name: &str) -> PathBuf {
    let payloads = payloads_dir();
    let obj = dir.join(format!("{name}.o"));
    run_binutils(
        "as",
        Command::new("as")
            .arg("--64")
            .arg("-I")
            .arg(&payloads)
            .arg("-o")
            .arg(&obj)
            .arg(payloads.join(format!("{name}.S"))),
    );
    obj
}

fn link(obj: &Path, text_address: u64, extra: &[&str], out: &Path) {
    run_binutils(
        "ld",
        Command::new("ld")
            .args(["-N", "-static", "-nostdlib", "-e", "_start"])
            .arg(format!("-Ttext={text_address:#x}"))
            .arg("--no-warn-rwx-segments")
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(obj),
    );
}

/// Runs one binutils `tool`, panicking with its name and stderr when it cannot start or fails.
fn run_binutils(tool: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{tool}` to build a guest payload ({e}): install GNU binutils \
             (apt-get install binutils)"
        )
    });
    assert!(
        out.status.success(),
        "`{tool}` failed building a guest payload: {cmd:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
