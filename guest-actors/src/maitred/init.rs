//! Stage 2 mounts: the filesystems a termina VM has before any service starts (REFERENCE.md,
//! "Maitred": /proc, /sys, /tmp, /mnt/external, /run, /dev/shm, /dev/pts, /var, /sys/fs/cgroup),
//! tmpfs homes, and what Debian's userland and LXD expect of them on a read-only root.

use nix::mount::{MsFlags, mount};

use crate::pid1::Pid1Error;

struct EarlyMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

fn early_mounts() -> [EarlyMount; 12] {
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
        // Home directories for this boot: `lxc` (and most tools) write ~/.config.
        m(
            "tmpfs",
            "/root",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0700"),
        ),
        m(
            "tmpfs",
            "/home",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ]
}

/// The search path of PID 1 and what it starts. The kernel gives init none, and Debian keeps
/// the tools maitred runs (mkfs.btrfs, btrfs, modprobe) in /usr/sbin.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Makes the early mounts. Mount points must exist in the (read-only) root image; a filesystem
/// already mounted there (moved from the initramfs) is fine. Called first in stage 2, before
/// any thread starts; also sets [`PATH`].
pub fn mount_early() -> Result<(), Pid1Error> {
    // SAFETY: stage 2 is single-threaded here (its first call), so nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("PATH", PATH) };
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
    populate_runtime_dirs();
    if let Err(e) = loopback_up() {
        // Not fatal: only LXD's local listeners and the containers' own need it.
        eprintln!("maitred: cannot bring up lo: {e}");
    }
    Ok(())
}

/// The skeleton of the tmpfs /var and /run that Debian's packages expect (their /var in the
/// image is hidden under the tmpfs): the legacy /var/run and /var/lock links, a sticky
/// /var/tmp, and /run/resolv.conf, which the image's /etc/resolv.conf points at.
fn populate_runtime_dirs() {
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        "/var/log",
        "/var/lib",
        "/var/cache",
        "/var/tmp",
        "/run/lock",
        "/run/crosd",
    ] {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::set_permissions("/var/tmp", std::fs::Permissions::from_mode(0o1777));
    let _ = std::os::unix::fs::symlink("/run", "/var/run");
    let _ = std::os::unix::fs::symlink("/run/lock", "/var/lock");
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        for (home, uid, gid) in user_homes(&passwd) {
            if std::fs::create_dir_all(&home).is_ok() {
                let _ = std::os::unix::fs::chown(&home, Some(uid), Some(gid));
            }
        }
    }
    // termina has no network of its own: nothing to resolve with. LXD reaches image servers
    // through crosd's proxy, which resolves names on the host.
    if !std::path::Path::new("/run/resolv.conf").exists() {
        let _ = std::fs::write(
            "/run/resolv.conf",
            "# termina has no DNS; LXD's image downloads go through crosd's proxy\n",
        );
    }
}

/// Sets the loopback interface up (the kernel gives it 127.0.0.1 and ::1 once it is up).
/// LXD, dnsmasq and the containers' own services expect a working `lo`.
pub fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own for the call.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the hostname to the VM's name.
pub fn set_hostname(name: &str) {
    let _ = nix::unistd::sethostname(name);
}

/// The home directories under /home of the users in `passwd` (uid, gid) that the tmpfs /home
/// must hold.
fn user_homes(passwd: &str) -> Vec<(std::path::PathBuf, u32, u32)> {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let (uid, gid, home) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?, f.get(5)?);
            let home = std::path::Path::new(home);
            let under_home = home.parent() == Some(std::path::Path::new("/home"))
                && home.file_name().is_some_and(|n| n != "..");
            under_home.then(|| (home.to_path_buf(), uid, gid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_come_from_passwd_and_stay_under_home() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nchronos:x:1000:1000:chronos:/home/chronos:/bin/bash\nodd:x:5:5::/home/../etc:/bin/sh\nbad:x:notanumber:1::/home/bad:/bin/sh\n";
        assert_eq!(
            user_homes(passwd),
            [(std::path::PathBuf::from("/home/chronos"), 1000, 1000)]
        );
    }
}
