//! vhost-user backends: our devices served to another VMM (QEMU) over the vhost-user protocol.
//! Every backend listens, serves one frontend connection and cleans up the same way
//! ([`serve_backend`]), and speaks the protocol's device side the same way ([`Backend`]:
//! features, memory table, EVENT_IDX, config reads, exit events); the modules only supply
//! the device they run, as a [`BackendDevice`].

pub mod blk;
mod early_enable;
pub mod net;
pub mod vsock;

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tracing::info;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{
    VhostUserBackend, VhostUserBackendMut, VhostUserDaemon, VringEpollHandler, VringRwLock,
};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// Why a backend could not listen or serve.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("vhost-user socket path {path}: {reason}")]
    SocketPath { path: PathBuf, reason: String },
    #[error("cannot listen on vhost-user socket {path}: {reason}")]
    Listen {
        path: PathBuf,
        reason: VhostUserError,
    },
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    #[error("registering {what} with the vhost-user event loop: {source}")]
    RegisterListener {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// A file descriptor the backend's worker thread should also wait on, reported to the
/// backend's `handle_event` as `event`.
pub struct ExtraListener {
    pub what: &'static str,
    pub fd: RawFd,
    pub event: u16,
    /// Watch it edge-triggered (see `VirtioDevice::event_fds_edge_triggered`).
    pub edge_triggered: bool,
}

/// Serves one vhost-user connection with `backend`: listens on `socket` (calling
/// `on_listening` once it can accept, so a launcher can start QEMU), serves the frontend until
/// it disconnects, removes the socket and returns `Ok`. With `seccomp` (the
/// [`ThreadKind::VhostUser`](crate::seccomp::ThreadKind::VhostUser) filter), every thread of
/// the process is confined once the frontend has connected and the daemon's threads run: the
/// rest of the process's life is serving the frontend.
/// How a backend meets its frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// The frontend talks to the daemon directly.
    Direct,
    /// Through the relay that holds back QEMU virtio-net's early SET_VRING_ENABLE
    /// (`early_enable`).
    HoldEarlyVringEnable,
}

pub fn serve_backend<T>(
    name: &str,
    socket: &Path,
    backend: T,
    extra_listeners: &[ExtraListener],
    frontend: Frontend,
    on_listening: impl FnOnce(),
    seccomp: Option<&seccompiler::BpfProgram>,
) -> Result<(), ServeError>
where
    T: VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Clone + 'static,
{
    check_socket_path(socket)?;
    if frontend == Frontend::HoldEarlyVringEnable {
        return serve_relayed(
            name,
            socket,
            backend,
            extra_listeners,
            on_listening,
            seccomp,
        );
    }
    let mut listener = Listener::new(socket, true).map_err(|reason| ServeError::Listen {
        path: socket.to_path_buf(),
        reason,
    })?;
    let (mut daemon, handlers) = new_daemon(name, backend, extra_listeners)?;
    on_listening();

    let started = daemon.start(&mut listener);
    if started.is_ok()
        && let Some(filter) = seccomp
        && let Err(e) =
            crate::seccomp::install_all_threads(crate::seccomp::ThreadKind::VhostUser, filter)
    {
        for h in &handlers {
            h.send_exit_event();
        }
        let _ = std::fs::remove_file(socket);
        return Err(e.into());
    }
    let result = started.and_then(|()| daemon.wait());
    for h in &handlers {
        h.send_exit_event();
    }
    drop(listener);
    let _ = std::fs::remove_file(socket);
    daemon_result(name, result)
}

/// A daemon's epoll handlers (one per worker thread).
type EpollHandlers<T> = Vec<Arc<VringEpollHandler<T>>>;

