//! tremplin's request service: the guest envelope protocol ([`crate::envelopes::serve`]) on
//! guest vsock port 8890, or a Unix socket in tests. A thread per connection answers its
//! requests in turn (the host bridge opens a stream per concurrent request), each on the tokio
//! runtime that does tremplin's work.

use std::sync::Arc;

use cros_messages::{Addr, Body, CrosError};

use super::Tremplin;
use crate::vshd::listener::Listener;

/// The answer to one request body.
pub fn answer(tremplin: &Arc<Tremplin>, rt: &tokio::runtime::Handle, body: Body) -> Body {
    match body {
        Body::Tremplin(req) => match rt.block_on(tremplin.handle(req)) {
            Ok(reply) => Body::TremplinReply(reply),
            Err(e) => Body::Error(e),
        },
        other => Body::Error(CrosError::invalid(format!(
            "tremplin does not handle {}",
            other.type_name()
        ))),
    }
}

/// Accepts connections forever, one thread each; returns the listener's error.
pub fn serve<L: Listener>(
    listener: L,
    me: Addr,
    tremplin: Arc<Tremplin>,
    rt: tokio::runtime::Handle,
) -> std::io::Error {
    loop {
        let (stream, peer) = match listener.accept_session() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return e,
        };
        let me = me.clone();
        let tremplin = tremplin.clone();
        let rt = rt.clone();
        std::thread::spawn(move || {
            let served =
                crate::envelopes::serve(stream, &me, |body| answer(&tremplin, &rt, body), || false);
            if let Err(e) = served {
                eprintln!("tremplin: connection from {peer}: {e}");
            }
        });
    }
}
