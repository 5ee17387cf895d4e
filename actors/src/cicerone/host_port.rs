//! One-use host ports a guest dials back on: a container shell's vshd, an image upload.
//!
//! With hybrid vsock a guest that dials host port P reaches `<vm vsock socket>_P`, a path in the
//! VM's own run directory: whoever connects there is that VM, so the socket's place is the peer
//! check. Ports are taken from [`ports::HOST_EPHEMERAL_FIRST`]..=[`ports::HOST_EPHEMERAL_LAST`],
//! skipping ones whose socket file exists (in use).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cros_messages::{CrosError, ports};
use tokio::net::{UnixListener, UnixStream};

use crate::bridge::vsock::listen_guest_port;

/// Rotates through the range so a port just used is not handed out again at once.
static NEXT: AtomicU32 = AtomicU32::new(ports::HOST_EPHEMERAL_FIRST);

/// A listening host port of one VM; its socket file goes when it is dropped.
pub struct HostPort {
    pub port: u32,
    listener: UnixListener,
    path: PathBuf,
}

impl HostPort {
    /// Listens on a free host port of the VM whose hybrid vsock socket is `uds`.
    pub fn listen(uds: &Path) -> Result<Self, CrosError> {
        let span = ports::HOST_EPHEMERAL_LAST - ports::HOST_EPHEMERAL_FIRST + 1;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = ports::HOST_EPHEMERAL_FIRST + (n - ports::HOST_EPHEMERAL_FIRST) % span;
            let path = PathBuf::from(format!("{}_{port}", uds.display()));
            if path.exists() {
                continue;
            }
            let listener = listen_guest_port(uds, port)?;
            return Ok(Self {
                port,
                listener,
                path,
            });
        }
        Err(CrosError::unavailable(format!(
            "no free host port for {} in {}..={}",
            uds.display(),
            ports::HOST_EPHEMERAL_FIRST,
            ports::HOST_EPHEMERAL_LAST
        )))
    }

    /// The guest's one connection, within `timeout`; `what` names it in the error.
    pub async fn accept(&self, timeout: Duration, what: &str) -> Result<UnixStream, CrosError> {
        match tokio::time::timeout(timeout, self.listener.accept()).await {
            Ok(Ok((s, _))) => Ok(s),
            Ok(Err(e)) => Err(CrosError::internal(format!(
                "{what}: accept on host port {}: {e}",
                self.port
            ))),
            Err(_) => Err(CrosError::timeout(format!(
                "{what}: nothing dialed host port {} within {timeout:?}",
                self.port
            ))),
        }
    }
}

impl Drop for HostPort {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ports_are_distinct_accept_times_out_and_the_socket_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let a = HostPort::listen(&uds).unwrap();
        let b = HostPort::listen(&uds).unwrap();
        assert_ne!(a.port, b.port);
        let path = format!("{}_{}", uds.display(), a.port);
        let client = tokio::spawn({
            let path = path.clone();
            async move { UnixStream::connect(path).await.unwrap() }
        });
        a.accept(Duration::from_secs(5), "test").await.unwrap();
        client.await.unwrap();
        let err = b
            .accept(Duration::from_millis(50), "vshd")
            .await
            .unwrap_err();
        assert!(err.message.contains("vshd: nothing dialed"), "{err}");
        drop(a);
        assert!(!Path::new(&path).exists());
    }
}
