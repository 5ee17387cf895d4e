//! The guest kernel: fetched by the project's guest-kernel.sh (embedded here, so crosimg works
//! from any directory), or given by path.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ImageError, io_err, run_tool};

const GUEST_KERNEL_SH: &str = include_str!("../../scripts/guest-kernel.sh");

/// Modules the initramfs loads before the root switch: the virtio-mmio transport, block and
/// vsock devices and the root image's filesystem (ext4), which is all VmReady needs. crc32c
/// comes first: ext4 and jbd2 soft-depend on it, and the script follows only hard dependencies.
pub const TERMINA_EARLY_MODULES: &str =
    "crc32c_generic virtio_mmio virtio_blk vmw_vsock_virtio_transport ext4";
/// Modules maitred loads from the root image after VmReady, while the host sets up: btrfs for
/// the stateful disk (its raid6 self-benchmark alone costs half a second under TCG), 9P and
/// overlayfs, and the ACPI power button (`button`) with `evdev`, through which maitred sees a
/// press. The crypto modules are soft dependencies of btrfs. 9p and 9pnet_fd are seneschal's
/// shares (Mount9P); 9pnet_virtio only lets tools/scripts/bench-9p.sh mount QEMU's own
/// virtio-9p device beside them.
pub const TERMINA_LATE_MODULES: &str = "crc32c_generic xxhash_generic blake2b_generic btrfs 9p 9pnet_fd 9pnet_virtio overlay evdev button";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    pub kernel: PathBuf,
    /// Flat directory of .ko files with a `load-order` file, for the initramfs; None for a
    /// kernel with everything built in.
    pub modules_dir: Option<PathBuf>,
    /// The same, for the modules maitred loads after VmReady (in the root image).
    pub late_modules_dir: Option<PathBuf>,
    pub release: String,
}

/// Runs guest-kernel.sh (downloads into ~/.cache/crosd once) for the early and late modules.
pub fn fetch_debian_kernel(early: &str, late: &str) -> Result<GuestKernel, ImageError> {
    let (kernel, modules_dir) = run_guest_kernel_sh(early)?;
    let (_, late_modules_dir) = run_guest_kernel_sh(late)?;
    Ok(GuestKernel {
        release: kernel_release(&kernel)?,
        kernel,
        modules_dir: Some(modules_dir),
        late_modules_dir: Some(late_modules_dir),
    })
}

/// The kernel and a module directory for `modules`, as guest-kernel.sh prints them.
fn run_guest_kernel_sh(modules: &str) -> Result<(PathBuf, PathBuf), ImageError> {
    let out = run_tool(
        Command::new("bash")
            .arg("-c")
            .arg(GUEST_KERNEL_SH)
            .arg("guest-kernel.sh")
            .args(["--modules", modules]),
    )?;
    let var = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.trim_matches(['\'', '"']).to_string())
            .ok_or_else(|| ImageError::Invalid(format!("guest-kernel.sh printed no {name}= line")))
    };
    Ok((
        PathBuf::from(var("KERNEL")?),
        PathBuf::from(var("MODULES_DIR")?),
    ))
}

/// A kernel given by path, with an optional module directory (flat, with `load-order`).
pub fn given_kernel(kernel: &Path, modules_dir: Option<&Path>) -> Result<GuestKernel, ImageError> {
    if let Some(dir) = modules_dir {
        let order = dir.join(cros_guest::kmod::LOAD_ORDER_FILE);
        std::fs::metadata(&order).map_err(io_err(&order))?;
    }
    Ok(GuestKernel {
        release: kernel_release(kernel)?,
        kernel: kernel.to_path_buf(),
        modules_dir: modules_dir.map(Path::to_path_buf),
        late_modules_dir: None,
    })
}

/// The release (`uname -r`) of a bzImage, read from its setup header: the `kernel_version`
/// field at 0x20e points (relative to 0x200) at a string like "6.1.0-56-amd64 (…) #1 SMP …".
/// Anything else is refused, which is also how a corrupted vm_kernel is caught early.
pub fn kernel_release(kernel: &Path) -> Result<String, ImageError> {
    let data = std::fs::read(kernel).map_err(io_err(kernel))?;
    let bad = |why: &str| {
        ImageError::Invalid(format!(
            "{} is not a Linux bzImage: {why}",
            kernel.display()
        ))
    };
    if data.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no HdrS setup header signature"));
    }
    let off = data
        .get(0x20e..0x210)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .ok_or_else(|| bad("short header"))?;
    let start = off + 0x200;
    let s = data
        .get(start..(start + 256).min(data.len()))
        .ok_or_else(|| bad("version string out of range"))?;
    let end = s
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(s.len());
    let release = std::str::from_utf8(&s[..end]).map_err(|_| bad("version string is not text"))?;
    if release.is_empty() {
        return Err(bad("empty version string"));
    }
    Ok(release.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_release_from_a_setup_header() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        img[0x500..0x500 + 24].copy_from_slice(b"6.1.0-56-amd64 (debian) ");
        std::fs::write(&k, &img).unwrap();
        assert_eq!(kernel_release(&k).unwrap(), "6.1.0-56-amd64");
        std::fs::write(&k, b"not a kernel").unwrap();
        assert!(
            kernel_release(&k)
                .unwrap_err()
                .to_string()
                .contains("not a Linux bzImage")
        );
    }
}
