//! Talking to a guest's actors through the VM's hybrid vsock socket: `CONNECT <port>\n`,
//! `OK <hostport>\n`, then framed envelopes after the Hello handshake.

use std::path::Path;
use std::time::Duration;

use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{handshake, read_message, write_message};
use cros_messages::hybrid_vsock::{MAX_REPLY_LINE, connect_request, parse_connect_reply};
use cros_messages::{Addr, Body, CrosError, Envelope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

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
            return Err(CrosError::unavailable(format!(
                "nothing listens on guest vsock port {port} (connection closed)"
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

/// A connection to one guest actor (maitred, tremplin) that sends requests one at a time.
pub struct GuestConnection {
    stream: UnixStream,
    me: Addr,
    peer: Addr,
    next_id: u64,
}

impl GuestConnection {
    /// Connects to `port` and handshakes; the peer's Hello must name `expected_actor` in `vm`.
    pub async fn open(
        uds: &Path,
        port: u32,
        me: Addr,
        expected_actor: &str,
        vm: &str,
    ) -> Result<Self, CrosError> {
        let mut stream = connect_guest_port(uds, port).await?;
        let hello = handshake(&mut stream, &me)
            .await
            .map_err(|e| e.to_cros_error())?;
        // The guest is untrusted: it may only speak for its own actor in its own VM.
        if hello.actor.actor != expected_actor || hello.actor.vm.as_deref() != Some(vm) {
            return Err(CrosError::new(
                cros_messages::ErrorKind::PermissionDenied,
                format!(
                    "guest port {port} of VM {vm} answered as {}, expected {expected_actor}@{vm}",
                    hello.actor
                ),
            ));
        }
        Ok(Self {
            stream,
            me,
            peer: hello.actor,
            next_id: 1,
        })
    }

    /// Sends `body` and waits at most `timeout` for the reply body (error replies are `Err`).
    pub async fn request(&mut self, body: Body, timeout: Duration) -> Result<Body, CrosError> {
        let id = self.next_id;
        self.next_id += 1;
        let what = body.type_name();
        let env = Envelope::new(id, id, self.me.clone(), self.peer.clone(), body);
        let exchange = async {
            write_message(&mut self.stream, &env, MAX_CONTROL_FRAME).await?;
            loop {
                let reply: Envelope = read_message(&mut self.stream, MAX_CONTROL_FRAME).await?;
                if reply.reply_to == Some(id) {
                    return Ok::<Body, cros_messages::FrameError>(reply.body);
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Body::Error(e))) => Err(e),
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => Err(CrosError::unavailable(format!(
                "{} ({what}): {}",
                self.peer,
                e.to_cros_error().message
            ))),
            Err(_) => Err(CrosError::timeout(format!(
                "{} did not answer {what} within {timeout:?}",
                self.peer
            ))),
        }
    }
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
