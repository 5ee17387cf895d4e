//! Mount9P: the host's 9P server (seneschal's, one per VM) mounted with the kernel's 9p client
//! over a vsock connection (`trans=fd`), as Crostini's maitred does.

use std::os::fd::AsRawFd;

use cros_messages::{CrosError, ports};
use nix::mount::{MsFlags, mount};

/// msize values tried, largest first: the fd transport's maximum is 1 MiB on current kernels
/// (MAX_SOCK_BUF), 64 KiB on older ones; a kernel refuses a larger one with EINVAL.
pub const MSIZES: [u32; 5] = [1024 * 1024, 512 * 1024, 256 * 1024, 128 * 1024, 64 * 1024];
/// Ports seneschal's servers use.
const MAX_PORT: u32 = ports::SENESCHAL_BASE + 1024;

/// The mount options for a connection on `fd` with `msize`.
pub fn options(fd: i32, msize: u32) -> String {
    format!("trans=fd,rfdno={fd},wfdno={fd},version=9p2000.L,msize={msize}")
}

/// Checks the request; the host chooses ports from [`ports::SENESCHAL_BASE`].
pub fn check(port: u32) -> Result<(), CrosError> {
    if !(ports::SENESCHAL_BASE..MAX_PORT).contains(&port) {
        return Err(CrosError::invalid(format!(
            "Mount9P: port {port} is not one of seneschal's ({}..{MAX_PORT})",
            ports::SENESCHAL_BASE
        )));
    }
    Ok(())
}

/// Connects to host port `port` and mounts the server at `target` (created if missing) with
/// the largest msize the kernel takes; returns that msize.
pub fn mount_9p(port: u32, target: &str) -> Result<u32, CrosError> {
    std::fs::create_dir_all(target)
        .map_err(|e| CrosError::internal(format!("create {target}: {e}")))?;
    let mut last = None;
    for msize in MSIZES {
        // A fresh connection for each try: a refused mount may have spoken on the last one.
        let conn =
            vsock::VsockStream::connect_with_cid_port(ports::HOST_CID, port).map_err(|e| {
                CrosError::unavailable(format!("Mount9P: connect to host port {port}: {e}"))
            })?;
        let opts = options(conn.as_raw_fd(), msize);
        match mount(
            Some("crosd-shared"),
            target,
            Some("9p"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        ) {
            // The kernel holds the connection now; ours is closed.
            Ok(()) => {
                eprintln!(
                    "maitred: 9P shares mounted at {target} (host port {port}, msize {msize})"
                );
                return Ok(msize);
            }
            Err(nix::Error::EINVAL) => last = Some(nix::Error::EINVAL),
            Err(e) => {
                return Err(CrosError::internal(format!(
                    "Mount9P: mount 9p on {target} ({opts}): {e}"
                )));
            }
        }
    }
    Err(CrosError::internal(format!(
        "Mount9P: the kernel took no msize of {MSIZES:?} for {target}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}
