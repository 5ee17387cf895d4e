//! How LXD in the guest reaches image servers with no guest network device: through crosd's
//! HTTP proxy on host vsock port 3128.
//!
//! * The forwarder: LXD's `core.proxy_http(s)` is `http://127.0.0.1:3128`; every connection to
//!   that guest listener is copied byte for byte to a new vsock stream to the host's port 3128.
//! * Loopback tunnels: Go (so LXD) never sends loopback hosts to a proxy, so for an image server
//!   at `127.0.0.1:P` / `localhost:P` / `[::1]:P` (a server on the host's loopback) tremplin
//!   listens on that same address in the guest while a create needs it, and tunnels each
//!   connection with `CONNECT host:P` through the host proxy, which decides what may be reached.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::host::HostDialer;
use cros_messages::ports;

/// The forwarder's guest address.
pub const FORWARDER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3128);

/// Serves the forwarder on `listener` forever.
pub async fn run_forwarder(listener: TcpListener, dialer: HostDialer) {
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tremplin: proxy forwarder accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let dialer = dialer.clone();
        tokio::spawn(async move {
            match dialer.dial(ports::IMAGE_PROXY).await {
                Ok(mut host) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut host).await;
                }
                Err(e) => eprintln!(
                    "tremplin: cannot reach the host's image proxy (port {}): {e}",
                    ports::IMAGE_PROXY
                ),
            }
        });
    }
}

/// A loopback host named in an image server URL, if it is one: the guest addresses to listen
/// on for it.
pub fn loopback_addrs(host: &str) -> Option<Vec<IpAddr>> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return Some(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]);
    }
    match h.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Some(vec![ip]),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot listen on guest {addr} for the image server's loopback address: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("image server port {0} is the guest proxy forwarder's own port")]
    ForwarderPort(u16),
}

/// Why the host proxy last refused a tunnelled connection (LXD only sees a reset).
type LastError = Arc<Mutex<Option<String>>>;

struct Tunnel {
    users: usize,
    tasks: Vec<JoinHandle<()>>,
    last_error: LastError,
}

/// The loopback tunnels open now, shared by the creates that use the same server.
#[derive(Clone)]
pub struct LoopbackTunnels {
    dialer: HostDialer,
    open: Arc<Mutex<HashMap<(String, u16), Tunnel>>>,
}

/// Keeps a tunnel open; the last guard dropped closes it.
pub struct TunnelGuard {
    key: (String, u16),
    open: Arc<Mutex<HashMap<(String, u16), Tunnel>>>,
    last_error: LastError,
}

impl TunnelGuard {
    /// Why the host proxy refused a connection of this tunnel, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        if let Some(t) = open.get_mut(&self.key) {
            t.users -= 1;
            if t.users == 0
                && let Some(t) = open.remove(&self.key)
            {
                t.tasks.iter().for_each(JoinHandle::abort);
            }
        }
    }
}

impl LoopbackTunnels {
    pub fn new(dialer: HostDialer) -> Self {
        Self {
            dialer,
            open: Arc::default(),
        }
    }

    /// Opens (or shares) the tunnel for `host:port`. `host` as the URL has it.
    pub async fn acquire(
        &self,
        host: &str,
        port: u16,
        addrs: &[IpAddr],
    ) -> Result<TunnelGuard, TunnelError> {
        if port == FORWARDER_ADDR.port() {
            return Err(TunnelError::ForwarderPort(port));
        }
        let key = (host.to_ascii_lowercase(), port);
        if let Some(t) = self.open.lock().ok().as_mut().and_then(|o| o.get_mut(&key)) {
            t.users += 1;
            return Ok(TunnelGuard {
                key,
                open: self.open.clone(),
                last_error: t.last_error.clone(),
            });
        }
        let last_error = LastError::default();
        let mut tasks = Vec::new();
        let mut first_err = None;
        for ip in addrs {
            let addr = SocketAddr::new(*ip, port);
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    let authority = format!("{host}:{port}");
                    tasks.push(tokio::spawn(run_tunnel(
                        l,
                        self.dialer.clone(),
                        authority,
                        last_error.clone(),
                    )));
                }
                Err(source) => {
                    first_err.get_or_insert(TunnelError::Listen { addr, source });
                }
            }
        }
        // `localhost` also tries ::1, which a guest without IPv6 lacks: one address is enough.
        if tasks.is_empty() {
            return Err(first_err.unwrap_or(TunnelError::ForwarderPort(port)));
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let last_error = match open.get_mut(&key) {
            // Another create opened it meanwhile: use that one.
            Some(t) => {
                t.users += 1;
                tasks.iter().for_each(JoinHandle::abort);
                t.last_error.clone()
            }
            None => {
                open.insert(
                    key.clone(),
                    Tunnel {
                        users: 1,
                        tasks,
                        last_error: last_error.clone(),
                    },
                );
                last_error
            }
        };
        Ok(TunnelGuard {
            key,
            open: self.open.clone(),
            last_error,
        })
    }
}

async fn run_tunnel(
    listener: TcpListener,
    dialer: HostDialer,
    authority: String,
    last_error: LastError,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, most likely: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let dialer = dialer.clone();
        let authority = authority.clone();
        let last_error = last_error.clone();
        tokio::spawn(async move {
            if let Err(e) = tunnel_one(client, &dialer, &authority).await {
                eprintln!("tremplin: tunnel to {authority} through the host proxy: {e}");
                if let Ok(mut last) = last_error.lock() {
                    *last = Some(e);
                }
            }
        });
    }
}

/// `CONNECT authority` on a new stream to the host proxy, then the bytes both ways.
async fn tunnel_one(
    mut client: TcpStream,
    dialer: &HostDialer,
    authority: &str,
) -> Result<(), String> {
    let proxy = dialer
        .dial(ports::IMAGE_PROXY)
        .await
        .map_err(|e| format!("cannot reach the host proxy: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(proxy))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("the host proxy refused: {}", resp.status()));
    }
    let upgraded = hyper::upgrade::on(resp).await.map_err(|e| e.to_string())?;
    let mut upgraded = TokioIo::new(upgraded);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upgraded).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        assert_eq!(
            loopback_addrs("127.0.0.1"),
            Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
        );
        assert_eq!(
            loopback_addrs("[::1]"),
            Some(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
        );
        assert_eq!(loopback_addrs("LocalHost").map(|v| v.len()), Some(2));
        assert_eq!(loopback_addrs("127.0.0.2").map(|v| v.len()), Some(1));
        assert_eq!(loopback_addrs("images.lxd.canonical.com"), None);
        assert_eq!(loopback_addrs("10.0.0.1"), None);
    }

    #[tokio::test]
    async fn forwarder_copies_bytes_to_the_host_port() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let host = tokio::net::UnixListener::bind(
            dir.path()
                .join(format!("vsock.sock_{}", ports::IMAGE_PROXY)),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(run_forwarder(
            listener,
            HostDialer::Unix {
                dir: dir.path().to_path_buf(),
            },
        ));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET http://x/ HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (mut h, _) = host.accept().await.unwrap();
        let mut buf = [0u8; 26];
        h.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET http://x/ HTTP/1.1\r\n\r\n");
        h.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let mut back = [0u8; 17];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"HTTP/1.1 200 OK\r\n");
    }
}
