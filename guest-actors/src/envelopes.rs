//! The guest side of the bus protocol every guest actor speaks with the host: a Hello each
//! way, then framed envelopes ([`cros_messages::framing`]).

use std::io::{Read, Write};

use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, read_message, write_message};
use cros_messages::{Addr, Body, BodyKind, CrosError, Envelope, FrameError};

/// Serves one host connection: Hello as `me`, then each request's body through `handle` and
/// its answer back, until the host closes. Returns true when `stop` says so after a reply.
pub fn serve<S: Read + Write>(
    mut stream: S,
    me: &Addr,
    mut handle: impl FnMut(Body) -> Body,
    stop: impl Fn() -> bool,
) -> Result<bool, FrameError> {
    handshake(&mut stream, me)?;
    let mut next_id = 1u64;
    loop {
        let env: Envelope = match read_message(&mut stream, MAX_CONTROL_FRAME) {
            Ok(env) => env,
            Err(FrameError::Closed) => return Ok(false),
            Err(FrameError::Decode(e)) => {
                // The stream is still in sync (the frame was whole): answer and go on.
                let err = Envelope::new(
                    next_id,
                    0,
                    me.clone(),
                    Addr::host("unknown"),
                    Body::Error(CrosError::invalid(format!("malformed envelope: {e}"))),
                );
                next_id += 1;
                write_message(&mut stream, &err, MAX_CONTROL_FRAME)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if env.body.kind() != BodyKind::Request {
            continue;
        }
        let body = handle(env.body.clone());
        let reply = env.reply(next_id, body);
        next_id += 1;
        write_message(&mut stream, &reply, MAX_CONTROL_FRAME)?;
        stream.flush()?;
        if stop() {
            return Ok(true);
        }
    }
}

/// A connection a guest actor opened to a host port: Hello done, requests and events out.
pub struct HostLink<S> {
    stream: S,
    me: Addr,
    next_id: u64,
}

impl<S: Read + Write> HostLink<S> {
    /// Introduces itself as `me` on `stream` (the host answers with its own Hello).
    pub fn open(mut stream: S, me: Addr) -> Result<Self, FrameError> {
        handshake(&mut stream, &me)?;
        Ok(Self {
            stream,
            me,
            next_id: 1,
        })
    }

    fn send(&mut self, to: &Addr, body: Body) -> Result<u64, FrameError> {
        let id = self.next_id;
        self.next_id += 1;
        let env = Envelope::new(id, 0, self.me.clone(), to.clone(), body);
        write_message(&mut self.stream, &env, MAX_CONTROL_FRAME)?;
        self.stream.flush()?;
        Ok(id)
    }

    /// Publishes an event.
    pub fn event(&mut self, to: &Addr, body: Body) -> Result<(), FrameError> {
        self.send(to, body).map(|_| ())
    }

    /// Asks `to` and waits for the answer (an error answer is the `Ok(Body::Error)`).
    pub fn call(&mut self, to: &Addr, body: Body) -> Result<Body, FrameError> {
        let id = self.send(to, body)?;
        loop {
            let env: Envelope = read_message(&mut self.stream, MAX_CONTROL_FRAME)?;
            if env.reply_to == Some(id) {
                return Ok(env.body);
            }
        }
    }
}
