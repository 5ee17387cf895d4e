//! Pseudo-terminal pairs for pty sessions.
//!
//! Both ends are opened close-on-exec: sessions run on concurrent threads, and a pty end leaked
//! into another session's child would keep the slave open, so this session would never see EOF.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};

/// Window size bounds accepted from a client; anything outside is refused, not clamped.
pub const MAX_WINDOW_DIM: u16 = 4096;
/// Size used when the client sends none (0 rows or columns).
pub const DEFAULT_ROWS: u16 = 24;
pub const DEFAULT_COLS: u16 = 80;

/// The master side (kept by vshd) and the slave side (handed to the child).
pub struct PtyPair {
    pub master: OwnedFd,
    pub slave: File,
    /// The slave's path, e.g. `/dev/pts/3`.
    pub slave_path: String,
}

/// Opens a new pty pair and sets its window size.
pub fn open(rows: u16, cols: u16) -> io::Result<PtyPair> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_path = ptsname_r(&master)?;
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&slave_path)?;
    // SAFETY: into_raw_fd hands over the only owner of a valid descriptor.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    set_window_size(&master, rows, cols)?;
    Ok(PtyPair {
        master,
        slave,
        slave_path,
    })
}

/// TIOCSWINSZ on a pty end; the kernel sends SIGWINCH to the foreground group.
pub fn set_window_size(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct that lives for the whole call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal's end-of-file character (VEOF, normally ^D), read from the pty's termios.
pub fn eof_char(fd: &impl std::os::fd::AsFd) -> u8 {
    nix::sys::termios::tcgetattr(fd)
        .map(|t| t.control_chars[libc::VEOF])
        .unwrap_or(0x04)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_pts_with_window_size() {
        let pair = open(33, 101).unwrap();
        assert!(
            pair.slave_path.starts_with("/dev/pts/"),
            "{}",
            pair.slave_path
        );
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize struct we own.
        let rc = unsafe { libc::ioctl(pair.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        assert_eq!(eof_char(&pair.master), 0x04);
    }
}
