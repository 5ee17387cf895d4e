//! garcon's half of port forwarding: a host connection that asked ForwardPort{port} becomes a
//! raw pipe to 127.0.0.1:port in the container (the host half is crosd's chunneld).

use crate::envelopes;
use cros_messages::garcon::{GarconReply, GarconRequest};
use cros_messages::{Addr, Body, CrosError};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};

/// Serves one host connection: requests answered by `handle`, until a ForwardPort turns the
/// connection into that port's pipe.
pub fn serve_host_connection<S: Duplex>(
    mut stream: S,
    me: &Addr,
    mut handle: impl FnMut(Body) -> Body,
) -> Result<(), String> {
    let forward = RefCell::new(None);
    let forwarding = envelopes::serve(
        &mut stream,
        me,
        |body| match body {
            Body::Garcon(GarconRequest::ForwardPort { port }) => match connect(port) {
                Ok(tcp) => {
                    *forward.borrow_mut() = Some(tcp);
                    Body::GarconReply(GarconReply::Ack {})
                }
                Err(e) => Body::Error(CrosError::unavailable(format!(
                    "nothing accepts on 127.0.0.1:{port} in the container: {e}"
                ))),
            },
            body => handle(body),
        },
        || forward.borrow().is_some(),
    )
    .map_err(|e| e.to_string())?;
    match forward.into_inner() {
        Some(tcp) if forwarding => pump(stream, tcp).map_err(|e| format!("forwarded port: {e}")),
        _ => Ok(()),
    }
}

/// Connects to the container's `port` (before the Ack, so a closed port is an error the host
/// sees, not a connection that just ends).
pub fn connect(port: u16) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A stream that can be split for the two directions and half-closed.
pub trait Duplex: Read + Write + Send + Sized + 'static {
    fn try_clone(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self);
}

impl Duplex for TcpStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Duplex for vsock::VsockStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        vsock::VsockStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        std::os::unix::net::UnixStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Bytes read at once on each direction. std's copy reads 8 KiB at a time; a syscall in a
/// guest under TCG is dear, and a bulk transfer makes 32 times fewer of them this way
/// (std::io::copy reads through a BufReader's own buffer). One write of this size becomes
/// several vsock packets (64 KiB at most) in a single syscall, within the device's credit.
const PUMP_BUF: usize = 256 * 1024;

/// Copies both ways until both directions ended, passing each EOF on as a half-close.
pub fn pump<A: Duplex, B: Duplex>(a: A, b: B) -> std::io::Result<()> {
    let (a_rd, b_rd) = (a.try_clone()?, b.try_clone()?);
    let mut a_rd = std::io::BufReader::with_capacity(PUMP_BUF, a_rd);
    let mut b_rd = std::io::BufReader::with_capacity(PUMP_BUF, b_rd);
    let (mut a_wr, mut b_wr) = (a, b);
    let up = std::thread::spawn(move || {
        let r = std::io::copy(&mut a_rd, &mut b_wr);
        b_wr.shutdown_write();
        r
    });
    let down = std::io::copy(&mut b_rd, &mut a_wr);
    a_wr.shutdown_write();
    let up = up
        .join()
        .map_err(|_| std::io::Error::other("forwarding thread panicked"))?;
    up.and(down).map(|_| ())
}

#[cfg(test)]
mod tests {
    //! A Unix socket pair stands in for the vsock connection (no vsock here without a VM); the
    //! container's server is a real TCP listener on 127.0.0.1.
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn bytes_go_both_ways_and_eof_is_passed_on() {
        let server = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = server.local_addr().unwrap().port();
        let srv = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(b"echo:").unwrap();
            s.write_all(&got).unwrap();
        });
        let (host, guest) = UnixStream::pair().unwrap();
        let tcp = connect(port).unwrap();
        let pumping = std::thread::spawn(move || pump(guest, tcp));
        let mut host = host;
        let payload = vec![7u8; 300_000];
        host.write_all(&payload).unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        host.read_to_end(&mut back).unwrap();
        assert_eq!(&back[..5], b"echo:");
        assert_eq!(&back[5..], &payload[..]);
        srv.join().unwrap();
        pumping.join().unwrap().unwrap();
    }

    #[test]
    fn a_closed_port_is_an_error() {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(connect(port).is_err());
    }
}
