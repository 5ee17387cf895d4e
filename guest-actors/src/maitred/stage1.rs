//! Stage 1, in the initramfs: load the modules, mount the root image found by its disk serial,
//! and switch root to it, then exec stage 2 (`/sbin/maitred`) there.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

use super::disks::{self, Filesystem};
use super::{INITRAMFS_MODULES, ROOTFS_SERIAL};
use crate::kmod;

const NEW_ROOT: &str = "/newroot";
/// Disks appear asynchronously after virtio_blk loads.
const DISK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    #[error(transparent)]
    Pid1(#[from] crate::pid1::Pid1Error),
    #[error(transparent)]
    Modules(#[from] kmod::KmodError),
    #[error("no disk with serial {serial} appeared within {secs} s (disks seen: {seen})")]
    NoRootDisk {
        serial: &'static str,
        secs: u64,
        seen: String,
    },
    #[error("cannot read {dev}: {source}")]
    Probe {
        dev: PathBuf,
        source: std::io::Error,
    },
    #[error("root disk {dev} holds no filesystem maitred recognises (ext4, erofs)")]
    UnknownFilesystem { dev: PathBuf },
    #[error("cannot {what}: {source}")]
    Sys { what: String, source: nix::Error },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Stage1Error {
    let what = what.into();
    move |source| Stage1Error::Sys { what, source }
}

fn wait_for_root_disk() -> Result<PathBuf, Stage1Error> {
    let start = Instant::now();
    loop {
        if let Some(dev) = disks::find_by_serial(Path::new("/sys/block"), ROOTFS_SERIAL) {
            return Ok(dev);
        }
        if start.elapsed() > DISK_WAIT {
            let seen = std::fs::read_dir("/sys/block")
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            return Err(Stage1Error::NoRootDisk {
                serial: ROOTFS_SERIAL,
                secs: DISK_WAIT.as_secs(),
                seen,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs stage 1; on success never returns (execs stage 2).
pub fn run() -> Result<std::convert::Infallible, Stage1Error> {
    crate::pid1::mount_early_filesystems()?;
    crate::pid1::attach_console();
    kmod::load_dir(Path::new(INITRAMFS_MODULES))?;

    let dev = wait_for_root_disk()?;
    let fs = disks::probe(&dev).map_err(|source| Stage1Error::Probe {
        dev: dev.clone(),
        source,
    })?;
    let fstype = match fs {
        Some(fs @ (Filesystem::Ext4 | Filesystem::Erofs)) => fs.mount_type(),
        _ => return Err(Stage1Error::UnknownFilesystem { dev }),
    };
    std::fs::create_dir_all(NEW_ROOT).map_err(|source| crate::pid1::Pid1Error::MountPoint {
        target: NEW_ROOT.to_string(),
        source,
    })?;
    mount(
        Some(&dev),
        NEW_ROOT,
        Some(fstype),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(sys(format!(
        "mount {} ({fstype}) on {NEW_ROOT}",
        dev.display()
    )))?;

    for fs in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{fs}");
        mount(
            Some(fs),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sys(format!("move {fs} to {target}")))?;
    }
    // switch_root: make the new root "/" (the initramfs stays allocated; it is a few MiB).
    nix::unistd::chdir(NEW_ROOT).map_err(sys("chdir to the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move the new root onto /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;

    let prog = CString::new("/sbin/maitred").map_err(|_| Stage1Error::Sys {
        what: "build argv".into(),
        source: nix::Error::EINVAL,
    })?;
    let arg1 = CString::new("--stage2").map_err(|_| Stage1Error::Sys {
        what: "build argv".into(),
        source: nix::Error::EINVAL,
    })?;
    match nix::unistd::execv(&prog, &[prog.clone(), arg1]) {
        Ok(never) => match never {},
        Err(e) => Err(sys("exec /sbin/maitred on the new root")(e)),
    }
}
