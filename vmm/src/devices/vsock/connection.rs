//! One vsock stream between a guest socket and a host Unix socket: its state machine
//! (virtio 1.2, 5.10.6.4-7) and credit-based flow control in both directions.
//!
//! Guest → host bytes are written straight from guest memory to the host socket; what the socket
//! does not take at once is kept in `tx_buf`, which the credit we advertise (`CONN_BUF_ALLOC`)
//! bounds: a guest that sends past that credit is reset, so one host peer that stops reading
//! costs at most `CONN_BUF_ALLOC` bytes and stalls only its own connection.
//! Host → guest bytes are read from the host socket straight into rx buffers, never more than
//! the guest advertised it can hold.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use cros_messages::hybrid_vsock::connect_reply;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::debug;
use vm_memory::GuestMemory;

use super::packet::{
    self, HOST_CID, PacketHeader, RxBuffer, SHUTDOWN_RCV, SHUTDOWN_SEND, StreamDirection::*,
    TYPE_STREAM, TxPacket, op,
};

/// Receive buffer we advertise per connection (`buf_alloc`): the most guest → host bytes we hold
/// for a host peer that is slow to read.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about freed space once this many bytes were forwarded since the last time it
/// heard our `fwd_cnt`, so a guest writer never waits on a stale view of our buffer.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// How long the guest has to answer our full SHUTDOWN with RST before we reset the connection
/// ourselves (Firecracker and Linux use a few seconds too).
pub const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Identifies a connection: the host-side port and the guest-side port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected through `CONNECT <port>`; our REQUEST awaits the guest's RESPONSE.
    LocalInit,
    /// The guest sent REQUEST and the host listener accepted; we owe the guest a RESPONSE.
    PeerInit,
    Established,
    /// Reset: an RST is owed to the guest (unless it sent one) and the connection is then removed.
    Killed,
}

/// What the muxer must do after the connection handled an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnAction {
    /// Nothing beyond what `has_pending_rx` says.
    None,
    /// Remove the connection now, sending nothing to the guest.
    Remove,
}

/// Control packets owed to the guest, in the order they are sent.
#[derive(Default, Debug)]
struct PendingControl {
    request: bool,
    response: bool,
    credit_update: bool,
    shutdown: u32,
    rst: bool,
}

pub struct Connection {
    pub key: ConnKey,
    guest_cid: u64,
    state: ConnState,
    stream: UnixStream,
    pending: PendingControl,

    /// Host → guest: the host socket may have bytes (set by EPOLLIN, cleared by a short read).
    host_readable: bool,
    /// The host socket reached end of stream (read returned 0).
    host_eof: bool,
    /// The host peer closed both directions (EPOLLHUP).
    host_hup: bool,
    /// The host peer will send no more (EPOLLRDHUP or EPOLLHUP).
    host_rdhup: bool,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,

    /// Guest → host bytes received but not yet taken by the host socket.
    tx_buf: VecDeque<u8>,
    /// Bytes to write to the host before any guest data (the `OK <port>\n` reply).
    host_preamble: Vec<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_to_peer: Wrapping<u32>,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    /// SHUTDOWN flags we sent the guest.
    local_shutdown_sent: u32,
    /// The connection is reset at this time: a host-initiated connect the guest never
    /// answered, or a full SHUTDOWN the guest never finished with RST.
    pub deadline: Option<Instant>,
}

impl Connection {
    /// A host-initiated connection (after a valid `CONNECT <port>` line): REQUEST to the guest.
    pub fn new_local(
        stream: UnixStream,
        key: ConnKey,
        guest_cid: u64,
        connect_deadline: Instant,
    ) -> Self {
        let mut c = Self::new(stream, key, guest_cid, ConnState::LocalInit);
        c.pending.request = true;
        c.deadline = Some(connect_deadline);
        c
    }

    /// A guest-initiated connection the host listener accepted: RESPONSE to the guest.
    pub fn new_peer(
        stream: UnixStream,
        key: ConnKey,
        guest_cid: u64,
        request: &PacketHeader,
    ) -> Self {
        let mut c = Self::new(stream, key, guest_cid, ConnState::PeerInit);
        c.update_peer_credit(request);
        c.pending.response = true;
        c
    }

    fn new(stream: UnixStream, key: ConnKey, guest_cid: u64, state: ConnState) -> Self {
        Connection {
            key,
            guest_cid,
            state,
            stream,
            pending: PendingControl::default(),
            host_readable: false,
            host_eof: false,
            host_hup: false,
            host_rdhup: false,
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_buf: VecDeque::new(),
            host_preamble: Vec::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_to_peer: Wrapping(0),
            peer_shutdown: 0,
            local_shutdown_sent: 0,
            deadline: None,
        }
    }

