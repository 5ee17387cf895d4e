//! What a guest init (PID 1) does before anything else, and how it ends: the early mounts,
//! console output, and power-off. Shared by the test init and maitred.

use std::io::Write;
use std::path::Path;

use nix::mount::{MsFlags, mount};

#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("cannot create mount point {target}: {source}")]
    MountPoint {
        target: String,
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: String,
        target: String,
        source: nix::Error,
    },
}

/// Mounts /proc, /sys and /dev (devtmpfs). A filesystem already mounted there (EBUSY, e.g.
/// the kernel's devtmpfs automount) is fine.
pub fn mount_early_filesystems() -> Result<(), Pid1Error> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (fstype, target, flags) in [
        ("proc", "/proc", nodev),
        ("sysfs", "/sys", nodev),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID),
    ] {
        std::fs::create_dir_all(target).map_err(|source| Pid1Error::MountPoint {
            target: target.to_string(),
            source,
        })?;
        match mount(Some(fstype), target, Some(fstype), flags, None::<&str>) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(Pid1Error::Mount {
                    fstype: fstype.to_string(),
                    target: target.to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Points stdin, stdout and stderr at /dev/console, in case the kernel could not open it for
/// init (no /dev/console in the initramfs). Does nothing when /dev/console cannot be opened.
pub fn attach_console() {
    use std::os::fd::AsRawFd;
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev/console"))
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `console` stays open across the call.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

/// Writes one line to the console, prefixed with `prefix` so the host can grep for it.
/// The write is unbuffered so the line is on the serial port before a power-off.
pub fn console_line(prefix: &str, msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{prefix}: {msg}");
    let _ = out.flush();
}

/// Syncs and powers the machine off. If power-off fails (no ACPI), reboots instead, which a VMM
/// run with "no reboot" (QEMU -no-reboot) also treats as the end of the VM. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached without CAP_SYS_BOOT (not PID 1 in a VM): exit instead of hanging.
    std::process::exit(1)
}
