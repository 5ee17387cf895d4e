//! The muxer: maps guest vsock connections to host Unix sockets (Firecracker's hybrid vsock).
//!
//! * host → guest: a host client connects to `uds_path`, writes `CONNECT <port>\n`; we send the
//!   guest a REQUEST for `<port>`; on RESPONSE the client reads `OK <hostport>\n` and the stream
//!   is connected; on RST (no guest listener), a malformed line or no answer within
//!   `CONNECT_TIMEOUT`, the client's socket is closed.
//! * guest → host: a guest REQUEST to cid 2 port P connects to `<uds_path>_P`; nothing listening
//!   there gets the guest an RST.
//!
//! Every host socket is non-blocking and registered edge-triggered on one epoll fd that the
//! device's event loop watches (`epoll_fd`), so no single peer can block the device.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cros_messages::hybrid_vsock::{ConnectRequest, parse_connect_request};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use tracing::{debug, error, trace, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnAction, ConnKey, ConnState, Connection};
use super::error::VsockError;
use super::packet::{self, HEADER_SIZE, HOST_CID, PacketHeader, TYPE_STREAM, TxPacket, op};

/// Most connections (established, connecting, or host clients still sending their CONNECT line)
/// one device holds at once.
pub const MAX_CONNECTIONS: usize = 1023;
/// How long a host client may take to send its CONNECT line, and the guest to answer a REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// RSTs owed to the guest for packets that match no connection are queued up to this many;
/// a guest flooding bad packets cannot grow our memory.
const MAX_ORPHAN_RSTS: usize = 1024;
/// First host-side port handed to host-initiated connections (as Firecracker does, well above
/// the ports guests listen on).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_TIMER: u64 = u64::MAX - 1;

/// A host client that connected to `uds_path` and has not finished its CONNECT line.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    conns: HashMap<ConnKey, Connection>,
    /// Host socket fd → the connection it carries.
    by_fd: HashMap<RawFd, ConnKey>,
    pending_hosts: HashMap<RawFd, PendingHost>,
    /// Connections with something for the guest, served round-robin so one busy stream cannot
    /// starve the others of rx buffers.
    rx_ready: VecDeque<ConnKey>,
    rx_queued: HashSet<ConnKey>,
    orphan_rsts: VecDeque<PacketHeader>,
    local_ports: HashSet<u32>,
    next_local_port: u32,
}

