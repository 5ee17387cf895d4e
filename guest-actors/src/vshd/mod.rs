//! vshd, the shell server (REFERENCE.md "vsh / vshd").
//!
//! A client sends a `SetupConnectionRequest`; vshd starts the command (or a login shell) as the
//! requested user in a pty or with pipes, answers READY or FAILED, then relays stdin, resizes and
//! signals to the child and its output and exit status back. One thread per session.
//!
//! The server works over any [`Listener`] (AF_VSOCK in the guest, a Unix socket in tests) or on a
//! single already-connected stream ([`serve_stream`]).

pub mod listener;
pub mod passwd;
pub mod pty;
pub mod session;
pub mod spawn;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use listener::{ConnectAddr, ListenAddr, Listener, SessionStream};
pub use passwd::AccountFiles;

/// What one vshd serves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The only target accepted: [`cros_messages::vsh::VM_SHELL`] in the VM, the container's
    /// name inside a container.
    pub target: String,
    /// User for requests that name none.
    pub default_user: String,
    pub accounts: AccountFiles,
    /// How long a client may take to send the setup request, and to finish a frame it has
    /// started; a client stalled longer is closed, so a session never hangs on half a frame.
    pub frame_timeout: Duration,
}

/// Default [`ServerConfig::frame_timeout`].
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            target: cros_messages::vsh::VM_SHELL.to_string(),
            default_user: "root".to_string(),
            accounts: AccountFiles::default(),
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
        }
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn next_tag(peer: String) -> session::SessionTag {
    session::SessionTag {
        id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
        peer,
    }
}

/// Serves one already-connected stream on the calling thread.
pub fn serve_stream<S: SessionStream>(stream: S, peer: String, config: &ServerConfig) {
    session::run(stream, config, &next_tag(peer));
}

/// Accepts sessions forever, one thread each. Returns only when accepting fails for good.
pub fn serve<L: Listener>(listener: L, config: Arc<ServerConfig>) -> io::Error {
    loop {
        match listener.accept_session() {
            Ok((stream, peer)) => {
                let config = Arc::clone(&config);
                let tag = next_tag(peer);
                let spawned = std::thread::Builder::new()
                    .name(format!("vshd-session-{}", tag.id))
                    .spawn(move || session::run(stream, &config, &tag));
                if let Err(e) = spawned {
                    eprintln!("vshd: cannot start a session thread: {e}");
                }
            }
            Err(e) => match e.raw_os_error() {
                // Transient: interrupted, a peer that gave up, or out of fds/memory for now.
                Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => {}
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                | Some(libc::ENOMEM) => {
                    eprintln!("vshd: accept failed, retrying: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => return e,
            },
        }
    }
}
