//! The answering side of a guest service's envelope protocol, shared by maitred (a thread per
//! connection) and tremplin (a task per connection): each frame read is a request to answer,
//! a malformed one is answered with an error (the frame was whole, so the stream is still in
//! step), and every answer carries the service's next id.

use cros_messages::{Addr, Body, CrosError, Envelope, FrameError};

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
