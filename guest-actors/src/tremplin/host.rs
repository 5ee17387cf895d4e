//! The host side as tremplin reaches it: vsock streams to host ports (cid 2), or, in tests,
//! the Unix sockets `<dir>/vsock.sock_<port>` that a hybrid vsock host listens on; and the
//! event connection to cicerone on host port 7778, redialled whenever it drops.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{handshake, write_message};
use cros_messages::tremplin::TremplinEvent;
use cros_messages::{Addr, Body, Envelope, ports};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;

/// Any stream to the host.
pub trait HostStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> HostStream for T {}
pub type BoxStream = Pin<Box<dyn HostStream>>;

/// Events kept while the host is unreachable; the oldest go first when more come.
const MAX_QUEUED_EVENTS: usize = 1024;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How tremplin dials a host port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDialer {
    /// vsock to cid 2 (the guest's normal case).
    Vsock { cid: u32 },
    /// `<dir>/vsock.sock_<port>`, as a hybrid vsock host lays its listeners out (tests).
    Unix { dir: PathBuf },
}

impl Default for HostDialer {
    fn default() -> Self {
        HostDialer::Vsock {
            cid: ports::HOST_CID,
        }
    }
}

impl HostDialer {
    pub async fn dial(&self, port: u32) -> std::io::Result<BoxStream> {
        match self {
            HostDialer::Vsock { cid } => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, port))
                    .await?;
                Ok(Box::pin(s))
            }
            HostDialer::Unix { dir } => {
                let s =
                    tokio::net::UnixStream::connect(dir.join(format!("vsock.sock_{port}"))).await?;
                Ok(Box::pin(s))
            }
        }
    }
}

/// Sends events to cicerone; cheap to clone.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::UnboundedSender<TremplinEvent>,
}

impl EventSender {
    pub fn send(&self, event: TremplinEvent) {
        // Only fails once the reporter has ended (the runtime is going down).
        let _ = self.tx.send(event);
    }

    /// A sender whose events land in the returned receiver (tests).
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<TremplinEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }
}

/// Starts the reporter: dials host port 7778, handshakes as `me`, says TremplinReady, then
/// writes each event. A dropped connection is redialled with backoff and TremplinReady said
/// again (the host may have restarted); events that could not be written are sent then.
pub fn start_reporter(dialer: HostDialer, me: Addr) -> EventSender {
    let (sender, rx) = EventSender::channel();
    tokio::spawn(report(dialer, me, rx));
    sender
}

async fn report(dialer: HostDialer, me: Addr, mut rx: mpsc::UnboundedReceiver<TremplinEvent>) {
    let mut queue: VecDeque<TremplinEvent> = VecDeque::new();
    let mut backoff = BACKOFF_START;
    let mut next_id = 1u64;
    let mut logged = false;
    loop {
        let mut stream = match connect(&dialer, &me).await {
            Ok(s) => {
                backoff = BACKOFF_START;
                logged = false;
                s
            }
            Err(e) => {
                if !logged {
                    eprintln!(
                        "tremplin: cannot reach cicerone on host port {}: {e}; retrying",
                        ports::CICERONE_TREMPLIN
                    );
                    logged = true;
                }
                // Keep taking events meanwhile, so the channel does not grow without bound.
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        ev = rx.recv() => match ev {
                            Some(ev) => enqueue(&mut queue, ev),
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        queue.push_front(TremplinEvent::TremplinReady {});
        let mut probe = [0u8; 64];
        'connected: loop {
            while let Some(ev) = queue.front() {
                let env = Envelope::new(
                    next_id,
                    0,
                    me.clone(),
                    Addr::host("cicerone"),
                    Body::TremplinEvent(ev.clone()),
                );
                next_id += 1;
                if let Err(e) = write_message(&mut stream, &env, MAX_CONTROL_FRAME).await {
                    eprintln!("tremplin: event connection to cicerone dropped: {e}");
                    break 'connected;
                }
                queue.pop_front();
            }
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => enqueue(&mut queue, ev),
                    None => return,
                },
                // The host sends nothing here; a read ending means the connection closed.
                n = stream.read(&mut probe) => {
                    if matches!(n, Ok(0) | Err(_)) {
                        eprintln!("tremplin: cicerone closed the event connection; redialling");
                        break 'connected;
                    }
                }
            }
        }
        // TremplinReady is said again on the next connection.
        queue.retain(|e| !matches!(e, TremplinEvent::TremplinReady {}));
        tokio::time::sleep(backoff).await;
    }
}

fn enqueue(queue: &mut VecDeque<TremplinEvent>, ev: TremplinEvent) {
    if queue.len() >= MAX_QUEUED_EVENTS {
        queue.pop_front();
    }
    queue.push_back(ev);
}

async fn connect(dialer: &HostDialer, me: &Addr) -> Result<BoxStream, String> {
    let mut stream = dialer
        .dial(ports::CICERONE_TREMPLIN)
        .await
        .map_err(|e| e.to_string())?;
    handshake(&mut stream, me)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::framing::tokio_io::read_message;

    #[tokio::test]
    async fn reporter_says_ready_and_says_it_again_after_a_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join(format!("vsock.sock_{}", ports::CICERONE_TREMPLIN));
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let me = Addr::in_vm("tremplin", "termina");
        let events = start_reporter(
            HostDialer::Unix {
                dir: dir.path().to_path_buf(),
            },
            me.clone(),
        );
        let host = Addr::host("cicerone");
        for round in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let hello = handshake(&mut s, &host).await.unwrap();
            assert_eq!(hello.actor, me);
            let env: Envelope = read_message(&mut s, MAX_CONTROL_FRAME).await.unwrap();
            assert_eq!(
                env.body,
                Body::TremplinEvent(TremplinEvent::TremplinReady {})
            );
            let name = format!("c{round}");
            events.send(TremplinEvent::ContainerShutdown { name: name.clone() });
            let env: Envelope = read_message(&mut s, MAX_CONTROL_FRAME).await.unwrap();
            assert_eq!(
                env.body,
                Body::TremplinEvent(TremplinEvent::ContainerShutdown { name })
            );
            drop(s);
        }
    }
}