/// A daemon serving `backend`, with `extra_listeners` on each of its epoll handlers.
fn new_daemon<T>(
    name: &str,
    backend: T,
    extra_listeners: &[ExtraListener],
) -> Result<(VhostUserDaemon<T>, EpollHandlers<T>), ServeError>
where
    T: VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Clone + 'static,
{
    let daemon = VhostUserDaemon::new(
        name.to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| ServeError::Daemon(e.to_string()))?;
    let handlers = daemon.get_epoll_handlers();
    for h in &handlers {
        for extra in extra_listeners {
            let set = if extra.edge_triggered {
                EventSet::IN | EventSet::EDGE_TRIGGERED
            } else {
                EventSet::IN
            };
            h.register_listener(extra.fd, set, u64::from(extra.event))
                .map_err(|source| ServeError::RegisterListener {
                    what: extra.what,
                    source,
                })?;
        }
    }
    Ok((daemon, handlers))
}

/// [`serve_backend`] with the early-enable relay between the frontend (on `socket`) and the
/// daemon (on a private socket beside it, `<socket>.daemon`, removed once connected). The
/// relay's threads start before the daemon's, so the process filter (which allows no new
/// threads) can go on as soon as the daemon runs.
fn serve_relayed<T>(
    name: &str,
    socket: &Path,
    backend: T,
    extra_listeners: &[ExtraListener],
    on_listening: impl FnOnce(),
    seccomp: Option<&seccompiler::BpfProgram>,
) -> Result<(), ServeError>
where
    T: VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Clone + 'static,
{
    let inner = PathBuf::from(format!("{}.daemon", socket.display()));
    check_socket_path(&inner)?;
    let listen = |path: &Path| {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).map_err(|e| ServeError::SocketPath {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let outer_listener = listen(socket)?;
    let inner_listener = listen(&inner)?;
    let (mut daemon, handlers) = new_daemon(name, backend, extra_listeners)?;
    let (replies, reply_thread) = early_enable::start_reply_thread()
        .map_err(|e| ServeError::Daemon(format!("starting the relay: {e}")))?;
    let relay = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("vhost-user-relay".into())
            .spawn(move || -> io::Result<()> {
                let (frontend, _) = outer_listener.accept()?;
                let (daemon_end, _) = inner_listener.accept()?;
                let _ = std::fs::remove_file(&inner);
                early_enable::relay(frontend, daemon_end, replies)
            })
            .map_err(|e| ServeError::Daemon(format!("starting the relay: {e}")))?
    };
    on_listening();
    let started = daemon.start_client(&inner.to_string_lossy());
    let cleanup = |handlers: &[Arc<VringEpollHandler<T>>]| {
        for h in handlers {
            h.send_exit_event();
        }
        let _ = std::fs::remove_file(socket);
        let _ = std::fs::remove_file(&inner);
    };
    if started.is_ok()
        && let Some(filter) = seccomp
        && let Err(e) =
            crate::seccomp::install_all_threads(crate::seccomp::ThreadKind::VhostUser, filter)
    {
        cleanup(&handlers);
        return Err(e.into());
    }
    let result = started.and_then(|()| daemon.wait());
    cleanup(&handlers);
    for thread in [relay, reply_thread] {
        if let Err(e) = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("panicked")))
        {
            tracing::debug!("{name}: vhost-user relay ended: {e}");
        }
    }
    daemon_result(name, result)
}

/// What a daemon's end means: a frontend that went away is the normal end.
fn daemon_result(name: &str, result: vhost_user_backend::Result<()>) -> Result<(), ServeError> {
    match result {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => {
            info!("{name}: vhost-user frontend disconnected");
            Ok(())
        }
        Err(e) => Err(ServeError::Daemon(e.to_string())),
    }
}

