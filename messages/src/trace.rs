//! The actor-trace file: a header, then one framed [`TraceRecord`] per routed envelope.
//!
//! Layout: `CROSTRC\0`, format version (u16 LE), protocol version (u16 LE), then records, each a
//! standard frame (u32 LE length + postcard). A reader reports the byte offset of the first bad
//! record and everything before it stays readable.

use crate::framing::{MAX_CONTROL_FRAME, decode, encode_frame};
use crate::{Addr, Envelope, FrameError};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

pub const TRACE_MAGIC: [u8; 8] = *b"CROSTRC\0";
pub const TRACE_FORMAT_VERSION: u16 = 1;
const HEADER_LEN: u64 = 12;
/// A record holds one envelope (at most a control frame) plus its addresses and type name.
pub const MAX_TRACE_RECORD: usize = MAX_CONTROL_FRAME + 4096;

/// One routed envelope.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Monotonic nanoseconds since the recorder started (orders records, measures latency).
    pub mono_ns: u64,
    /// Wall clock, nanoseconds since the Unix epoch.
    pub wall_ns: u64,
    pub from: Addr,
    pub to: Addr,
    /// `Concierge::ListVms`, as [`crate::Body::type_name`].
    pub msg_type: String,
    /// The envelope's postcard bytes, exactly as routed.
    pub envelope: Vec<u8>,
}

impl TraceRecord {
    pub fn new(mono_ns: u64, wall_ns: u64, env: &Envelope) -> Result<Self, FrameError> {
        Ok(Self {
            mono_ns,
            wall_ns,
            from: env.from.clone(),
            to: env.to.clone(),
            msg_type: env.body.type_name(),
            envelope: postcard::to_stdvec(env)?,
        })
    }

    pub fn decode_envelope(&self) -> Result<Envelope, FrameError> {
        decode(&self.envelope)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("not a crosd trace file: {0}")]
    BadHeader(String),
    #[error("trace corrupt at byte offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
}

/// Appends records to a trace; writes the header when created.
pub struct TraceWriter<W: Write> {
    out: W,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(&TRACE_MAGIC);
        header.extend_from_slice(&TRACE_FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&crate::PROTOCOL_VERSION.to_le_bytes());
        out.write_all(&header)?;
        Ok(Self { out })
    }

    pub fn append(&mut self, rec: &TraceRecord) -> Result<(), FrameError> {
        self.out.write_all(&encode_frame(rec)?)?;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads records in order; yields `(offset, record)` and stops after the first error.
pub struct TraceReader<R: Read> {
    input: R,
    offset: u64,
    failed: bool,
    /// Protocol version the trace was recorded with.
    pub protocol_version: u16,
}

impl<R: Read> TraceReader<R> {
    pub fn new(mut input: R) -> Result<Self, TraceError> {
        let mut header = [0u8; HEADER_LEN as usize];
        let mut got = 0;
        while got < header.len() {
            match input.read(&mut header[got..])? {
                0 => {
                    return Err(TraceError::BadHeader(format!(
                        "file ends after {got} bytes, inside the 12-byte header"
                    )));
                }
                n => got += n,
            }
        }
        if header[..8] != TRACE_MAGIC {
            return Err(TraceError::BadHeader("missing CROSTRC magic".into()));
        }
        let format = u16::from_le_bytes([header[8], header[9]]);
        if format != TRACE_FORMAT_VERSION {
            return Err(TraceError::BadHeader(format!(
                "trace format v{format}, this build reads v{TRACE_FORMAT_VERSION}"
            )));
        }
        let protocol_version = u16::from_le_bytes([header[10], header[11]]);
        Ok(Self {
            input,
            offset: HEADER_LEN,
            failed: false,
            protocol_version,
        })
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Result<(u64, TraceRecord), TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let at = self.offset;
        let payload = match crate::framing::read_frame(&mut self.input, MAX_TRACE_RECORD) {
            Ok(p) => p,
            Err(FrameError::Closed) => return None,
            Err(e) => {
                self.failed = true;
                return Some(Err(TraceError::Corrupt {
                    offset: at,
                    reason: e.to_string(),
                }));
            }
        };
        self.offset += 4 + payload.len() as u64;
        match decode::<TraceRecord>(&payload) {
            Ok(rec) => Some(Ok((at, rec))),
            Err(e) => {
                self.failed = true;
                Some(Err(TraceError::Corrupt {
                    offset: at,
                    reason: e.to_string(),
                }))
            }
        }
    }
}