impl Muxer {
    /// Listens on `uds_path` (replacing a stale socket file nobody listens on).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidGuestCid(guest_cid));
        }
        let bind_err = |reason| VsockError::BindUds {
            path: uds_path.to_path_buf(),
            reason,
        };
        remove_stale_socket(uds_path).map_err(bind_err)?;
        let listener = crate::control::bind_private(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let epoll = Epoll::new().map_err(VsockError::Epoll)?;
        let timer = TimerFd::new().map_err(|e| VsockError::Epoll(e.into()))?;
        for (fd, token) in [
            (listener.as_raw_fd(), TOKEN_LISTENER),
            (timer.as_raw_fd(), TOKEN_TIMER),
        ] {
            let event = EpollEvent::new(EventSet::IN, token);
            epoll
                .ctl(ControlOperation::Add, fd, event)
                .map_err(VsockError::Epoll)?;
        }
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            timer,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending_hosts: HashMap::new(),
            rx_ready: VecDeque::new(),
            rx_queued: HashSet::new(),
            orphan_rsts: VecDeque::new(),
            local_ports: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Readable when host sockets have events: watch it and call `process_host_events`.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Connections currently held, host clients still handshaking included.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending_hosts.len()
    }

    /// Forgets every connection (the driver reset the device): closing their host sockets
    /// is all it does, so it may run on a vCPU thread; the listener stays, so host clients
    /// can connect again at once.
    pub fn reset(&mut self) {
        self.conns.clear();
        self.by_fd.clear();
        self.pending_hosts.clear();
        self.rx_ready.clear();
        self.rx_queued.clear();
        self.orphan_rsts.clear();
        self.local_ports.clear();
    }

    pub fn has_pending_rx(&self) -> bool {
        !self.orphan_rsts.is_empty() || !self.rx_ready.is_empty()
    }

    /// Pops every tx chain, hands its packet to its connection and returns the chains to the
    /// guest. Malformed chains are dropped with a log line. Returns whether any chain was used.
    pub fn process_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, VsockError> {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match packet::parse_tx_chain(mem, chain) {
                Ok(pkt) => self.handle_guest_packet(mem, &pkt),
                Err(e) => warn!("dropping malformed vsock tx packet: {e}"),
            }
            queue.add_used(mem, head, 0).map_err(VsockError::Queue)?;
            used = true;
        }
        Ok(used)
    }

    /// Fills rx buffers with what connections owe the guest. Returns whether any buffer was used.
    pub fn fill_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, VsockError> {
        let mut used = false;
        while self.has_pending_rx() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let buf = match packet::parse_rx_chain(mem, chain) {
                Ok(buf) => buf,
                Err(e) => {
                    warn!("dropping malformed vsock rx buffer: {e}");
                    queue.add_used(mem, head, 0).map_err(VsockError::Queue)?;
                    used = true;
                    continue;
                }
            };
            let written = match self.next_rx_packet(mem, &buf) {
                Some(h) => {
                    trace_header(&h, "device → guest");
                    match packet::write_bytes_to_guest(mem, &buf.ranges, 0, &h.to_bytes()) {
                        Ok(_) => (HEADER_SIZE + h.len as usize) as u32,
                        Err(e) => {
                            // The buffer was validated, so only a memory map change gets here.
                            warn!("writing vsock rx header: {e}");
                            0
                        }
                    }
                }
                None => {
                    // Nothing was ready after all: give the buffer back for next time.
                    queue.go_to_previous_position();
                    continue;
                }
            };
            queue
                .add_used(mem, head, written)
                .map_err(VsockError::Queue)?;
            used = true;
        }
        Ok(used)
    }

    /// The next packet for the guest; data is read straight into `buf` after its header space.
    fn next_rx_packet<M: GuestMemory>(
        &mut self,
        mem: &M,
        buf: &packet::RxBuffer,
    ) -> Option<PacketHeader> {
        if let Some(h) = self.orphan_rsts.pop_front() {
            return Some(h);
        }
        while let Some(key) = self.rx_ready.pop_front() {
            self.rx_queued.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let h = match conn.take_control() {
                Some(h) => Some(h),
                None => conn.read_data(mem, buf),
            };
            let deadline_set = h.is_some_and(|h| h.op == op::SHUTDOWN);
            self.after_conn_event(key);
            if deadline_set {
                self.arm_timer();
            }
            if h.is_some() {
                return h;
            }
        }
        None
    }

    /// Queues the connection for rx or removes it, after anything changed its state.
    fn after_conn_event(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if conn.is_finished() {
            self.remove_conn(key);
        } else if conn.has_pending_rx() && self.rx_queued.insert(key) {
            self.rx_ready.push_back(key);
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream().as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.by_fd.remove(&fd);
            self.local_ports.remove(&key.local_port);
            debug!(?key, "vsock connection closed");
        }
        if self.rx_queued.remove(&key) {
            self.rx_ready.retain(|k| *k != key);
        }
    }

    fn queue_orphan_rst(&mut self, to: &PacketHeader) {
        if to.op == op::RST {
            return;
        }
        if self.orphan_rsts.len() >= MAX_ORPHAN_RSTS {
            warn!(
                "vsock: too many pending resets, dropping one for port {}",
                to.src_port
            );
            return;
        }
        self.orphan_rsts.push_back(PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn handle_guest_packet<M: GuestMemory>(&mut self, mem: &M, pkt: &TxPacket) {
        let h = &pkt.header;
        trace_header(h, "guest → device");
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            warn!(
                src_cid = h.src_cid,
                dst_cid = h.dst_cid,
                "dropping vsock packet with wrong cids (guest cid is {})",
                self.guest_cid
            );
            return;
        }
        if h.type_ != TYPE_STREAM {
            debug!(type_ = h.type_, "vsock: unsupported socket type");
            self.queue_orphan_rst(h);
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            match conn.on_guest_packet(mem, pkt) {
                ConnAction::Remove => self.remove_conn(key),
                ConnAction::None => self.after_conn_event(key),
            }
            return;
        }
        if h.op == op::REQUEST {
            self.connect_guest_to_host(key, h);
        } else {
            self.queue_orphan_rst(h);
        }
    }

    /// A guest REQUEST to host port P: connect to `<uds_path>_P` without blocking.
    fn connect_guest_to_host(&mut self, key: ConnKey, h: &PacketHeader) {
        if self.connection_count() >= MAX_CONNECTIONS {
            error!(
                "vsock: connection cap of {MAX_CONNECTIONS} reached; refusing guest connection to port {}",
                key.local_port
            );
            self.queue_orphan_rst(h);
            return;
        }
        let path = port_path(&self.uds_path, key.local_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                debug!(path = %path.display(), "vsock: guest connect refused: {e}");
                self.queue_orphan_rst(h);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        if let Err(e) = self.register_conn_fd(fd) {
            warn!("vsock: registering host socket: {e}");
            self.queue_orphan_rst(h);
            return;
        }
        self.by_fd.insert(fd, key);
        self.conns
            .insert(key, Connection::new_peer(stream, key, self.guest_cid, h));
        self.after_conn_event(key);
    }

    fn register_conn_fd(&self, fd: RawFd) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(
                EventSet::IN
                    | EventSet::OUT
                    | EventSet::READ_HANG_UP
                    | EventSet::HANG_UP
                    | EventSet::EDGE_TRIGGERED,
                fd as u64,
            ),
        )
    }

    /// Handles every ready host socket without blocking.
    pub fn process_host_events(&mut self) -> Result<(), VsockError> {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VsockError::Epoll(e)),
            };
            for ev in &events[..n] {
                let set = ev.event_set();
                match ev.data() {
                    TOKEN_LISTENER => self.accept_host_clients()?,
                    TOKEN_TIMER => self.expire_deadlines(),
                    fd => self.host_socket_event(fd as RawFd, set),
                }
            }
            if n < events.len() {
                return Ok(());
            }
        }
    }

    fn accept_host_clients(&mut self) -> Result<(), VsockError> {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_transient_accept_error(&e) => {
                    warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    return Ok(());
                }
                Err(reason) => {
                    return Err(VsockError::Accept {
                        path: self.uds_path.clone(),
                        reason,
                    });
                }
            };
            if self.connection_count() >= MAX_CONNECTIONS {
                error!(
                    "vsock: connection cap of {MAX_CONNECTIONS} reached; closing new host client on {}",
                    self.uds_path.display()
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn!("vsock: host client: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = self.register_conn_fd(fd) {
                warn!("vsock: registering host client: {e}");
                continue;
            }
            self.pending_hosts.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::new(),
                    deadline: Instant::now() + CONNECT_TIMEOUT,
                },
            );
            self.arm_timer();
            // The line may already be there; edge-triggered epoll will not tell us again.
            self.read_connect_line(fd);
        }
    }

    fn host_socket_event(&mut self, fd: RawFd, set: EventSet) {
        if self.pending_hosts.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_host_event(
                set.contains(EventSet::IN) || set.contains(EventSet::READ_HANG_UP),
                set.contains(EventSet::OUT),
                set.contains(EventSet::READ_HANG_UP),
                set.contains(EventSet::HANG_UP) || set.contains(EventSet::ERROR),
            );
        }
        self.after_conn_event(key);
    }

    /// Reads a host client's `CONNECT <port>\n` byte by byte, so no stream byte after the line
    /// is consumed here.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(pending) = self.pending_hosts.get_mut(&fd) else {
            return;
        };
        let progress = loop {
            let mut byte = [0u8; 1];
            match pending.stream.read(&mut byte) {
                Ok(0) => break ConnectRequest::Invalid("closed before CONNECT line".into()),
                Ok(_) => {
                    pending.line.push(byte[0]);
                    match parse_connect_request(&pending.line) {
                        ConnectRequest::Incomplete => continue,
                        other => break other,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    break ConnectRequest::Incomplete;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break ConnectRequest::Invalid(e.to_string()),
            }
        };
        match progress {
            ConnectRequest::Incomplete => {}
            ConnectRequest::Invalid(why) => {
                warn!(
                    "vsock: closing host client on {}: {why}",
                    self.uds_path.display()
                );
                self.drop_pending_host(fd);
            }
            ConnectRequest::Port(port) => {
                let Some(pending) = self.pending_hosts.remove(&fd) else {
                    return;
                };
                let local_port = self.allocate_local_port();
                let key = ConnKey {
                    local_port,
                    peer_port: port,
                };
                self.local_ports.insert(local_port);
                self.by_fd.insert(fd, key);
                self.conns.insert(
                    key,
                    Connection::new_local(
                        pending.stream,
                        key,
                        self.guest_cid,
                        Instant::now() + CONNECT_TIMEOUT,
                    ),
                );
                self.arm_timer();
                self.after_conn_event(key);
            }
        }
    }

    fn drop_pending_host(&mut self, fd: RawFd) {
        if let Some(p) = self.pending_hosts.remove(&fd) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            drop(p.stream);
        }
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = if port >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            if !self.local_ports.contains(&port) {
                return port;
            }
        }
    }

    /// Closes host clients and guest connects that missed their deadline.
    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        let late_hosts: Vec<RawFd> = self
            .pending_hosts
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late_hosts {
            warn!("vsock: host client sent no CONNECT line in {CONNECT_TIMEOUT:?}; closing it");
            self.drop_pending_host(fd);
        }
        let late_conns: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| c.key)
            .collect();
        for key in late_conns {
            if let Some(conn) = self.conns.get_mut(&key) {
                if conn.state() == ConnState::LocalInit {
                    warn!(
                        "vsock: guest did not answer a connect to port {} in {CONNECT_TIMEOUT:?}; closing the host client",
                        key.peer_port
                    );
                } else {
                    debug!(?key, "vsock: guest did not finish a shutdown; resetting");
                }
                conn.kill();
            }
            self.after_conn_event(key);
        }
        self.arm_timer();
    }

    /// Arms the timer for the earliest deadline (or disarms it).
    fn arm_timer(&mut self) {
        let next = self
            .pending_hosts
            .values()
            .map(|p| p.deadline)
            .chain(self.conns.values().filter_map(|c| c.deadline))
            .min();
        let res = match next {
            Some(deadline) => {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.timer.reset(wait, None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = res {
            warn!("vsock: arming connect timer: {e}");
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// One trace line per packet, either way.
fn trace_header(h: &PacketHeader, direction: &str) {
    trace!(
        op = h.op,
        src = h.src_port,
        dst = h.dst_port,
        len = h.len,
        flags = h.flags,
        buf_alloc = h.buf_alloc,
        fwd_cnt = h.fwd_cnt,
        "{direction}"
    );
}

/// `<uds_path>_<port>`: where host listeners for guest-initiated connections to `port` live.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects without blocking: a listener whose backlog is full answers EAGAIN instead of
/// stalling the device thread.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Removes `path` if it is a socket nobody listens on, left behind by a dead process.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on this socket",
            )),
            Err(_) => std::fs::remove_file(path),
        },
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}
