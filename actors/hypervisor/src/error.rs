//! Errors starting or controlling a VM.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("{what} not found at '{path}'{hint}")]
    BinaryNotFound {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("invalid VM spec for '{vm}': {reason}")]
    BadSpec { vm: String, reason: String },
    #[error("cannot prepare '{path}': {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot start {what} ('{path}'): {source}")]
    Spawn {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{what} did not listen on '{socket}' within {timeout:?} (its log: '{log}'):\n{log_tail}"
    )]
    BackendNotListening {
        what: &'static str,
        socket: PathBuf,
        timeout: Duration,
        log: PathBuf,
        log_tail: String,
    },
    #[error("{what} exited during VM start-up ({status}); its log '{log}' ends with:\n{log_tail}")]
    ExitedEarly {
        what: &'static str,
        status: std::process::ExitStatus,
        log: PathBuf,
        log_tail: String,
    },
    #[error(
        "VM '{vm}' wrote no console output within {timeout:?} in {attempts} attempt(s) (console log '{console_log}' is empty; the VMM's log '{vmm_log}' ends with:\n{vmm_log_tail})"
    )]
    NoConsoleOutput {
        vm: String,
        timeout: Duration,
        attempts: u32,
        console_log: PathBuf,
        vmm_log: PathBuf,
        vmm_log_tail: String,
    },
    #[error("{action} failed: {reason}")]
    Control { action: String, reason: String },
}
