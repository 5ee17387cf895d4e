//! Reading request frames together with the files a client passed with them (SCM_RIGHTS).
//!
//! A client that names files (an export target, an import stream, a digest, extra disks) opens
//! them itself and sends the descriptors with the request's frame in one `sendmsg` (see
//! [`crate::client::Client::request_with_files`]), so crosd only ever uses files that user
//! could open. The kernel attaches the descriptors to the first byte of that frame, and a
//! `recvmsg` never reads past a message that carries descriptors: the descriptors a `recvmsg`
//! brings belong to the frame holding the last byte it read. [`FrameReader`] tracks stream
//! offsets to pair them that way, and uses `recvmsg` for every read (a plain `read` would
//! close them unseen). Received descriptors are close-on-exec (crosd starts hypervisors).
//!
//! The connection puts a frame's files in the bus's
//! [`ClientTable`](cros_actors::bus::clients::ClientTable) under the request id before routing
//! it, and drops what the actor did not take once the reply is back. At most
//! [`MAX_FILES_PER_REQUEST`] per request and [`MAX_FILES_IN_FLIGHT`] per connection: a client
//! cannot make crosd hold descriptors without bound.

use cros_messages::FrameError;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::Interest;
use tokio::net::unix::OwnedReadHalf;

/// Most files one request may carry (StartVm's extra disks are the most any request takes).
pub const MAX_FILES_PER_REQUEST: usize = 16;
/// Most passed files one connection's requests may hold at once.
pub const MAX_FILES_IN_FLIGHT: usize = 64;
/// The kernel's limit on descriptors in one message (SCM_MAX_FD): with room for this many, a
/// `recvmsg` never truncates its control data, so no descriptor is installed unseen.
const SCM_MAX_FD: usize = 253;
const READ_CHUNK: usize = 64 << 10;

/// One frame's payload and the files that came with it, in the order they were sent.
pub struct Frame {
    pub payload: Vec<u8>,
    pub files: Vec<OwnedFd>,
}

/// Reads frames (little-endian u32 length, then the payload) with their passed files. Cancel
/// safe: a read interrupted by `select!` loses nothing, as all state lives in the reader.
pub struct FrameReader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    start: u64,
    /// Received files, each batch tagged with the stream offset of the last byte read with it.
    batches: VecDeque<(u64, Vec<OwnedFd>)>,
    chunk: Vec<u8>,
    cmsg: Vec<u8>,
    eof: bool,
}

impl FrameReader {
    pub fn new(half: OwnedReadHalf) -> Self {
        Self {
            half,
            buf: Vec::new(),
            start: 0,
            batches: VecDeque::new(),
            chunk: vec![0; READ_CHUNK],
            cmsg: nix::cmsg_space!([RawFd; SCM_MAX_FD]),
            eof: false,
        }
    }

    /// The next frame, at most `max` bytes of payload. [`FrameError::Closed`] at a clean end
    /// between frames.
    pub async fn read_frame(&mut self, max: usize) -> Result<Frame, FrameError> {
        loop {
            if let Some(frame) = self.take_frame(max)? {
                return Ok(frame);
            }
            if self.eof {
                return Err(match self.buf.len() {
                    0 => FrameError::Closed,
                    got if got < 4 => FrameError::Truncated { expected: 4, got },
                    got => FrameError::Truncated {
                        expected: self.announced() + 4,
                        got,
                    },
                });
            }
            self.recv().await?;
        }
    }

    fn announced(&self) -> usize {
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[..4]);
        u32::from_le_bytes(len) as usize
    }

    /// A whole frame from what was received, if there is one.
    fn take_frame(&mut self, max: usize) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = self.announced();
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let end = self.start + 4 + len as u64;
        let mut files = Vec::new();
        while self.batches.front().is_some_and(|(at, _)| *at < end) {
            if let Some((_, batch)) = self.batches.pop_front() {
                files.extend(batch);
            }
        }
        let payload = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        self.start = end;
        Ok(Some(Frame { payload, files }))
    }

    /// One `recvmsg`: appends its bytes, keeps its descriptors.
    async fn recv(&mut self) -> io::Result<()> {
        let Self {
            half, chunk, cmsg, ..
        } = self;
        let stream: &tokio::net::UnixStream = half.as_ref();
        let fd = stream.as_raw_fd();
        let (n, fds) = stream
            .async_io(Interest::READABLE, || recv_with_files(fd, chunk, cmsg))
            .await?;
        if n == 0 {
            // Descriptors never come without data on a stream socket; drop any anyway.
            self.eof = true;
            return Ok(());
        }
        self.buf.extend_from_slice(&self.chunk[..n]);
        if !fds.is_empty() {
            let last = self.start + self.buf.len() as u64 - 1;
            self.batches.push_back((last, fds));
        }
        Ok(())
    }
}

