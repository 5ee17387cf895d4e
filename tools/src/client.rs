//! The blocking client of crosd's control socket, used by every CLI (crosmsg, vmc, vsh).
//!
//! A connection opens with the Hello handshake, then carries framed [`Envelope`]s: requests
//! out, replies and (after [`Client::subscribe`]) events in. Events that arrive while waiting
//! for a reply are queued for [`Client::next_event`].
//!
//! Files a request names are opened here, by the client, and passed with the request's frame
//! ([`Client::request_with_files`], SCM_RIGHTS): crosd uses them without ever opening a
//! client's path with its own privileges.

use cros_messages::bus::{ActorInfo, BusReply, BusRequest};
use cros_messages::framing::{self, MAX_CONTROL_FRAME};
use cros_messages::{Addr, Body, BodyKind, CrosError, Envelope, FrameError};
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where crosd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/crosd/crosd.sock";
/// Environment variable naming the socket when no `--socket` is given.
pub const SOCKET_ENV: &str = "CROSD_SOCKET";
/// How long connecting and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to a request's own timeout, so crosd's reply (a timeout error naming what did not
/// answer) arrives before the client gives up on it.
const REPLY_SLACK: Duration = Duration::from_secs(10);

/// How long to wait for the reply to `body`: its own timeout (StartVm's `timeout_secs`, …, see
/// [`Body::timeout`]) plus slack, else [`DEFAULT_TIMEOUT`].
pub fn request_timeout(body: &Body) -> Duration {
    body.timeout().map_or(DEFAULT_TIMEOUT, |t| t + REPLY_SLACK)
}

/// The socket to use: `flag` (`--socket`), else `$CROSD_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody accepts on it.
    #[error("crosd is not running (no socket at {})", .0.display())]
    NotRunning(PathBuf),
    #[error("cannot connect to crosd at {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    /// crosd refused the connection (peer credentials) or the whole connection failed.
    #[error("crosd refused the connection: {0}")]
    Refused(CrosError),
    #[error("no reply from {to} to {request} within {}s", timeout.as_secs_f64())]
    Timeout {
        to: Addr,
        request: String,
        timeout: Duration,
    },
    #[error("protocol error talking to crosd: {0}")]
    Protocol(#[from] FrameError),
    /// An earlier timeout left a reply half-read on the stream.
    #[error("connection unusable after an earlier timeout; reconnect")]
    Desynchronized,
    /// The request failed (error reply); from [`Client::call`].
    #[error("{0}")]
    Remote(CrosError),
    #[error("unexpected reply from {from}: {got}")]
    UnexpectedReply { from: Addr, got: String },
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    events: VecDeque<Envelope>,
    read_timeout: Option<Duration>,
    broken: bool,
    /// Our name in the Hello and in envelopes; crosd replaces `from` with the connection's address.
    me: Addr,
}

impl Client {
    /// Connects to the socket chosen by [`socket_path`].
    pub fn connect_default(flag: Option<&Path>) -> Result<Self, ClientError> {
        Self::connect(&socket_path(flag))
    }

