//! Stage 2 mounts: the filesystems a termina VM has before any service starts (REFERENCE.md,
//! "Maitred": /proc, /sys, /tmp, /mnt/external, /run, /dev/shm, /dev/pts, /var, /sys/fs/cgroup).

use nix::mount::{MsFlags, mount};

use crate::pid1::Pid1Error;

struct EarlyMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

fn early_mounts() -> [EarlyMount; 10] {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let m = |fstype, target, flags, data| EarlyMount {
        fstype,
        target,
        flags,
        data,
    };
    [
        m("proc", "/proc", nodev, None),
        m("sysfs", "/sys", nodev, None),
        m("devtmpfs", "/dev", MsFlags::MS_NOSUID, None),
        m(
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        m(
            "tmpfs",
            "/dev/shm",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        m(
            "tmpfs",
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        m(
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        // The root filesystem is read-only; /var holds logs and state that live for this boot.
        m(
            "tmpfs",
            "/var",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        m("tmpfs", "/mnt/external", nodev, Some("mode=0755")),
        m("cgroup2", "/sys/fs/cgroup", nodev, None),
    ]
}

/// Makes the early mounts. Mount points must exist in the (read-only) root image; a filesystem
/// already mounted there (moved from the initramfs) is fine.
pub fn mount_early() -> Result<(), Pid1Error> {
    for m in early_mounts() {
        if !std::path::Path::new(m.target).is_dir() {
            std::fs::create_dir_all(m.target).map_err(|source| Pid1Error::MountPoint {
                target: m.target.to_string(),
                source,
            })?;
        }
        // /proc, /sys and /dev come moved from the initramfs; mounting them again would stack.
        if super::handlers::is_mounted(m.target) {
            continue;
        }
        match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(Pid1Error::Mount {
                    fstype: m.fstype.to_string(),
                    target: m.target.to_string(),
                    source,
                });
            }
        }
    }
    // /dev/ptmx must point at this devpts instance for openpty in vshd.
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    for dir in ["/var/log", "/var/lib", "/var/tmp", "/run/crosd"] {
        let _ = std::fs::create_dir_all(dir);
    }
    Ok(())
}

/// Sets the hostname to the VM's name.
pub fn set_hostname(name: &str) {
    let _ = nix::unistd::sethostname(name);
}
