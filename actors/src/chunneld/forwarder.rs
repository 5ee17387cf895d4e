//! Host listeners for forwarded ports, and the byte pump behind each accepted connection.
//!
//! A port is forwarded while it is in the container's list: [`Forwards::sync`] opens what is
//! new and closes (drops the listener of) what is gone. A host port someone else holds is
//! recorded as [`ForwardState::Taken`] with the bind error, and left alone: crosd never
//! fights another program for a port.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// Opens a stream to the container's `port`: in crosd, the VM's hybrid vsock socket and
/// garcon's forwarding request; in tests, a stand-in guest on a Unix socket. Hybrid vsock *is*
/// a Unix socket on the host, hence the stream type.
pub type Dial =
    Arc<dyn Fn(u16) -> Pin<Box<dyn Future<Output = io::Result<UnixStream>> + Send>> + Send + Sync>;

/// Which container a forward belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Container {
    pub vm: String,
    pub container: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardState {
    /// Listening on these host addresses.
    Listening(Vec<SocketAddr>),
    /// The host port is held by someone else (or cannot be bound): why.
    Taken(String),
}

/// One forwarded port, as `vmc port-forward list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardInfo {
    pub container: Container,
    pub container_port: u16,
    pub host_port: u16,
    pub state: ForwardState,
    /// Added by hand (`vmc port-forward add`): kept when the container's list changes.
    pub manual: bool,
}

struct Forward {
    info: ForwardInfo,
    /// The accept loops; aborting them drops the listeners.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Every forwarded port, by container and container port.
#[derive(Default)]
pub struct Forwards {
    by_port: BTreeMap<(Container, u16), Forward>,
}

impl Forwards {
    /// Forwards exactly `ports` of `container` (the ones garcon reported), each on the same
    /// host port; manual forwards stay. Must run inside a tokio runtime.
    pub fn sync(&mut self, container: &Container, ports: &[u16], dial: &Dial) {
        self.by_port
            .retain(|(c, port), f| c != container || f.info.manual || ports.contains(port));
        for &port in ports {
            self.by_port
                .entry((container.clone(), port))
                .or_insert_with(|| open(container.clone(), port, port, false, dial.clone()));
        }
    }

    /// A forward by hand: `container_port` on `host_port` (0: any free port, for tests).
    pub fn add(
        &mut self,
        container: &Container,
        container_port: u16,
        host_port: u16,
        dial: &Dial,
    ) -> ForwardInfo {
        // The forward it replaces lets go of its host port first, so the new one can have it.
        self.by_port.remove(&(container.clone(), container_port));
        let forward = open(
            container.clone(),
            container_port,
            host_port,
            true,
            dial.clone(),
        );
        let info = forward.info.clone();
        self.by_port
            .insert((container.clone(), container_port), forward);
        info
    }

    /// Stops forwarding `container_port`; what it was, or `None` when it was not forwarded.
    pub fn remove(&mut self, container: &Container, container_port: u16) -> Option<ForwardInfo> {
        self.by_port
            .remove(&(container.clone(), container_port))
            .map(|f| f.info.clone())
    }

    /// Every forward of a container that is gone (it stopped, or its garcon changed).
    pub fn forget(&mut self, container: &Container) {
        self.by_port.retain(|(c, _), _| c != container);
    }

    /// Every forward of every container of a VM that stopped.
    pub fn forget_vm(&mut self, vm: &str) {
        self.by_port.retain(|(c, _), _| c.vm != vm);
    }

    pub fn list(&self) -> Vec<ForwardInfo> {
        self.by_port.values().map(|f| f.info.clone()).collect()
    }
}

/// Binds `host_port` on both loopbacks (IPv6 only where the host has it) and starts accepting.
fn open(
    container: Container,
    container_port: u16,
    host_port: u16,
    manual: bool,
    dial: Dial,
) -> Forward {
    let mut info = ForwardInfo {
        container,
        container_port,
        host_port,
        state: ForwardState::Taken(String::new()),
        manual,
    };
    let v4 = match bind(SocketAddr::from((Ipv4Addr::LOCALHOST, host_port))) {
        Ok(l) => l,
        Err(e) => {
            let why = format!("127.0.0.1:{host_port}: {e}");
            tracing::warn!(
                vm = %info.container.vm,
                container = %info.container.container,
                container_port,
                "not forwarding: {why}"
            );
            info.state = ForwardState::Taken(why);
            return Forward {
                info,
                tasks: Vec::new(),
            };
        }
    };
    let mut addrs = Vec::new();
    let mut listeners = vec![v4];
    // The same port on [::1]; a host without IPv6 loopback forwards on 127.0.0.1 only.
    let port = listeners[0]
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(host_port);
    info.host_port = port;
    match bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
        Ok(l) => listeners.push(l),
        Err(e) => tracing::debug!("forwarding port {port} on 127.0.0.1 only: [::1]: {e}"),
    }
    let tasks = listeners
        .into_iter()
        .map(|l| {
            if let Ok(a) = l.local_addr() {
                addrs.push(a);
            }
            tokio::spawn(accept_loop(l, container_port, dial.clone()))
        })
        .collect();
    info.state = ForwardState::Listening(addrs);
    Forward { info, tasks }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

async fn accept_loop(listener: TcpListener, container_port: u16, dial: Dial) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends pass; a closed listener does not come back here.
                tracing::warn!(container_port, "accept on a forwarded port: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let dial = dial.clone();
        tokio::spawn(async move {
            if let Err(e) = pump(tcp, container_port, &dial).await {
                tracing::debug!(%peer, container_port, "forwarded connection ended: {e}");
            }
        });
    }
}

