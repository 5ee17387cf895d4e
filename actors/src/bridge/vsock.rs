//! The host ends of a VM's hybrid vsock (ARCHITECTURE.md, "The guest boundary"): connecting to
//! a guest port through the VM's socket (`CONNECT <port>\n`, `OK <hostport>\n`), and binding the
//! Unix socket a guest reaches when it dials host port P (`vsock.sock_P`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cros_messages::CrosError;
use cros_messages::hybrid_vsock::{MAX_REPLY_LINE, connect_request, parse_connect_reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Connects to guest vsock `port` through the VM's hybrid vsock socket `uds`.
pub async fn connect_guest_port(uds: &Path, port: u32) -> Result<UnixStream, CrosError> {
    let mut s = UnixStream::connect(uds).await.map_err(|e| {
        CrosError::unavailable(format!(
            "cannot connect to the VM's vsock socket {}: {e}",
            uds.display()
        ))
    })?;
    s.write_all(connect_request(port).as_bytes())
        .await
        .map_err(|e| CrosError::unavailable(format!("vsock CONNECT {port}: {e}")))?;
    // Read the reply byte by byte: anything after the newline belongs to the guest stream.
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        let n = s
            .read(&mut b)
            .await
            .map_err(|e| CrosError::unavailable(format!("vsock CONNECT {port}: {e}")))?;
        if n == 0 {
            // The VMM closes both when the guest refuses the port and when the guest does not
            // answer in time (a frozen or hung guest): the message must not blame only one.
            return Err(CrosError::unavailable(format!(
                "nothing listens on guest vsock port {port}, or the guest does not answer \
                 (connection closed before OK)"
            )));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_REPLY_LINE {
            return Err(CrosError::unavailable(format!(
                "vsock CONNECT {port}: reply line too long"
            )));
        }
    }
    let text = String::from_utf8_lossy(&line);
    match parse_connect_reply(&text) {
        Some(_) => Ok(s),
        None => Err(CrosError::unavailable(format!(
            "vsock CONNECT {port}: unexpected reply {text:?}"
        ))),
    }
}

/// Binds the host side of guest→host port `port`: `<uds>_<port>`, replacing a stale socket
/// file. The socket is 0600 whatever the umask: only crosd (and the VMM, as root) use it.
pub fn listen_guest_port(uds: &Path, port: u32) -> Result<UnixListener, CrosError> {
    let path = format!("{}_{port}", uds.display());
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| CrosError::internal(format!("cannot listen on {path}: {e}")))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| CrosError::internal(format!("chmod {path}: {e}")))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A stand-in for the VMM's hybrid vsock socket (no VM in a unit test): answers CONNECT
    /// lines for `port` with OK and echoes, closes for any other port.
    async fn fake_hybrid_socket(path: &Path, port: u32) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut s = tokio::io::BufReader::new(s);
                    let mut line = String::new();
                    s.read_line(&mut line).await.unwrap();
                    if line == format!("CONNECT {port}\n") {
                        s.get_mut().write_all(b"OK 1025\n").await.unwrap();
                        let mut buf = [0u8; 64];
                        let n = s.read(&mut buf).await.unwrap();
                        s.get_mut().write_all(&buf[..n]).await.unwrap();
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn connect_line_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        fake_hybrid_socket(&uds, 8888).await;
        let mut s = connect_guest_port(&uds, 8888).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let err = connect_guest_port(&uds, 9999).await.unwrap_err();
        assert!(
            err.message
                .contains("nothing listens on guest vsock port 9999"),
            "{err}"
        );
        let err = connect_guest_port(&dir.path().join("missing"), 1)
            .await
            .unwrap_err();
        assert!(err.message.contains("missing"), "{err}");
    }
}
