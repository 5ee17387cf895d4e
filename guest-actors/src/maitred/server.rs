//! maitred's control service: framed envelopes over vsock port 8888 (a Unix socket in tests),
//! and the VmReady announcement to the host's port 7777.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, write_message};
use cros_messages::maitred::{MaitredEvent, MaitredRequest};
use cros_messages::{Addr, Body, Envelope, FrameError};

use super::handlers::{Maitred, Outcome};
use crate::vshd::listener::Listener;

/// Serves one host connection until it closes. Returns true when the host asked for shutdown.
pub fn serve_connection<S: Read + Write>(
    stream: S,
    me: &Addr,
    maitred: &Maitred,
) -> Result<bool, FrameError> {
    serve_requests(
        stream,
        me,
        |req| maitred.handle(req),
        || maitred.shutdown_requested.load(Ordering::SeqCst),
    )
}

/// [`serve_connection`]'s protocol with `handle` answering each request; returns true once
/// `shutdown_requested` says so after a reply. The fuzzer drives it with a `handle` that runs
/// only the requests without side effects on the machine.
pub fn serve_requests<S: Read + Write>(
    stream: S,
    me: &Addr,
    mut handle: impl FnMut(MaitredRequest) -> Outcome,
    shutdown_requested: impl Fn() -> bool,
) -> Result<bool, FrameError> {
    crate::envelopes::serve(
        stream,
        me,
        |body| match body {
            Body::Maitred(req) => match handle(req) {
                Ok(reply) => Body::MaitredReply(reply),
                Err(e) => Body::Error(e),
            },
            other => crate::envelopes::not_handled("maitred", &other),
        },
        shutdown_requested,
    )
}

/// Accepts connections forever, one thread each. A Shutdown request powers the VM off once its
/// reply is written.
pub fn serve<L: Listener>(
    listener: L,
    me: Addr,
    maitred: Arc<Maitred>,
    on_shutdown: fn(&Maitred),
) -> std::io::Error {
    loop {
        let (stream, peer) = match listener.accept_session() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return e,
        };
        let me = me.clone();
        let maitred = maitred.clone();
        std::thread::spawn(move || match serve_connection(stream, &me, &maitred) {
            Ok(true) => on_shutdown(&maitred),
            Ok(false) => {}
            Err(e) => eprintln!("maitred: connection from {peer}: {e}"),
        });
    }
}

/// Tells the host the VM is up: connects to `connect`, handshakes, sends `VmReady`. Retries for
/// a while: the host listener may come up after the guest on a fast boot.
pub fn announce_ready<S: Read + Write>(
    mut connect: impl FnMut() -> std::io::Result<S>,
    me: &Addr,
    attempts: u32,
) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..attempts {
        match connect() {
            Ok(mut stream) => {
                let sent = handshake(&mut stream, me).and_then(|_| {
                    let env = Envelope::new(
                        1,
                        0,
                        me.clone(),
                        Addr::host("concierge"),
                        Body::MaitredEvent(MaitredEvent::VmReady {}),
                    );
                    write_message(&mut stream, &env, MAX_CONTROL_FRAME)
                });
                match sent {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "could not send VmReady to the host after {attempts} attempts: {last}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::framing::read_message;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn announce_ready_sends_vm_ready_after_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock_7777");
        // The host listener appears only after the guest started trying: announce_ready retries.
        let p = path.clone();
        let host = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let listener = UnixListener::bind(&p).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            let hello = handshake(&mut s, &Addr::host("concierge")).unwrap();
            let env: Envelope = read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
            (hello.actor, env.body)
        });
        let me = Addr::in_vm("maitred", "termina");
        announce_ready(|| UnixStream::connect(&path), &me, 50).unwrap();
        let (actor, body) = host.join().unwrap();
        assert_eq!(actor, me);
        assert_eq!(body, Body::MaitredEvent(MaitredEvent::VmReady {}));
    }

    #[test]
    fn announce_ready_gives_up_with_the_reason() {
        let err = announce_ready(
            || UnixStream::connect("/nonexistent/vsock.sock_7777"),
            &Addr::host("maitred"),
            2,
        )
        .unwrap_err();
        assert!(err.contains("after 2 attempts"), "{err}");
    }
}
