//! A relay between QEMU and the vhost-user daemon that holds back what QEMU 7.2's
//! virtio-net sends too early: SET_VRING_ENABLE before SET_FEATURES.
//!
//! QEMU's virtio-net enables its vhost-user peer's rings (`peer_attach`) when the guest
//! writes its features, before QEMU has sent the backend any SET_FEATURES; and when the
//! backend does not offer VHOST_USER_F_PROTOCOL_FEATURES, QEMU refuses to start vhost-user-net
//! at all (its `vhost_user_set_vring_enable` fails with EINVAL). vhost-user-backend (and the
//! vhost crate under it) treat SET_VRING_ENABLE before the protocol-features bit was acked as
//! a protocol error and drop the connection. So the relay forwards every message as it is,
//! descriptors included, except SET_VRING_ENABLEs that arrive before the first SET_FEATURES:
//! those are answered here (if QEMU asked for a reply) and held, then forwarded, in order,
//! right after SET_FEATURES (QEMU 7.2 does not send them again when it starts the device, and
//! with the protocol-features bit the rings stay disabled until enabled).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// vhost-user message header: request, flags, payload size (all u32, little endian).
const HEADER_SIZE: usize = 12;
const REQ_SET_FEATURES: u32 = 2;
const REQ_SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload a frontend message carries (SET_MEM_TABLE with 8 regions is 328 bytes;
/// SET_CONFIG up to 256 + 12): anything larger is not a vhost-user message.
const MAX_PAYLOAD: usize = 4096;
/// Most descriptors one message carries (SET_MEM_TABLE: one per region, at most 8).
const MAX_FDS: usize = 32;

/// Relays between `frontend` (QEMU) and `backend` (the daemon's end) until either side
/// closes. Runs on the calling thread and `replies`, a thread already started (a backend's
/// process filter allows no new threads once it serves) that waits for its streams.
pub fn relay(frontend: UnixStream, backend: UnixStream, replies: ReplySide) -> io::Result<()> {
    let to_frontend = Arc::new(Mutex::new(frontend.try_clone()?));
    let _ = replies.send((
        backend.try_clone()?,
        to_frontend.clone(),
        frontend.try_clone()?,
    ));
    let result = forward_requests(&frontend, &backend, &to_frontend);
    let _ = backend.shutdown(std::net::Shutdown::Both);
    result
}

/// What the reply thread needs: the daemon's end to read, the frontend to write (shared with
/// the request side's own replies), and the frontend to shut down when the daemon closes.
type ReplyStreams = (UnixStream, Arc<Mutex<UnixStream>>, UnixStream);

/// Where [`relay`] hands the reply thread its streams.
pub type ReplySide = std::sync::mpsc::Sender<ReplyStreams>;

/// Starts the reply thread (before the process filter goes on); returns where to hand it its
/// streams.
pub fn start_reply_thread() -> io::Result<(ReplySide, std::thread::JoinHandle<io::Result<()>>)> {
    let (tx, rx) = std::sync::mpsc::channel::<ReplyStreams>();
    let thread = std::thread::Builder::new()
        .name("vhost-user-reply".into())
        .spawn(move || {
            let Ok((backend, frontend, frontend_end)) = rx.recv() else {
                return Ok(());
            };
            let result = copy_replies(backend, &frontend);
            let _ = frontend_end.shutdown(std::net::Shutdown::Both);
            result
        })?;
    Ok((tx, thread))
}

/// Backend → frontend: replies (no descriptors in what our backends send), byte for byte.
fn copy_replies(mut backend: UnixStream, frontend: &Mutex<UnixStream>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = match backend.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        frontend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&buf[..n])?;
    }
}

/// One frontend message: its header fields, payload and descriptors.
struct Message {
    header: [u8; HEADER_SIZE],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn field(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.header[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]))
    }
}

/// Reads one message; `None` at a clean end of stream.
fn read_message(frontend: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_SIZE];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEADER_SIZE {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut header[got..])];
        let msg = recvmsg::<()>(
            frontend.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let n = msg.bytes;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: SCM_RIGHTS descriptors are new ones this process now owns.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let mut m = Message {
        header,
        payload: Vec::new(),
        fds,
    };
    let size = m.field(2) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} payload bytes"),
        ));
    }
    m.payload.resize(size, 0);
    let mut reader = frontend;
    reader.read_exact(&mut m.payload)?;
    Ok(Some(m))
}

/// Frontend → backend, holding back the early SET_VRING_ENABLEs until SET_FEATURES has gone.
fn forward_requests(
    frontend: &UnixStream,
    backend: &UnixStream,
    to_frontend: &Mutex<UnixStream>,
) -> io::Result<()> {
    let mut features_sent = false;
    let mut held: Vec<Message> = Vec::new();
    while let Some(m) = read_message(frontend)? {
        let (request, flags) = (m.field(0), m.field(1));
        tracing::trace!(request, flags, size = m.payload.len(), "vhost-user request");
        if request == REQ_SET_VRING_ENABLE && !features_sent {
            tracing::debug!("vhost-user: SET_VRING_ENABLE before SET_FEATURES held back");
            if flags & FLAG_NEED_REPLY != 0 {
                let mut reply = Vec::with_capacity(HEADER_SIZE + 8);
                reply.extend(REQ_SET_VRING_ENABLE.to_le_bytes());
                reply.extend((FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
                reply.extend(8u32.to_le_bytes());
                reply.extend(0u64.to_le_bytes());
                to_frontend
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write_all(&reply)?;
            }
            let mut m = m;
            // Answered here: the daemon must not answer it again.
            m.header[4..8].copy_from_slice(&(flags & !FLAG_NEED_REPLY).to_le_bytes());
            held.push(m);
            continue;
        }
        send_message(backend, &m)?;
        if request == REQ_SET_FEATURES && !features_sent {
            features_sent = true;
            // What QEMU asked for, in its order, now that the daemon can take it.
            for m in held.drain(..) {
                send_message(backend, &m)?;
            }
        }
        // Our copies of the descriptors close here; the daemon has its own.
    }
    Ok(())
}

/// Sends one message, descriptors with its first bytes.
fn send_message(backend: &UnixStream, m: &Message) -> io::Result<()> {
    let raw: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [IoSlice::new(&m.header), IoSlice::new(&m.payload)];
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    let total = HEADER_SIZE + m.payload.len();
    let sent = sendmsg::<()>(backend.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
        .map_err(io::Error::from)?;
    if sent < total {
        // The descriptors went with the first bytes; the rest goes as plain data.
        let rest = [m.header.as_slice(), m.payload.as_slice()].concat();
        let mut writer = backend;
        writer.write_all(&rest[sent..])?;
    }
    Ok(())
}