    pub fn state(&self) -> ConnState {
        self.state
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Bytes of guest data held for the host peer.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Bytes the guest can still take on this connection.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        // A guest that reports more forwarded than we sent gets no extra credit.
        self.peer_buf_alloc
            .saturating_sub(in_flight.min(self.peer_buf_alloc))
    }

    fn update_peer_credit(&mut self, h: &PacketHeader) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// Resets the connection: the host socket is shut at once, an RST is owed to the guest.
    pub fn kill(&mut self) {
        if self.state != ConnState::Killed {
            debug!(key = ?self.key, "resetting vsock connection");
        }
        self.state = ConnState::Killed;
        self.pending = PendingControl {
            rst: true,
            ..Default::default()
        };
        self.tx_buf.clear();
        self.deadline = None;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_guest_packet<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        pkt: &TxPacket,
    ) -> ConnAction {
        let h = &pkt.header;
        if h.op == op::RST {
            // The guest is done (or refused): close the host side and forget the connection.
            let _ = self.stream.shutdown(Shutdown::Both);
            return ConnAction::Remove;
        }
        if self.state == ConnState::Killed {
            return ConnAction::None;
        }
        self.update_peer_credit(h);
        match (h.op, self.state) {
            (op::RESPONSE, ConnState::LocalInit) => {
                self.state = ConnState::Established;
                self.deadline = None;
                self.host_preamble = connect_reply(self.key.local_port).into_bytes();
                // Whatever the host client wrote after its CONNECT line is waiting for us.
                self.host_readable = true;
                if let Err(e) = self.flush_to_host() {
                    debug!(key = ?self.key, "host write failed: {e}");
                    self.kill();
                }
            }
            (op::RW, ConnState::Established) => {
                if let Err(e) = self.forward_to_host(mem, pkt) {
                    debug!(key = ?self.key, "forwarding guest data failed: {e}");
                    self.kill();
                }
            }
            (op::CREDIT_UPDATE, ConnState::Established) => {}
            (op::CREDIT_REQUEST, ConnState::Established) => self.pending.credit_update = true,
            (op::SHUTDOWN, ConnState::Established) => {
                self.peer_shutdown |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.after_host_progress();
            }
            (op::RW | op::CREDIT_UPDATE | op::CREDIT_REQUEST | op::SHUTDOWN, _)
            | (op::RESPONSE, _)
            | (op::REQUEST, _) => {
                debug!(key = ?self.key, op = h.op, state = ?self.state, "unexpected vsock op");
                self.kill();
            }
            _ => {
                debug!(key = ?self.key, op = h.op, "unknown vsock op");
                self.kill();
            }
        }
        ConnAction::None
    }