/// Refuses paths that would make `Listener::new` delete something that is not a stale socket,
/// and names a missing parent directory clearly.
fn check_socket_path(path: &Path) -> Result<(), ServeError> {
    let err = |reason: String| ServeError::SocketPath {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(err(format!(
            "directory {} does not exist",
            parent.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err("another process is listening on it".into()));
            }
            Ok(())
        }
        Ok(_) => Err(err("exists and is not a socket".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// What makes a vhost-user backend's device itself; the protocol side is [`Backend`]'s.
pub trait BackendDevice: Send + Sync + 'static {
    /// The backend's name in log lines.
    const NAME: &'static str;
    const NUM_QUEUES: usize;
    /// Largest queue a frontend may set up.
    const MAX_QUEUE_SIZE: usize;
    /// The device's feature bits (VERSION_1 included; [`Backend`] adds EVENT_IDX and the
    /// protocol-features bit).
    fn features(&self) -> u64;
    /// The configuration space the frontend reads.
    fn config_space(&self) -> Vec<u8>;
    /// The vhost-user protocol features offered: the configuration space (CONFIG) and the
    /// queue count (MQ) by default.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }
    /// The frontend set the features the driver accepted.
    fn ack_features(&mut self, _features: u64) {}
    /// Serves `event`. An error is logged and the backend keeps serving: ending the
    /// library's worker thread would leave the guest a dead device while QEMU stays
    /// connected.
    fn handle(&mut self, event: &BackendEvent<'_>) -> Result<(), String>;
}

/// What woke a backend, with what it serves the event with.
pub struct BackendEvent<'a> {
    /// A queue index, or an extra listener's event id.
    pub id: u16,
    /// The frontend's memory; `None` before it sent a memory table.
    pub mem: Option<&'a GuestMemoryMmap>,
    pub vrings: &'a [VringRwLock],
    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
}

/// Why a backend could not start or serve.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error(transparent)]
    Disk(#[from] crate::devices::virtio::block::BlockError),
    #[error(transparent)]
    Vsock(#[from] crate::devices::vsock::VsockError),
    #[error(transparent)]
    Net(#[from] crate::devices::net::NetError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("creating the exit event: {0}")]
    ExitEvent(io::Error),
}

/// The vhost-user device side of any [`BackendDevice`].
pub struct Backend<D> {
    device: D,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    event_idx: bool,
    exit_consumer: EventConsumer,
    exit_notifier: EventNotifier,
}

impl<D: BackendDevice> Backend<D> {
    pub fn new(device: D) -> Result<Self, BackendError> {
        let (exit_consumer, exit_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(BackendError::ExitEvent)?;
        Ok(Self {
            device,
            mem: None,
            event_idx: false,
            exit_consumer,
            exit_notifier,
        })
    }

    pub fn device(&self) -> &D {
        &self.device
    }
}

impl<D: BackendDevice> VhostUserBackendMut for Backend<D> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        D::NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        D::MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.device.features()
            | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.device.protocol_features()
    }

    fn acked_features(&mut self, features: u64) {
        self.device.ack_features(features);
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.device.config_space(), offset, size)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Nothing either device offers is writable.
        tracing::debug!(offset, len = buf.len(), "{}: ignored config write", D::NAME);
        Ok(())
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((
            self.exit_consumer.try_clone().ok()?,
            self.exit_notifier.try_clone().ok()?,
        ))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // ERROR and HANG_UP too: a tap that vanished reports only EPOLLERR.
        if !evset.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
            return Ok(());
        }
        tracing::trace!(device_event, "{}: vhost-user event", D::NAME);
        let mem = self.mem.as_ref().map(GuestAddressSpace::memory);
        let event = BackendEvent {
            id: device_event,
            mem: mem.as_deref(),
            vrings,
            event_idx: self.event_idx,
        };
        if let Err(e) = self.device.handle(&event) {
            tracing::error!("{}: {e}", D::NAME);
        }
        Ok(())
    }
}

/// `size` bytes of `config` from `offset`, zero-filled past its end: QEMU asks for its own
/// idea of the config struct's size, which may be larger than ours.
fn config_slice(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    crate::devices::virtio::read_config_window(config, offset.into(), &mut out);
    out
}
