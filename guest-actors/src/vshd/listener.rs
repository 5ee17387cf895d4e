//! Where sessions come from: a vsock listener in the guest, a Unix listener in tests, or one
//! stream vshd dialled itself (the container case, where vshd connects back to the host).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

/// Any connected stream a session can run on.
pub trait SessionStream: Read + Write + AsFd + Send + 'static {}
impl<T: Read + Write + AsFd + Send + 'static> SessionStream for T {}

/// Accepts session streams.
pub trait Listener: Send {
    type Stream: SessionStream;
    /// The next connection and a description of its peer for log lines.
    fn accept_session(&self) -> io::Result<(Self::Stream, String)>;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn accept_session(&self) -> io::Result<(UnixStream, String)> {
        let (stream, _) = self.accept()?;
        let peer =
            match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            {
                Ok(cred) => format!("unix pid {} uid {}", cred.pid(), cred.uid()),
                Err(_) => "unix peer".to_string(),
            };
        Ok((stream, peer))
    }
}

impl Listener for vsock::VsockListener {
    type Stream = vsock::VsockStream;
    fn accept_session(&self) -> io::Result<(vsock::VsockStream, String)> {
        let (stream, addr) = self.accept()?;
        Ok((
            stream,
            format!("vsock cid {} port {}", addr.cid(), addr.port()),
        ))
    }
}

/// `vsock:PORT` or `unix:PATH`, as given to `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Vsock { port: u32 },
    Unix(PathBuf),
}

/// `vsock:CID:PORT` or `unix:PATH`, as given to `--connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAddr {
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid address '{addr}': {why} (expected {expected})")]
pub struct AddrError {
    addr: String,
    why: String,
    expected: &'static str,
}

fn parse_u32(s: &str, what: &str, addr: &str, expected: &'static str) -> Result<u32, AddrError> {
    s.parse().map_err(|_| AddrError {
        addr: addr.to_string(),
        why: format!("{what} '{s}' is not a number"),
        expected,
    })
}

impl FromStr for ListenAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        const EXPECTED: &str = "vsock:PORT or unix:PATH";
        match s.split_once(':') {
            Some(("vsock", port)) => Ok(Self::Vsock {
                port: parse_u32(port, "port", s, EXPECTED)?,
            }),
            Some(("unix", path)) if !path.is_empty() => Ok(Self::Unix(PathBuf::from(path))),
            _ => Err(AddrError {
                addr: s.to_string(),
                why: "unknown form".to_string(),
                expected: EXPECTED,
            }),
        }
    }
}

impl FromStr for ConnectAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        const EXPECTED: &str = "vsock:CID:PORT or unix:PATH";
        match s.split_once(':') {
            Some(("vsock", rest)) => {
                let Some((cid, port)) = rest.split_once(':') else {
                    return Err(AddrError {
                        addr: s.to_string(),
                        why: "missing port".to_string(),
                        expected: EXPECTED,
                    });
                };
                Ok(Self::Vsock {
                    cid: parse_u32(cid, "cid", s, EXPECTED)?,
                    port: parse_u32(port, "port", s, EXPECTED)?,
                })
            }
            Some(("unix", path)) if !path.is_empty() => Ok(Self::Unix(PathBuf::from(path))),
            _ => Err(AddrError {
                addr: s.to_string(),
                why: "unknown form".to_string(),
                expected: EXPECTED,
            }),
        }
    }
}

/// Binds a Unix listener, replacing a stale socket file left by an earlier vshd (but never
/// anything that is not a socket).
pub fn bind_unix(path: &std::path::Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "vsock:9001".parse::<ListenAddr>().unwrap(),
            ListenAddr::Vsock { port: 9001 }
        );
        assert_eq!(
            "unix:/tmp/x".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x".into())
        );
        assert_eq!(
            "vsock:2:5000".parse::<ConnectAddr>().unwrap(),
            ConnectAddr::Vsock { cid: 2, port: 5000 }
        );
        let e = "vsock:abc".parse::<ListenAddr>().unwrap_err().to_string();
        assert!(e.contains("vsock:abc") && e.contains("abc"), "{e}");
        assert!("tcp:1".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("vsock:2".parse::<ConnectAddr>().is_err());
    }
}