    fn forward_to_host<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        pkt: &TxPacket,
    ) -> io::Result<()> {
        let len = pkt.header.len as usize;
        if len == 0 {
            return Ok(());
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "guest sent data after SHUTDOWN(SEND)",
            ));
        }
        let mut written = 0;
        if self.tx_buf.is_empty() && self.host_preamble.is_empty() {
            written =
                match packet::stream_io(mem, (&pkt.payload, 0, len), &self.stream, GuestToStream) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                };
            self.fwd_cnt += Wrapping(written as u32);
        }
        let rest = len - written;
        if rest > 0 {
            if self.tx_buf.len() + rest > CONN_BUF_ALLOC as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "guest overran its credit: {} bytes buffered + {rest} > {CONN_BUF_ALLOC}",
                        self.tx_buf.len()
                    ),
                ));
            }
            let mut bytes = Vec::with_capacity(rest);
            packet::copy_from_guest(mem, &pkt.payload, written, &mut bytes, rest)?;
            self.tx_buf.extend(bytes);
        }
        self.check_credit_update();
        Ok(())
    }

    fn check_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_to_peer).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Writes buffered bytes to the host socket until it would block.
    fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.host_preamble.is_empty() {
            match (&self.stream).write(&self.host_preamble) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.host_preamble.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match (&self.stream).write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.check_credit_update();
        if self.tx_buf.is_empty() && self.fwd_cnt != self.last_fwd_cnt_to_peer {
            // Everything was taken: make sure a writer blocked on credit hears about it.
            self.pending.credit_update = true;
        }
        self.after_host_progress();
        Ok(())
    }

    /// Carries out the guest's SHUTDOWN once its data reached the host.
    fn after_host_progress(&mut self) {
        if self.state != ConnState::Established || !self.tx_buf.is_empty() {
            return;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            // The guest closed its socket and waits for our RST to finish the close.
            self.kill();
        }
    }

    /// Handles readiness of the host socket.
    pub fn on_host_event(&mut self, readable: bool, writable: bool, rdhup: bool, hup: bool) {
        if self.state == ConnState::Killed {
            return;
        }
        self.host_rdhup |= rdhup || hup;
        if hup {
            self.host_hup = true;
            if self.host_eof {
                // We saw end of stream before learning the peer closed both ways: now tell the
                // guest it will not be read either.
                self.pending.shutdown |= (SHUTDOWN_SEND | SHUTDOWN_RCV) & !self.local_shutdown_sent;
            }
        }
        if readable || hup {
            self.host_readable = true;
        }
        if writable && let Err(e) = self.flush_to_host() {
            debug!(key = ?self.key, "host write failed: {e}");
            self.kill();
        }
        if self.state == ConnState::LocalInit && self.host_hup {
            // The host client gave up before the guest answered.
            self.kill();
        }
    }

    /// Whether this connection has a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        let p = &self.pending;
        p.rst || p.request || p.response || p.credit_update || p.shutdown != 0 || self.wants_data()
    }

    fn wants_data(&self) -> bool {
        self.state == ConnState::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    fn header(&self, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Takes the next control packet owed to the guest, if any.
    pub fn take_control(&mut self) -> Option<PacketHeader> {
        let h = if self.pending.rst {
            self.pending.rst = false;
            self.header(op::RST)
        } else if self.pending.request {
            self.pending.request = false;
            self.header(op::REQUEST)
        } else if self.pending.response {
            self.pending.response = false;
            self.state = ConnState::Established;
            self.header(op::RESPONSE)
        } else if self.pending.shutdown != 0 && !self.wants_data() {
            // Data read before end of stream goes first.
            let mut h = self.header(op::SHUTDOWN);
            h.flags = self.pending.shutdown;
            self.local_shutdown_sent |= self.pending.shutdown;
            self.pending.shutdown = 0;
            if self.local_shutdown_sent == SHUTDOWN_RCV | SHUTDOWN_SEND {
                // The guest owes us an RST now; one that never comes must not hold the slot.
                self.deadline = Some(Instant::now() + SHUTDOWN_TIMEOUT);
            }
            h
        } else if self.pending.credit_update {
            self.pending.credit_update = false;
            self.header(op::CREDIT_UPDATE)
        } else {
            return None;
        };
        self.last_fwd_cnt_to_peer = self.fwd_cnt;
        Some(h)
    }

    /// Whether the connection is finished: killed and its RST sent.
    pub fn is_finished(&self) -> bool {
        self.state == ConnState::Killed && !self.pending.rst
    }

    /// Reads host bytes into an rx buffer (after its header space) and returns the RW header to
    /// write in front of them. `None` when the host had nothing (the buffer stays unused).
    pub fn read_data<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        buf: &RxBuffer,
    ) -> Option<PacketHeader> {
        if !self.wants_data() {
            return None;
        }
        let max = buf.payload_capacity().min(self.peer_credit() as usize);
        match packet::stream_io(
            mem,
            (&buf.ranges, packet::HEADER_SIZE, max),
            &self.stream,
            StreamToGuest,
        ) {
            Ok(0) => {
                self.host_eof = true;
                // The hang-up event may still be queued behind this read: ask the socket.
                self.host_hup |= peer_closed(&self.stream);
                let flags = if self.host_hup {
                    SHUTDOWN_SEND | SHUTDOWN_RCV
                } else {
                    SHUTDOWN_SEND
                };
                self.pending.shutdown |= flags & !self.local_shutdown_sent;
                None
            }
            Ok(n) => {
                if n < max && !self.host_rdhup {
                    // The socket is empty for now. Data arriving later raises a new EPOLLIN
                    // (epoll reports every wakeup, edge-triggered or not), so skip the read that
                    // would only return EAGAIN. Not after a read hang-up: its end of stream is
                    // already pending and no new event will announce it.
                    self.host_readable = false;
                }
                self.rx_cnt += Wrapping(n as u32);
                let mut h = self.header(op::RW);
                h.len = n as u32;
                self.last_fwd_cnt_to_peer = self.fwd_cnt;
                Some(h)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.host_readable = false;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => {
                debug!(key = ?self.key, "host read failed: {e}");
                self.kill();
                None
            }
        }
    }
}

/// Whether the peer of `stream` closed both directions (POLLHUP), without blocking.
fn peer_closed(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}