const PUMP_BUF: usize = 64 * 1024;

/// Copies both ways until both sides have closed; each side's EOF is passed on as a
/// half-close, so request/response protocols that shut down their writing side work.
async fn pump(mut tcp: TcpStream, container_port: u16, dial: &Dial) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut guest = dial(container_port).await?;
    // 64 KiB a read (tokio's default is 8 KiB), a vsock packet's most: the host's CPU is the
    // one the VM's emulation needs, so a bulk transfer should cost it few syscalls.
    tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut guest, PUMP_BUF, PUMP_BUF).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The guest end here is a stand-in: a Unix socket server playing garcon's side of the
    //! tunnel (it answers each connection as the container's server would), because the real
    //! one needs a booted VM. The host side — listeners, dial, the byte pump — is the real code.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A stand-in guest: each connection gets "port P: " and then its own bytes back.
    fn stand_in_guest(dir: &std::path::Path) -> Dial {
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut port = [0u8; 2];
                    s.read_exact(&mut port).await.unwrap();
                    let mut data = Vec::new();
                    s.read_to_end(&mut data).await.unwrap();
                    let reply = format!("port {}: ", u16::from_be_bytes(port));
                    s.write_all(reply.as_bytes()).await.unwrap();
                    s.write_all(&data).await.unwrap();
                });
            }
        });
        Arc::new(move |port: u16| {
            let path = path.clone();
            Box::pin(async move {
                let mut s = UnixStream::connect(&path).await?;
                s.write_all(&port.to_be_bytes()).await?;
                Ok(s)
            })
        })
    }

    fn penguin() -> Container {
        Container {
            vm: "termina".into(),
            container: "penguin".into(),
        }
    }

    async fn through(addr: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
        let mut c = TcpStream::connect(addr).await?;
        c.write_all(payload).await?;
        c.shutdown().await?;
        let mut out = Vec::new();
        c.read_to_end(&mut out).await?;
        Ok(out)
    }

    /// Whether `addr` refuses connections once the runtime has run the aborted accept loop's
    /// drop (a count of scheduler turns, not a time).
    async fn closed_soon(addr: SocketAddr) -> bool {
        for _ in 0..100 {
            tokio::task::yield_now().await;
            if TcpStream::connect(addr).await.is_err() {
                return true;
            }
        }
        false
    }

    fn listening(info: &ForwardInfo) -> Vec<SocketAddr> {
        match &info.state {
            ForwardState::Listening(a) => a.clone(),
            other => panic!("not listening: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_to_the_host_port_reaches_the_container_port() {
        let dir = tempfile::tempdir().unwrap();
        let dial = stand_in_guest(dir.path());
        let mut f = Forwards::default();
        let info = f.add(&penguin(), 8080, 0, &dial);
        let addrs = listening(&info);
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        for addr in &addrs {
            let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            let got = through(*addr, &payload).await.unwrap();
            assert_eq!(&got[..10], b"port 8080:");
            assert_eq!(&got[11..], &payload[..], "through {addr}");
        }
        assert_eq!(f.list(), [info]);
        // Removed: the listener is closed.
        assert!(f.remove(&penguin(), 8080).is_some());
        assert!(
            closed_soon(addrs[0]).await,
            "{addrs:?} still accepts after remove"
        );
    }

    #[tokio::test]
    async fn a_taken_host_port_is_reported_not_fought_over() {
        let dir = tempfile::tempdir().unwrap();
        let dial = stand_in_guest(dir.path());
        let holder = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = holder.local_addr().unwrap().port();
        let mut f = Forwards::default();
        f.sync(&penguin(), &[port], &dial);
        let list = f.list();
        assert_eq!(list.len(), 1);
        match &list[0].state {
            ForwardState::Taken(why) => {
                assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // The holder still has its port.
        assert_eq!(holder.local_addr().unwrap().port(), port);
    }

    #[tokio::test]
    async fn ports_that_close_in_the_container_close_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let dial = stand_in_guest(dir.path());
        // A free port to forward as itself: bind, note, release.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut f = Forwards::default();
        let manual = f.add(&penguin(), 9, 0, &dial);
        f.sync(&penguin(), &[port], &dial);
        assert_eq!(f.list().len(), 2);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert_eq!(
            &through(addr, b"x").await.unwrap()[..],
            format!("port {port}: x").as_bytes()
        );
        // garcon's next list no longer has it: gone from the host, the manual one stays.
        f.sync(&penguin(), &[], &dial);
        assert!(closed_soon(addr).await, "{addr} still accepts");
        assert_eq!(f.list(), [manual]);
        f.forget(&penguin());
        assert!(f.list().is_empty());
    }
}
