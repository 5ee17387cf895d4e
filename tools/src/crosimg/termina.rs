//! `crosimg build-termina`: the termina component directory `cros-termina/<version>/` with
//! vm_kernel, vm_rootfs.img, vm_tools.img, initramfs.img and manifest.json.

use std::path::{Path, PathBuf};
use std::process::Command;

use cros_actors::imageloader::manifest::Manifest;
use cros_actors::imageloader::{INITRD_FILE, KERNEL_FILE, ROOTFS_FILE, TOOLS_FILE};
use cros_hypervisor::initramfs::Initramfs;

use super::kernel::GuestKernel;
use super::staging::Staging;
use super::{ImageError, elf, io_err, rootfs, rootfs_config, run_tool};

pub const COMPONENT_NAME: &str = "cros-termina";

/// Static guest programs and where they go in the root image.
const GUEST_PROGRAMS: [(&str, &str); 3] = [
    ("maitred", "sbin/maitred"),
    ("vshd", "sbin/vshd"),
    ("vm_syslog", "sbin/vm_syslog"),
];
/// LXD's client in termina, which maitred's StartTermina starts; optional while it is being
/// written.
const TREMPLIN: (&str, &str) = ("tremplin", "usr/bin/tremplin");
/// Mount points maitred needs on the read-only root beyond Debian's own.
const ROOT_DIRS: [&str; 6] = [
    "mnt/stateful",
    "mnt/shared",
    "mnt/external",
    "mnt/chromeos",
    "opt/google/cros-containers",
    "lib/modules",
];

pub struct BuildOptions {
    pub out: PathBuf,
    pub version: String,
    pub kernel: GuestKernel,
    pub guest_bin_dir: PathBuf,
    pub force: bool,
}

fn progress(msg: &str) {
    eprintln!("crosimg: {msg}");
}

fn guest_program(dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let p = dir.join(name);
    if !p.exists() {
        return Err(ImageError::Invalid(format!(
            "guest program {} is missing: build it with RUSTFLAGS='-C target-feature=+crt-static' cargo build -p cros-guest --bins --target x86_64-unknown-linux-gnu",
            p.display()
        )));
    }
    match elf::is_static(&p) {
        Ok(true) => Ok(p),
        Ok(false) => Err(ImageError::Invalid(format!(
            "guest program {} is dynamically linked; maitred runs before any library is reachable (build with +crt-static)",
            p.display()
        ))),
        Err(e) => Err(ImageError::Invalid(e)),
    }
}

fn root_tree(st: &Staging, opts: &BuildOptions) -> Result<(), ImageError> {
    let userland = rootfs::cached(&rootfs::TERMINA, &rootfs::cache_dir()?)?;
    progress(&format!("unpacking {}", userland.display()));
    rootfs::unpack(&userland, &st.root)?;
    // maitred mounts a tmpfs on /var: what the packages left there would only be hidden.
    st.empty_dir("var")?;
    rootfs_config::configure(st, &opts.version)?;
    for d in ROOT_DIRS {
        st.dir(d)?;
    }
    for (name, dest) in GUEST_PROGRAMS {
        st.copy(&guest_program(&opts.guest_bin_dir, name)?, dest)?;
        st.strip(dest)?;
    }
    let (name, dest) = TREMPLIN;
    if opts.guest_bin_dir.join(name).exists() {
        st.copy(&guest_program(&opts.guest_bin_dir, name)?, dest)?;
        st.strip(dest)?;
    } else {
        progress(&format!(
            "warning: no {name} in {}: the image has none, and StartTermina cannot start LXD's client",
            opts.guest_bin_dir.display()
        ));
    }
    match &opts.kernel.rootfs_modules {
        Some(modules) => {
            progress(&format!(
                "kernel modules into /lib/modules/{}",
                opts.kernel.release
            ));
            modules.install(st, &opts.kernel.release)?;
        }
        None => progress(
            "warning: a kernel given by path: the root image has no module tree (LXD needs btrfs, overlay, bridge, veth, nf_tables … built in)",
        ),
    }
    Ok(())
}

