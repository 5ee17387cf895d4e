//! Process limits crosd sets for itself at start.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft RLIMIT_NOFILE to the hard limit: every VM costs crosd descriptors (its
/// processes' pipes, guest connections, sockets), and the common soft default of 1024 is far
/// below what the kernel lets a daemon have. Logs what it did; a failure is logged, not fatal.
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            return 0;
        }
    };
    if soft >= hard {
        tracing::info!("RLIMIT_NOFILE is already at its hard limit {soft}");
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!("raised RLIMIT_NOFILE from {soft} to its hard limit {hard}");
            hard
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise RLIMIT_NOFILE");
            soft
        }
    }
}
