//! The guest side of the bus protocol every guest actor speaks with the host: a Hello each
//! way, then framed envelopes ([`cros_messages::framing`]). [`Answering`] is the answering side,
//! shared by maitred and garcon (a thread per connection, through [`serve`]) and tremplin (a
//! task per connection); [`HostLink`] is the asking side, a connection a guest actor opened to a
//! host port: each frame read is a request to answer, a malformed one is answered with an error
//! (the frame was whole, so the stream is still in step), and every answer carries the
//! service's next id.

use std::io::{Read, Write};

use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, read_message, write_message};
use cros_messages::{Addr, Body, BodyKind, CrosError, Envelope, FrameError};

/// Serves one host connection synchronously (a thread per connection): Hello as `me`, then each
/// request's body through `handle` and its answer back, until the host closes. Returns true
/// when `stop` says so after a reply.
pub fn serve<S: Read + Write>(
    mut stream: S,
    me: &Addr,
    mut handle: impl FnMut(Body) -> Body,
    stop: impl Fn() -> bool,
) -> Result<bool, FrameError> {
    handshake(&mut stream, me)?;
    let mut answering = Answering::new(me.clone());
    loop {
        let env = match answering.incoming(read_message(&mut stream, MAX_CONTROL_FRAME))? {
            None => return Ok(false),
            Some(Incoming::Malformed(err)) => {
                write_message(&mut stream, &err, MAX_CONTROL_FRAME)?;
                continue;
            }
            Some(Incoming::Request(env)) => env,
        };
        if env.body.kind() != BodyKind::Request {
            continue;
        }
        let body = handle(env.body.clone());
        let reply = answering.reply(&env, body);
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

pub struct Answering {
    me: Addr,
    next_id: u64,
}

/// What a frame read from the peer asks for.
pub enum Incoming {
    /// A request: answer it with [`Answering::reply`].
    Request(Envelope),
    /// A malformed envelope: send this error back and read on.
    Malformed(Envelope),
}

impl Answering {
    pub fn new(me: Addr) -> Self {
        Self { me, next_id: 1 }
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sorts a read result; `Ok(None)` is the peer's clean end of stream, `Err` a broken one.
    pub fn incoming(
        &mut self,
        read: Result<Envelope, FrameError>,
    ) -> Result<Option<Incoming>, FrameError> {
        match read {
            Ok(env) => Ok(Some(Incoming::Request(env))),
            Err(FrameError::Closed) => Ok(None),
            Err(FrameError::Decode(e)) => Ok(Some(Incoming::Malformed(Envelope::new(
                self.id(),
                0,
                self.me.clone(),
                Addr::host("unknown"),
                Body::Error(CrosError::invalid(format!("malformed envelope: {e}"))),
            )))),
            Err(e) => Err(e),
        }
    }

    /// The answer to `req`.
    pub fn reply(&mut self, req: &Envelope, body: Body) -> Envelope {
        let id = self.id();
        req.reply(id, body)
    }
}

/// The answer to a body a service does not take.
pub fn not_handled(service: &str, body: &Body) -> Body {
    Body::Error(CrosError::invalid(format!(
        "{service} does not handle {}",
        body.type_name()
    )))
}
