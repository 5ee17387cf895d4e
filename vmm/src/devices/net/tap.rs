//! The host side of virtio-net: a tap interface opened through /dev/net/tun with
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, so every frame read or written carries the 12-byte
//! `virtio_net_hdr_v1` that the guest's frames carry too, and the kernel does the checksum and
//! segmentation work the offloads we negotiate leave undone (TUNSETOFFLOAD).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::error::NetError;
use super::header::HEADER_SIZE;

/// Longest interface name the kernel accepts (IFNAMSIZ, with its NUL).
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// An open tap interface, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// What reading or writing the tap came to.
#[derive(Debug, PartialEq, Eq)]
pub enum TapIo {
    /// This many bytes (header included) were read or written.
    Done(usize),
    /// Nothing to read now (EAGAIN).
    WouldBlock,
}

impl Tap {
    /// Opens (or creates, if it does not exist and we may) the tap `name` in the calling
    /// thread's network namespace, with vnet headers of [`HEADER_SIZE`] bytes and no offloads
    /// until a driver negotiates some.
    pub fn open(name: &str) -> Result<Self, NetError> {
        let err = |reason: String| NetError::OpenTap {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(err(format!(
                "not an interface name (1 to {} characters, no '/', space or NUL)",
                IFNAMSIZ - 1
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| err(format!("/dev/net/tun: {e}")))?;
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass, which lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(err(format!("TUNSETIFF: {}", io::Error::last_os_error())));
        }
        let size = HEADER_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads the int we pass.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(err(format!(
                "TUNSETVNETHDRSZ: {}",
                io::Error::last_os_error()
            )));
        }
        let tap = Self {
            file,
            name: name.to_owned(),
        };
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// Stands `file` in for a tap named `name`: any descriptor that keeps frame boundaries
    /// (one end of a SOCK_SEQPACKET socketpair) does, for the fuzz target, which cannot make
    /// taps. TUNSETOFFLOAD fails on it; drive `NetDevice::process_rx`/`process_tx` directly.
    pub fn from_file(file: File, name: &str) -> Self {
        Self {
            file,
            name: name.to_owned(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads (`TUN_F_*`) the guest takes: frames written to the tap
    /// by the host stack are then left unsegmented and with partial checksums accordingly.
    pub fn set_offload(&self, flags: u32) -> Result<(), NetError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(NetError::SetOffload {
                name: self.name.clone(),
                flags,
                reason: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (vnet header first) into `buf`.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<TapIo> {
        loop {
            // SAFETY: the pointer and length describe `buf`, a live mutable slice.
            let n =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(TapIo::Done(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(TapIo::WouldBlock),
                _ => return Err(e),
            }
        }
    }

    /// Writes one frame (vnet header first) gathered from `iovs`, which must point to memory
    /// that stays mapped and readable for the call (the caller holds its guards).
    pub fn write_frame_vectored(&self, iovs: &[libc::iovec]) -> io::Result<TapIo> {
        let count = libc::c_int::try_from(iovs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: every iovec describes readable memory the caller keeps mapped for the
            // call (guest memory under its guards); writev only reads it.
            let n = unsafe { libc::writev(self.file.as_raw_fd(), iovs.as_ptr(), count) };
            if n >= 0 {
                return Ok(TapIo::Done(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(TapIo::WouldBlock),
                _ => return Err(e),
            }
        }
    }

    /// The descriptor a device thread waits on (edge-triggered) for frames to read.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Whether an error of a tap read or write means the interface is gone (deleted while we held
/// it: the kernel detached our file, EBADFD) rather than one frame being refused.
pub fn tap_vanished(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::EBADF) | Some(libc::ENODEV)
    )
}