fn tools_tree(st: &Staging, opts: &BuildOptions) -> Result<(), ImageError> {
    // What containers get bind-mounted at /opt/google/cros-containers: garcon and the shell
    // server it starts, static so they run in a container of any distribution.
    for name in ["vshd", "garcon"] {
        let dest = format!("bin/{name}");
        st.copy(&guest_program(&opts.guest_bin_dir, name)?, &dest)?;
        st.strip(&dest)?;
    }
    Ok(())
}

fn initramfs(opts: &BuildOptions, maitred: &Path, out: &Path) -> Result<(), ImageError> {
    let mut fs = Initramfs::with_base_layout()?;
    let stripped = out.with_extension("init");
    std::fs::copy(maitred, &stripped).map_err(io_err(maitred))?;
    run_tool(Command::new("strip").arg("--strip-debug").arg(&stripped))?;
    fs.add_file_from("init", 0o755, &stripped)?;
    std::fs::remove_file(&stripped).map_err(io_err(&stripped))?;
    fs.add_file(
        cros_guest::maitred::INITRAMFS_MARKER.trim_start_matches('/'),
        0o644,
        Vec::new(),
    )?;
    fs.add_dir("newroot", 0o755)?;
    if let Some(dir) = &opts.kernel.modules_dir {
        fs.add_dir_files_from(
            cros_guest::maitred::INITRAMFS_MODULES.trim_start_matches('/'),
            dir,
        )?;
    }
    fs.write_to(out)?;
    Ok(())
}

/// Builds the component; returns its directory. Building happens in a hidden sibling
/// directory that is verified and then renamed into place, so a failed or interrupted build
/// never leaves a half-made component where imageloader looks.
pub fn build(opts: &BuildOptions) -> Result<PathBuf, ImageError> {
    super::install::publish(
        &opts.out,
        COMPONENT_NAME,
        &opts.version,
        opts.force,
        |work| build_into(opts, work),
    )
}

fn build_into(opts: &BuildOptions, work: &Path) -> Result<(), ImageError> {
    let scratch = work.join(".staging");

    progress(&format!(
        "kernel {} from {}",
        opts.kernel.release,
        opts.kernel.kernel.display()
    ));
    std::fs::copy(&opts.kernel.kernel, work.join(KERNEL_FILE))
        .map_err(io_err(&opts.kernel.kernel))?;

    progress("staging the root filesystem (Debian userland, static guest programs, modules)");
    let root = Staging::new(scratch.join("rootfs"))?;
    root_tree(&root, opts)?;
    let size = root.make_ext4(&work.join(ROOTFS_FILE), "vm_rootfs")?;
    progress(&format!("{ROOTFS_FILE}: {} MiB", size >> 20));

    let tools = Staging::new(scratch.join("tools"))?;
    tools_tree(&tools, opts)?;
    let size = tools.make_ext4(&work.join(TOOLS_FILE), "vm_tools")?;
    progress(&format!("{TOOLS_FILE}: {} MiB", size >> 20));

    progress("initramfs (maitred stage 1 and the kernel modules)");
    initramfs(
        opts,
        &guest_program(&opts.guest_bin_dir, "maitred")?,
        &work.join(INITRD_FILE),
    )?;
    std::fs::remove_dir_all(&scratch).map_err(io_err(&scratch))?;

    progress("hashing files into manifest.json");
    let manifest = Manifest::build(
        work,
        COMPONENT_NAME,
        &opts.version,
        &opts.kernel.release,
        &[KERNEL_FILE, ROOTFS_FILE, TOOLS_FILE, INITRD_FILE],
    )?;
    manifest.write(work)?;
    Ok(())
}

/// The default place for static guest programs: the x86_64-unknown-linux-gnu target directory
/// beside the directory this program runs from (target/<profile>/crosimg →
/// target/x86_64-unknown-linux-gnu/<profile>/), falling back to the other profile.
pub fn default_guest_bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?;
    let target = profile_dir.parent()?;
    let profile = profile_dir.file_name()?.to_string_lossy().into_owned();
    [profile.as_str(), "release", "debug"]
        .iter()
        .map(|p| target.join("x86_64-unknown-linux-gnu").join(p))
        .find(|d| d.join("maitred").exists())
}