    /// Connects to crosd at `path` and does the handshake.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_path_buf())
            }
            _ => ClientError::Connect {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let writer = stream.try_clone().map_err(|e| ClientError::Connect {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut client = Self {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            events: VecDeque::new(),
            read_timeout: None,
            broken: false,
            me: Addr::host(client_name()),
        };
        client.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let hello = cros_messages::Hello::new(client.me.clone());
        framing::write_message(&mut client.writer, &hello, MAX_CONTROL_FRAME)?;
        let peer: cros_messages::Hello =
            framing::read_message(&mut client.reader, MAX_CONTROL_FRAME).map_err(|e| match e {
                FrameError::Closed => ClientError::Refused(CrosError::new(
                    cros_messages::ErrorKind::PermissionDenied,
                    "crosd closed the connection during the handshake",
                )),
                other => ClientError::Protocol(other),
            })?;
        framing::check_hello(&peer)?;
        Ok(client)
    }

    /// Sends `body` to actor `to` and waits up to `timeout` for its reply. An error reply is
    /// `Ok(Body::Error(..))`; use [`Client::call`] to get it as an `Err`.
    pub fn request(
        &mut self,
        to: &Addr,
        body: Body,
        timeout: Duration,
    ) -> Result<Body, ClientError> {
        self.request_with_files(to, body, &[], timeout)
    }

    /// [`Client::request`], passing `files` with the request (in this order; which request
    /// takes which is in its message's docs).
    pub fn request_with_files(
        &mut self,
        to: &Addr,
        body: Body,
        files: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<Body, ClientError> {
        if self.broken {
            return Err(ClientError::Desynchronized);
        }
        let id = self.next_id;
        self.next_id += 1;
        let request = body.type_name();
        let env = Envelope::new(id, id, self.me.clone(), to.clone(), body);
        if let Err(e) = self.send(&env, files) {
            return Err(self.why_closed().unwrap_or(ClientError::Protocol(e)));
        }
        let deadline = Instant::now() + timeout;
        // The whole timeout for the first read: repeated requests with the same timeout then
        // need no setsockopt each.
        self.set_read_timeout(Some(timeout))?;
        loop {
            let env = self.read_until(deadline).map_err(|e| match e {
                ClientError::Timeout { .. } => ClientError::Timeout {
                    to: to.clone(),
                    request: request.clone(),
                    timeout,
                },
                other => other,
            })?;
            match env.reply_to {
                Some(r) if r == id => return Ok(env.body),
                // A late reply to a request we gave up on.
                Some(_) => continue,
                None => match env.body {
                    Body::Error(e) => return Err(ClientError::Refused(e)),
                    _ if env.body.kind() == BodyKind::Event => self.events.push_back(env),
                    _ => continue,
                },
            }
        }
    }

    /// Like [`Client::request`], with an error reply as `Err(ClientError::Remote)`.
    pub fn call(&mut self, to: &Addr, body: Body, timeout: Duration) -> Result<Body, ClientError> {
        self.call_with_files(to, body, &[], timeout)
    }

    /// Like [`Client::request_with_files`], with an error reply as `Err(ClientError::Remote)`.
    pub fn call_with_files(
        &mut self,
        to: &Addr,
        body: Body,
        files: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<Body, ClientError> {
        match self.request_with_files(to, body, files, timeout)? {
            Body::Error(e) => Err(ClientError::Remote(e)),
            other => Ok(other),
        }
    }

    /// Writes `env` as one frame; `files` go with its first byte, in one `sendmsg`, so crosd
    /// pairs them with this frame.
    fn send(&mut self, env: &Envelope, files: &[BorrowedFd<'_>]) -> Result<(), FrameError> {
        if files.is_empty() {
            return framing::write_message(&mut self.writer, env, MAX_CONTROL_FRAME);
        }
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let frame = framing::encode_frame(env)?;
        if frame.len() - 4 > MAX_CONTROL_FRAME {
            return Err(FrameError::TooLarge {
                len: frame.len() - 4,
                max: MAX_CONTROL_FRAME,
            });
        }
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let sent = loop {
            match sendmsg::<()>(
                self.writer.as_raw_fd(),
                &[IoSlice::new(&frame)],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(FrameError::Io(e.into())),
            }
        };
        // A short write sent the files with the part that went; the rest follows plainly.
        self.writer.write_all(&frame[sent..])?;
        Ok(())
    }

    /// The registered actors.
    pub fn list_actors(&mut self, timeout: Duration) -> Result<Vec<ActorInfo>, ClientError> {
        let bus = Addr::host("bus");
        match self.call(&bus, Body::Bus(BusRequest::ListActors {}), timeout)? {
            Body::BusReply(BusReply::Actors { actors }) => Ok(actors),
            other => Err(ClientError::UnexpectedReply {
                from: bus,
                got: other.type_name(),
            }),
        }
    }

    /// Asks crosd to forward events whose type name starts with one of `prefixes` (all when
    /// empty) to this connection; read them with [`Client::next_event`].
    pub fn subscribe(
        &mut self,
        prefixes: Vec<String>,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let bus = Addr::host("bus");
        match self.call(&bus, Body::Bus(BusRequest::Subscribe { prefixes }), timeout)? {
            Body::BusReply(BusReply::Subscribed {}) => Ok(()),
            other => Err(ClientError::UnexpectedReply {
                from: bus,
                got: other.type_name(),
            }),
        }
    }

    /// The next event, waiting up to `timeout` (`Ok(None)` when none came).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Envelope>, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        if self.broken {
            return Err(ClientError::Desynchronized);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_until(deadline) {
                Ok(env) if env.body.kind() == BodyKind::Event => return Ok(Some(env)),
                Ok(_) => continue,
                Err(ClientError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn read_until(&mut self, deadline: Instant) -> Result<Envelope, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        // A read may overshoot the deadline by the slack; that saves a setsockopt per request.
        let slack = left / 10 + Duration::from_millis(5);
        if self.read_timeout.is_none_or(|t| t > left + slack) {
            self.set_read_timeout(Some(left))?;
        }
        // Wait for the first byte without consuming anything: a timeout here leaves the stream
        // in step (no frame was started), so the connection stays usable.
        // A signal (vmc's Ctrl-C handler) interrupts the wait; that is no error: wait again, as
        // read_exact does for the rest of the frame. The caller sees the signal's flag itself.
        while self.reader.buffer().is_empty() {
            match self.reader.fill_buf() {
                Ok([]) => return Err(ClientError::Protocol(FrameError::Closed)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if Instant::now() >= deadline {
                        return Err(self.timed_out());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timed_out());
                }
                Err(e) => return Err(ClientError::Protocol(FrameError::Io(e))),
            }
        }
        match framing::read_message::<Envelope>(&mut self.reader, MAX_CONTROL_FRAME) {
            Ok(env) => Ok(env),
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Part of a frame may have been consumed: this stream can no longer be trusted.
                self.broken = true;
                Err(self.timed_out())
            }
            Err(e) => Err(ClientError::Protocol(e)),
        }
    }

    /// After a failed write: the connection-level error crosd sent before closing (a refusal),
    /// if one is waiting to be read.
    fn why_closed(&mut self) -> Option<ClientError> {
        self.set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        self.broken = true;
        match framing::read_message::<Envelope>(&mut self.reader, MAX_CONTROL_FRAME) {
            Ok(Envelope {
                reply_to: None,
                body: Body::Error(e),
                ..
            }) => Some(ClientError::Refused(e)),
            _ => None,
        }
    }

    fn timed_out(&self) -> ClientError {
        ClientError::Timeout {
            to: Addr::host("bus"),
            request: String::new(),
            timeout: Duration::ZERO,
        }
    }

    fn set_read_timeout(&mut self, t: Option<Duration>) -> Result<(), ClientError> {
        // Whole milliseconds, at least one (zero would mean "no timeout").
        let t = t.map(|d| Duration::from_millis(d.as_millis().max(1) as u64));
        if t != self.read_timeout {
            self.reader
                .get_ref()
                .set_read_timeout(t)
                .map_err(FrameError::Io)?;
            self.read_timeout = t;
        }
        Ok(())
    }
}

/// The program name, as the client's name in its Hello (`crosmsg`, `vmc`, …).
fn client_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
        })
        .filter(|n| cros_messages::addr::valid_name(n))
        .unwrap_or_else(|| "client".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::Hello;
    use cros_messages::bus::BusReply;
    use std::os::unix::net::UnixListener;

    extern "C" fn ignore(_: libc::c_int) {}

    /// A signal that lands while the client waits for a reply (vmc's Ctrl-C handler installs
    /// one without SA_RESTART) must not fail the request: the reply still comes.
    #[test]
    fn a_signal_while_waiting_for_the_reply_is_not_an_error() {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crosd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // A stand-in for crosd (its bus is tested elsewhere): handshake, then one slow reply.
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _: Hello = framing::read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
            framing::write_message(&mut s, &Hello::new(Addr::host("bus")), MAX_CONTROL_FRAME)
                .unwrap();
            let req: Envelope = framing::read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let reply = req.reply(1, Body::BusReply(BusReply::Subscribed {}));
            framing::write_message(&mut s, &reply, MAX_CONTROL_FRAME).unwrap();
        });
        let action = SigAction::new(
            SigHandler::Handler(ignore),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, which is async-signal-safe.
        unsafe { sigaction(Signal::SIGUSR1, &action) }.unwrap();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let signaller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: `me` is the test's thread, alive until it joins this one.
            assert_eq!(unsafe { libc::pthread_kill(me, libc::SIGUSR1) }, 0);
        });
        let mut client = Client::connect(&path).unwrap();
        let reply = client.subscribe(Vec::new(), Duration::from_secs(10));
        signaller.join().unwrap();
        server.join().unwrap();
        reply.unwrap();
    }
}
