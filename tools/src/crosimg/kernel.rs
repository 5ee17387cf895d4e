//! The guest kernel: fetched by the project's guest-kernel.sh (embedded here, so crosimg works
//! from any directory), or given by path.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::staging::Staging;
use super::{ImageError, io_err, run_tool};

const GUEST_KERNEL_SH: &str = include_str!("../../scripts/guest-kernel.sh");

/// Modules the initramfs loads before the root switch: the virtio-mmio transport, block and
/// vsock devices and the root image's filesystem (ext4), which is all VmReady needs. crc32c
/// comes first: ext4 and jbd2 soft-depend on it, and the script follows only hard dependencies.
pub const TERMINA_EARLY_MODULES: &str =
    "crc32c_generic virtio_mmio virtio_blk vmw_vsock_virtio_transport ext4";
/// Modules maitred loads from the root image after VmReady, while the host sets up: btrfs for
/// the stateful disk (its raid6 self-benchmark alone costs half a second under TCG), 9P and
/// overlayfs, the ACPI power button (`button`) with `evdev`, through which maitred sees a
/// press, and fuse and tun, whose /dev nodes LXD's default profile passes to every container:
/// with no udev to make the nodes ahead, opening them cannot load the modules on demand;
/// virtio_net for the VM's network device (`crosd --network`), which nothing else would load
/// without udev. The crypto modules are soft dependencies of btrfs.
pub const TERMINA_LATE_MODULES: &str = "crc32c_generic xxhash_generic blake2b_generic btrfs 9p \
    9pnet_fd overlay evdev button fuse tun virtio_net";
/// Modules the root image carries for LXD beside the late ones, loaded when asked for — by
/// LXD's own `modprobe` calls or by the kernel's on-demand loading (a veth pair, an nft
/// expression) — from the module tree in /lib/modules/<release>: lxdbr0 (a bridge with veth
/// pairs, NAT and filtering with nftables), loop and squashfs (images), the other NIC types,
/// 9P over virtio (sharing).
pub const TERMINA_LXD_MODULES: &str = "bridge br_netfilter veth macvlan ipvlan dummy \
    loop squashfs nf_tables nf_conntrack nf_nat nft_chain_nat nft_nat nft_masq nft_redir nft_ct \
    nft_reject_inet nft_fib_inet nft_limit nft_log nf_conntrack_netlink 9pnet_virtio";

/// A directory guest-kernel.sh made for a set of modules: the decompressed .ko files, their
/// `load-order` (file names, dependencies first) and `paths` (where each lies in the kernel's
/// module tree, same order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSet {
    pub dir: PathBuf,
}

impl ModuleSet {
    /// (file name, path in the module tree) of each module, in load order.
    pub fn entries(&self) -> Result<Vec<(String, String)>, ImageError> {
        let read = |name: &str| {
            let p = self.dir.join(name);
            std::fs::read_to_string(&p).map_err(io_err(&p))
        };
        let order = read(cros_guest::kmod::LOAD_ORDER_FILE)?;
        let paths = read(PATHS_FILE)?;
        let order: Vec<&str> = order.lines().filter(|l| !l.is_empty()).collect();
        let paths: Vec<&str> = paths.lines().filter(|l| !l.is_empty()).collect();
        if order.len() != paths.len()
            || order
                .iter()
                .zip(&paths)
                .any(|(name, path)| !path.ends_with(&format!("/{name}")))
        {
            return Err(ImageError::Invalid(format!(
                "{}: load-order and paths do not name the same modules; delete the directory and rerun",
                self.dir.display()
            )));
        }
        Ok(order
            .into_iter()
            .zip(paths)
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect())
    }
}

const PATHS_FILE: &str = "paths";

/// The modules of the root image: a subset of the kernel's module tree, and which of them
/// maitred loads itself after VmReady.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsModules {
    /// Every module the image carries (the late ones and LXD's), with their dependencies.
    pub all: ModuleSet,
    /// The late modules, dependencies first.
    pub late: ModuleSet,
    /// The kernel's whole extracted tree (for modules.builtin, which modprobe reads to accept
    /// a module built into the kernel).
    pub tree: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    pub kernel: PathBuf,
    /// Flat directory of .ko files with a `load-order` file, for the initramfs; None for a
    /// kernel with everything built in.
    pub modules_dir: Option<PathBuf>,
    /// The modules for the root image; None for a kernel given by path.
    pub rootfs_modules: Option<RootfsModules>,
    pub release: String,
}

/// Runs guest-kernel.sh (downloads into ~/.cache/crosd once) for the initramfs modules
/// (`early`), those maitred loads after VmReady (`late`) and the others the root image
/// carries (`more`).
pub fn fetch_debian_kernel(early: &str, late: &str, more: &str) -> Result<GuestKernel, ImageError> {
    let early = run_guest_kernel_sh(early)?;
    let late_set = run_guest_kernel_sh(late)?;
    let all = run_guest_kernel_sh(&format!("{late} {more}"))?;
    Ok(GuestKernel {
        release: kernel_release(&early.kernel)?,
        kernel: early.kernel,
        modules_dir: Some(early.modules_dir),
        rootfs_modules: Some(RootfsModules {
            all: ModuleSet {
                dir: all.modules_dir,
            },
            late: ModuleSet {
                dir: late_set.modules_dir,
            },
            tree: all.tree,
        }),
    })
}

/// What guest-kernel.sh prints for one set of modules.
struct ScriptOutput {
    kernel: PathBuf,
    modules_dir: PathBuf,
    tree: PathBuf,
}

fn run_guest_kernel_sh(modules: &str) -> Result<ScriptOutput, ImageError> {
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
            .map(|v| PathBuf::from(v.trim_matches(['\'', '"'])))
            .ok_or_else(|| ImageError::Invalid(format!("guest-kernel.sh printed no {name}= line")))
    };
    Ok(ScriptOutput {
        kernel: var("KERNEL")?,
        modules_dir: var("MODULES_DIR")?,
        tree: var("MODULES_TREE")?,
    })
}

impl RootfsModules {
    /// Installs the modules into the root tree at `st` as a real module tree,
    /// /lib/modules/<release>/… with depmod's indexes (so `modprobe` and the kernel's on-demand
    /// loading find them), and the late ones as links in maitred's load-order directory.
    pub fn install(&self, st: &Staging, release: &str) -> Result<(), ImageError> {
        let base = format!("lib/modules/{release}");
        let all = self.all.entries()?;
        for (name, path) in &all {
            st.copy(&self.all.dir.join(name), &format!("{base}/{path}"))?;
        }
        for f in [
            "modules.builtin",
            "modules.builtin.modinfo",
            "modules.order",
        ] {
            let src = self.tree.join(f);
            if src.exists() {
                st.copy(&src, &format!("{base}/{f}"))?;
            }
        }
        run_tool(
            Command::new("depmod")
                .arg("--basedir")
                .arg(&st.root)
                .arg(release),
        )?;
        let late_dir = cros_guest::maitred::LATE_MODULES.trim_start_matches('/');
        for (name, path) in self.late.entries()? {
            if !all.iter().any(|(_, p)| *p == path) {
                return Err(ImageError::Invalid(format!(
                    "late module {path} is not among the root image's modules"
                )));
            }
            st.symlink(&format!("{late_dir}/{name}"), &format!("/{base}/{path}"))?;
        }
        let order = cros_guest::kmod::LOAD_ORDER_FILE;
        st.copy(&self.late.dir.join(order), &format!("{late_dir}/{order}"))
    }
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
        rootfs_modules: None,
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