fn recv_with_files(
    fd: RawFd,
    chunk: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(chunk)];
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut files = Vec::new();
    match msg.cmsgs() {
        Ok(cmsgs) => {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: the kernel just installed these descriptors for us; nothing else
                    // owns them.
                    files.extend(fds.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
        }
        // Cannot happen with room for SCM_MAX_FD descriptors.
        Err(e) => tracing::error!(error = %e, "control data truncated; passed files lost"),
    }
    Ok((msg.bytes, files))
}

/// Counts the passed files a connection's requests hold, up to [`MAX_FILES_IN_FLIGHT`].
#[derive(Clone, Default)]
pub struct FilesInFlight(Arc<AtomicUsize>);

/// Files counted against a connection until dropped.
pub struct Reservation {
    count: Arc<AtomicUsize>,
    n: usize,
}

impl FilesInFlight {
    /// Puts the files that came with request `env` where its actor takes them (the bus's
    /// client table), counted against this connection until the reservation is dropped; no
    /// reservation for a request without files. Too many files: the error to answer with (the
    /// files are closed).
    pub fn attach(
        &self,
        bus: &cros_actors::BusHandle,
        env: &cros_messages::Envelope,
        files: Vec<OwnedFd>,
    ) -> Result<Option<Reservation>, cros_messages::CrosError> {
        if files.is_empty() {
            return Ok(None);
        }
        let reserved = (files.len() <= MAX_FILES_PER_REQUEST)
            .then(|| self.reserve(files.len()))
            .flatten();
        let Some(reserved) = reserved else {
            return Err(cros_messages::CrosError::invalid(format!(
                "{} files passed with {}: at most {MAX_FILES_PER_REQUEST} per request and \
                 {MAX_FILES_IN_FLIGHT} per connection at once",
                files.len(),
                env.body.type_name(),
            )));
        };
        bus.clients().put_files(env.from.clone(), env.id, files);
        Ok(Some(reserved))
    }

