//! Stream framing: a little-endian `u32` length, then that many postcard bytes.
//!
//! The length is checked against the caller's limit before anything is allocated, so a hostile
//! peer announcing a 4 GiB frame costs nothing. A clean end of stream between frames is
//! [`FrameError::Closed`]; an end inside a frame is [`FrameError::Truncated`].

use crate::{Addr, FrameError, Hello, PROTOCOL_VERSION};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{self, Read, Write};

/// Limit for control-plane envelopes (crosd socket, guest bridges).
pub const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Limit for bulk data streams.
pub const MAX_DATA_FRAME: usize = 64 << 10;

/// Encodes `msg` as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    let mut buf = postcard::to_extend(msg, std::mem::take(&mut buf))?;
    let len = u32::try_from(buf.len() - 4).map_err(|_| FrameError::TooLarge {
        len: buf.len() - 4,
        max: u32::MAX as usize,
    })?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    Ok(buf)
}

/// Decodes one message from a frame's payload (length prefix already stripped). Trailing bytes
/// are an error: a frame holds exactly one message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(postcard::Error::DeserializeBadEncoding));
    }
    Ok(msg)
}

fn check_len(len_bytes: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads until `buf` is full; returns how many bytes were read before EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame's payload, at most `max` bytes.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut len_bytes = [0u8; 4];
    match read_full(r, &mut len_bytes)? {
        0 => return Err(FrameError::Closed),
        4 => {}
        got => return Err(FrameError::Truncated { expected: 4, got }),
    }
    let len = check_len(len_bytes, max)?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got != len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(payload)
}

/// Reads and decodes one message.
pub fn read_message<T: DeserializeOwned>(r: &mut impl Read, max: usize) -> Result<T, FrameError> {
    decode(&read_frame(r, max)?)
}

/// Encodes and writes one message, refusing to send a frame the peer would refuse.
pub fn write_message<T: Serialize>(
    w: &mut impl Write,
    msg: &T,
    max: usize,
) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    if frame.len() - 4 > max {
        return Err(FrameError::TooLarge {
            len: frame.len() - 4,
            max,
        });
    }
    w.write_all(&frame)?;
    Ok(())
}

/// Checks a peer's Hello against our protocol version.
pub fn check_hello(peer: &Hello) -> Result<(), FrameError> {
    if peer.version != PROTOCOL_VERSION {
        return Err(FrameError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: peer.version,
            peer: peer.actor.to_string(),
        });
    }
    Ok(())
}

/// Both sides send Hello, then read and check the peer's. Returns the peer's Hello.
pub fn handshake<S: Read + Write>(stream: &mut S, me: &Addr) -> Result<Hello, FrameError> {
    write_message(stream, &Hello::new(me.clone()), MAX_CONTROL_FRAME)?;
    stream.flush()?;
    let peer: Hello = read_message(stream, MAX_CONTROL_FRAME)?;
    check_hello(&peer)?;
    Ok(peer)
}

/// The same framing over tokio streams.
#[cfg(feature = "tokio")]
pub mod tokio_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match r.read(&mut buf[got..]).await? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }

    pub async fn read_frame<R: AsyncRead + Unpin>(
        r: &mut R,
        max: usize,
    ) -> Result<Vec<u8>, FrameError> {
        let mut len_bytes = [0u8; 4];
        match read_full(r, &mut len_bytes).await? {
            0 => return Err(FrameError::Closed),
            4 => {}
            got => return Err(FrameError::Truncated { expected: 4, got }),
        }
        let len = check_len(len_bytes, max)?;
        let mut payload = vec![0u8; len];
        let got = read_full(r, &mut payload).await?;
        if got != len {
            return Err(FrameError::Truncated { expected: len, got });
        }
        Ok(payload)
    }

    pub async fn read_message<T: DeserializeOwned, R: AsyncRead + Unpin>(
        r: &mut R,
        max: usize,
    ) -> Result<T, FrameError> {
        decode(&read_frame(r, max).await?)
    }

    pub async fn write_message<T: Serialize, W: AsyncWrite + Unpin>(
        w: &mut W,
        msg: &T,
        max: usize,
    ) -> Result<(), FrameError> {
        let frame = encode_frame(msg)?;
        if frame.len() - 4 > max {
            return Err(FrameError::TooLarge {
                len: frame.len() - 4,
                max,
            });
        }
        w.write_all(&frame).await?;
        Ok(())
    }

    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut S,
        me: &Addr,
    ) -> Result<Hello, FrameError> {
        write_message(stream, &Hello::new(me.clone()), MAX_CONTROL_FRAME).await?;
        stream.flush().await?;
        let peer: Hello = read_message(stream, MAX_CONTROL_FRAME).await?;
        check_hello(&peer)?;
        Ok(peer)
    }
}
