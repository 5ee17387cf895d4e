//! The real [`Dial`]: a fresh connection to the container's garcon through the VM's hybrid
//! vsock socket, `ForwardPort{port}`, garcon's Ack, and from then on the container port's raw
//! bytes on the same stream.

use super::forwarder::Dial;
use crate::bridge::vsock::connect_guest_port;
use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{handshake, read_message, write_message};
use cros_messages::garcon::{GarconReply, GarconRequest};
use cros_messages::{Addr, Body, Envelope};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Dials `garcon` (`garcon@VM/CONTAINER`) on guest vsock `garcon_port` through `uds` (the VM's
/// `vsock.sock`).
pub fn garcon_dial(uds: PathBuf, garcon_port: u32, garcon: Addr) -> Dial {
    Arc::new(move |port| {
        let (uds, garcon) = (uds.clone(), garcon.clone());
        Box::pin(async move { forward_port(&uds, garcon_port, &garcon, port).await })
    })
}

async fn forward_port(
    uds: &std::path::Path,
    garcon_port: u32,
    garcon: &Addr,
    port: u16,
) -> io::Result<UnixStream> {
    let me = Addr::host("chunneld");
    let other =
        |what: String| io::Error::other(format!("forwarding to {garcon} port {port}: {what}"));
    let mut s = connect_guest_port(uds, garcon_port)
        .await
        .map_err(|e| other(e.message))?;
    handshake(&mut s, &me)
        .await
        .map_err(|e| other(e.to_string()))?;
    let req = Envelope::new(
        1,
        0,
        me,
        garcon.clone(),
        Body::Garcon(GarconRequest::ForwardPort { port }),
    );
    write_message(&mut s, &req, MAX_CONTROL_FRAME)
        .await
        .map_err(|e| other(e.to_string()))?;
    s.flush().await?;
    // Exactly one frame: the bytes after it are the container's.
    let reply: Envelope = read_message(&mut s, MAX_CONTROL_FRAME)
        .await
        .map_err(|e| other(e.to_string()))?;
    match reply.body {
        Body::GarconReply(GarconReply::Ack {}) => Ok(s),
        Body::Error(e) => Err(other(e.message)),
        body => Err(other(format!("garcon answered {}", body.type_name()))),
    }
}

#[cfg(test)]
mod tests {
    //! The guest is a stand-in on a Unix socket (no VM here): it plays the VMM's hybrid vsock
    //! (`CONNECT P` / `OK P`) and garcon's envelope exchange, then echoes raw bytes, so the
    //! host's whole dial sequence runs for real.
    use super::*;
    use cros_messages::Hello;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::net::UnixListener;

    async fn stand_in(listener: UnixListener, refuse: bool) {
        let (s, _) = listener.accept().await.unwrap();
        let mut s = BufReader::new(s);
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        assert_eq!(line, "CONNECT 10000\n");
        s.get_mut().write_all(b"OK 10000\n").await.unwrap();
        let hello: Hello = read_message(&mut s, MAX_CONTROL_FRAME).await.unwrap();
        assert_eq!(hello.actor, Addr::host("chunneld"));
        let me = Hello::new(Addr::host("garcon"));
        write_message(s.get_mut(), &me, MAX_CONTROL_FRAME)
            .await
            .unwrap();
        let req: Envelope = read_message(&mut s, MAX_CONTROL_FRAME).await.unwrap();
        assert_eq!(
            req.body,
            Body::Garcon(GarconRequest::ForwardPort { port: 8000 })
        );
        let body = if refuse {
            Body::Error(cros_messages::CrosError::unavailable(
                "nothing accepts on 127.0.0.1:8000",
            ))
        } else {
            Body::GarconReply(GarconReply::Ack {})
        };
        write_message(s.get_mut(), &req.reply(2, body), MAX_CONTROL_FRAME)
            .await
            .unwrap();
        if refuse {
            return;
        }
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.get_mut().write_all(&buf).await.unwrap();
    }

    #[tokio::test]
    async fn the_dial_asks_garcon_and_then_carries_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let garcon = Addr::in_container("garcon", "termina", "penguin");
        for refuse in [false, true] {
            let listener = UnixListener::bind(&uds).unwrap();
            let guest = tokio::spawn(stand_in(listener, refuse));
            let dial = garcon_dial(uds.clone(), 10000, garcon.clone());
            match dial(8000).await {
                Ok(mut s) => {
                    assert!(!refuse);
                    s.write_all(b"hello").await.unwrap();
                    let mut back = [0u8; 5];
                    s.read_exact(&mut back).await.unwrap();
                    assert_eq!(&back, b"hello");
                }
                Err(e) => {
                    assert!(refuse, "{e}");
                    let text = e.to_string();
                    assert!(text.contains("garcon@termina/penguin port 8000"), "{text}");
                    assert!(text.contains("nothing accepts"), "{text}");
                }
            }
            guest.await.unwrap();
            std::fs::remove_file(&uds).unwrap();
        }
    }
}