    /// Room for `n` more files, or `None` when that would pass the limit.
    pub fn reserve(&self, n: usize) -> Option<Reservation> {
        let reserved = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held + n <= MAX_FILES_IN_FLIGHT).then_some(held + n)
            });
        reserved.ok().map(|_| Reservation {
            count: self.0.clone(),
            n,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.count.fetch_sub(self.n, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::framing::encode_frame;
    use nix::sys::socket::{ControlMessage, sendmsg};
    use std::io::{IoSlice, Read, Seek, Write};
    use std::os::fd::AsFd;

    fn send(s: &std::os::unix::net::UnixStream, bytes: &[u8], files: &[&std::fs::File]) {
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_fd().as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        let n = sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert_eq!(n, bytes.len());
    }

    fn tmpfile(text: &str) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn read_back(fd: OwnedFd) -> String {
        let mut f = std::fs::File::from(fd);
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[tokio::test]
    async fn files_come_with_the_frame_they_were_sent_with() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let (rd, _wr) = tokio::net::UnixStream::from_std(b).unwrap().into_split();
        let mut reader = FrameReader::new(rd);
        let frames: Vec<Vec<u8>> = ["first", "second", "third", "fourth"]
            .iter()
            .map(|s| encode_frame(&s.to_string()).unwrap())
            .collect();
        // Sent before anything is read, so the reads may see them coalesced: a frame without
        // files, one with two, one without, one with one, and the last one split in two.
        send(&a, &frames[0], &[]);
        send(&a, &frames[1], &[&tmpfile("x"), &tmpfile("y")]);
        send(&a, &frames[2], &[]);
        let (head, tail) = frames[3].split_at(3);
        send(&a, head, &[&tmpfile("z")]);
        send(&a, tail, &[]);
        drop(a);
        let mut got = Vec::new();
        loop {
            match reader.read_frame(1 << 20).await {
                Ok(f) => {
                    let text: String = cros_messages::framing::decode(&f.payload).unwrap();
                    let files: Vec<String> = f.files.into_iter().map(read_back).collect();
                    got.push((text, files));
                }
                Err(FrameError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let want: Vec<(String, Vec<String>)> = vec![
            ("first".into(), vec![]),
            ("second".into(), vec!["x".into(), "y".into()]),
            ("third".into(), vec![]),
            ("fourth".into(), vec!["z".into()]),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_frame_cut_short_or_too_large_is_an_error() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let (rd, _wr) = tokio::net::UnixStream::from_std(b).unwrap().into_split();
        let mut reader = FrameReader::new(rd);
        let frame = encode_frame(&"a long enough message".to_string()).unwrap();
        send(&a, &frame, &[]);
        assert!(matches!(
            reader.read_frame(4).await,
            Err(FrameError::TooLarge { .. })
        ));
        let (c, d) = std::os::unix::net::UnixStream::pair().unwrap();
        d.set_nonblocking(true).unwrap();
        let (rd, _wr) = tokio::net::UnixStream::from_std(d).unwrap().into_split();
        let mut reader = FrameReader::new(rd);
        send(&c, &frame[..frame.len() - 1], &[]);
        drop(c);
        assert!(matches!(
            reader.read_frame(1 << 20).await,
            Err(FrameError::Truncated { .. })
        ));
    }

    /// A test actor (`taker`) that takes the files passed with its request and tells the test
    /// what they hold.
    struct Taker {
        bus: cros_actors::BusHandle,
        got: std::sync::mpsc::Sender<Vec<String>>,
    }

    impl actix::Actor for Taker {
        type Context = actix::Context<Self>;
    }

    impl actix::Handler<cros_actors::Deliver> for Taker {
        type Result = actix::ResponseFuture<cros_messages::Body>;

        fn handle(&mut self, msg: cros_actors::Deliver, _: &mut Self::Context) -> Self::Result {
            let files = self.bus.clients().take_files(&msg.env.from, msg.env.id);
            let _ = self.got.send(files.into_iter().map(read_back).collect());
            let pong = cros_messages::Body::BusReply(cros_messages::bus::BusReply::Pong { seq: 1 });
            Box::pin(std::future::ready(pong))
        }
    }

    /// Whether the write end of a pipe is closed everywhere (the read end sees EOF at once).
    fn closed_everywhere(read_end: &OwnedFd) -> bool {
        let mut buf = [0u8; 1];
        matches!(nix::unistd::read(read_end.as_raw_fd(), &mut buf), Ok(0))
    }

    /// The real daemon and client: files reach the actor with their request, and whatever no
    /// actor took is closed once the reply is back.
    #[test]
    fn the_daemon_hands_passed_files_to_the_request_and_closes_the_rest() {
        use crate::client::Client;
        use crate::daemon::{Daemon, DaemonConfig};
        use cros_messages::bus::BusRequest;
        use cros_messages::concierge::ConciergeRequest;
        use cros_messages::{Addr, Body};
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let config = DaemonConfig::new(dir.path().join("state"), dir.path().join("run"));
        let socket = config.socket.clone();
        let (got_tx, got_rx) = std::sync::mpsc::channel();
        let (bus_tx, bus_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let d = Daemon::start(&config).await.unwrap();
                let bus = d.bus().clone();
                let taker_bus = bus.clone();
                cros_actors::spawn_supervised(d.bus(), Addr::host("taker"), move || Taker {
                    bus: taker_bus.clone(),
                    got: got_tx.clone(),
                })
                .await
                .unwrap();
                bus_tx.send(bus).unwrap();
                d.run_until(async {
                    let _ = stop_rx.await;
                })
                .await;
            })
        });
        let bus = bus_rx.recv().unwrap();
        let timeout = Duration::from_secs(10);
        let mut client = Client::connect(&socket).unwrap();
        let ping = || Body::Bus(BusRequest::Ping { seq: 1 });

        let (a, b) = (tmpfile("alpha"), tmpfile("beta"));
        client
            .call_with_files(
                &Addr::host("taker"),
                ping(),
                &[a.as_fd(), b.as_fd()],
                timeout,
            )
            .unwrap();
        assert_eq!(got_rx.recv().unwrap(), ["alpha", "beta"]);

        // Files with requests that take none: one concierge answers, one the bus answers.
        let requests = [
            (
                Addr::host("concierge"),
                Body::Concierge(ConciergeRequest::ListVms {}),
            ),
            (Addr::host("bus"), ping()),
        ];
        for (to, body) in requests {
            let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
            client
                .call_with_files(&to, body, &[write_end.as_fd()], timeout)
                .unwrap();
            drop(write_end);
            assert!(
                closed_everywhere(&read_end),
                "crosd still holds the file sent to {to}"
            );
        }
        assert_eq!(bus.clients().pending_files(), 0);
        let me = bus
            .clients()
            .peer(&Addr::client(1))
            .expect("the peer is known");
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());

        // Too many at once: refused, and closed.
        let many: Vec<std::fs::File> = (0..=MAX_FILES_PER_REQUEST).map(|_| tmpfile("x")).collect();
        let fds: Vec<_> = many.iter().map(|f| f.as_fd()).collect();
        let err = client
            .call_with_files(&Addr::host("taker"), ping(), &fds, timeout)
            .unwrap_err();
        assert!(err.to_string().contains("at most 16"), "{err}");
        assert_eq!(bus.clients().pending_files(), 0);

        drop(client);
        stop_tx.send(()).unwrap();
        daemon.join().unwrap();
        assert!(
            bus.clients().peer(&Addr::client(1)).is_none(),
            "forgotten at close"
        );
    }

    #[test]
    fn a_connection_holds_a_bounded_number_of_files() {
        let budget = FilesInFlight::default();
        let first = budget.reserve(MAX_FILES_IN_FLIGHT - 1).unwrap();
        assert!(budget.reserve(2).is_none());
        let one = budget.reserve(1).unwrap();
        assert!(budget.reserve(1).is_none());
        drop(first);
        drop(one);
        assert!(budget.reserve(MAX_FILES_IN_FLIGHT).is_some());
    }
}
