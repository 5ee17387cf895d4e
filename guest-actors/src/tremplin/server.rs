//! tremplin's request service: framed envelopes (cros_messages::framing) on guest vsock port
//! 8890, or a Unix socket in tests. One task per connection; its requests are answered in turn
//! (the host bridge opens a stream per concurrent request).

use std::path::Path;
use std::sync::Arc;

use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{handshake, read_message, write_message};
use cros_messages::{Addr, Body, FrameError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Tremplin;
use super::host::BoxStream;
use crate::envelopes::{Answering, Incoming, not_handled};

/// Where requests come in.
pub enum RequestListener {
    Vsock(tokio_vsock::VsockListener),
    Unix(tokio::net::UnixListener),
}

impl RequestListener {
    pub fn vsock(port: u32) -> std::io::Result<Self> {
        tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
            tokio_vsock::VMADDR_CID_ANY,
            port,
        ))
        .map(RequestListener::Vsock)
    }

    pub fn unix(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        tokio::net::UnixListener::bind(path).map(RequestListener::Unix)
    }
}

/// Serves one connection until it closes.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    me: &Addr,
    tremplin: &Arc<Tremplin>,
) -> Result<(), FrameError> {
    handshake(&mut stream, me).await?;
    let mut answering = Answering::new(me.clone());
    loop {
        let read = read_message(&mut stream, MAX_CONTROL_FRAME).await;
        let env = match answering.incoming(read)? {
            None => return Ok(()),
            Some(Incoming::Malformed(err)) => {
                write_message(&mut stream, &err, MAX_CONTROL_FRAME).await?;
                continue;
            }
            Some(Incoming::Request(env)) => env,
        };
        let body = match env.body.clone() {
            Body::Tremplin(req) => match tremplin.handle(req).await {
                Ok(reply) => Body::TremplinReply(reply),
                Err(e) => Body::Error(e),
            },
            other => not_handled("tremplin", &other),
        };
        let reply = answering.reply(&env, body);
        write_message(&mut stream, &reply, MAX_CONTROL_FRAME).await?;
        stream.flush().await?;
    }
}

/// Accepts connections forever.
pub async fn serve(listener: RequestListener, me: Addr, tremplin: Arc<Tremplin>) -> std::io::Error {
    loop {
        let accepted: std::io::Result<(BoxStream, String)> = match &listener {
            RequestListener::Vsock(l) => l.accept().await.map(|(s, a)| {
                (
                    Box::pin(s) as BoxStream,
                    format!("vsock cid {} port {}", a.cid(), a.port()),
                )
            }),
            RequestListener::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| (Box::pin(s) as BoxStream, "unix peer".to_string())),
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return e,
        };
        let me = me.clone();
        let tremplin = tremplin.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, &me, &tremplin).await {
                eprintln!("tremplin: connection from {peer}: {e}");
            }
        });
    }
}
