//! crosd: the bus and host actors behind the Unix control socket.
//!
//! [`Daemon::start`] creates the directories (0700, whatever the umask), locks the state
//! directory, binds the socket and starts the host actors; [`Daemon::run_until`] accepts
//! connections (at most [`DaemonConfig::max_clients`] at once) until its stop future fires,
//! then shuts down gracefully: no new connections, in-flight requests finish (bounded), actors
//! stop, the trace is flushed and the socket removed. Both run inside an actix `System`.

pub mod connection;
pub mod limits;
pub mod lock;
pub mod passed_files;
pub mod socket;

use cros_actors::bus::BusError;
use cros_actors::host::SpawnError;
use cros_actors::{BusConfig, BusHandle, HostConfig, start_host_actors};
use cros_actors::{HypervisorConfig, NetworkConfig};
use cros_hypervisor::fsutil::create_dir_with_mode;
use cros_messages::CrosError;
use cros_messages::bus::BusEvent;
use cros_messages::concierge::{ConciergeReply, ConciergeRequest};
use cros_messages::{Addr, Body};
use lock::{HeldLock, LockError};
use socket::{AccessPolicy, SocketError, SocketGroup, bind_control_socket, create_socket_dir};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/crosd";
pub const DEFAULT_RUN_DIR: &str = "/run/crosd";
pub const SOCKET_NAME: &str = "crosd.sock";

/// How long shutdown waits for in-flight requests before giving up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown gives the running VMs, all together, to stop in order.
pub const DEFAULT_VM_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Control clients served at once unless `--max-clients` says otherwise.
pub const DEFAULT_MAX_CLIENTS: usize = 256;

/// Refused clients being told why at once; past that, extra ones are closed without a word.
const MAX_REFUSALS_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    /// Group allowed on the socket (mode 0660); None = 0600.
    pub socket_group: Option<String>,
    /// Record every routed envelope to this file.
    pub trace: Option<PathBuf>,
    pub hypervisor: HypervisorConfig,
    /// At shutdown, every VM is stopped as `vmc stop` does (maitred Shutdown, power button,
    /// VMM), all in parallel, within this time.
    pub vm_stop_timeout: Duration,
    /// Control connections served at once; more are refused with an Unavailable error.
    pub max_clients: usize,
    /// VM networking (patchpanel).
    pub network: NetworkConfig,
}

impl DaemonConfig {
    /// The defaults, with the socket at `RUN_DIR/crosd.sock`.
    pub fn new(state_dir: PathBuf, run_dir: PathBuf) -> Self {
        let socket = run_dir.join(SOCKET_NAME);
        Self {
            state_dir,
            run_dir,
            socket,
            socket_group: None,
            trace: None,
            hypervisor: HypervisorConfig::default(),
            vm_stop_timeout: DEFAULT_VM_STOP_TIMEOUT,
            max_clients: DEFAULT_MAX_CLIENTS,
            network: NetworkConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot create {what} {}: {source}", path.display())]
    Dir {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the bus: {0}")]
    Bus(#[from] BusError),
    #[error("cannot start the host actors: {0}")]
    Actors(#[from] SpawnError),
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Daemon {
    listener: tokio::net::UnixListener,
    bus: BusHandle,
    policy: Arc<AccessPolicy>,
    socket: PathBuf,
    vm_stop_timeout: Duration,
    max_clients: usize,
    /// Held for the daemon's life: no other crosd uses these disks, or this socket.
    _locks: [HeldLock; 2],
}

impl Daemon {
    pub async fn start(config: &DaemonConfig) -> Result<Self, DaemonError> {
        let group = config
            .socket_group
            .as_deref()
            .map(SocketGroup::lookup)
            .transpose()?;
        let dir_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| DaemonError::Dir { what, path, source }
        };
        create_dir_with_mode(&config.state_dir, 0o700)
            .map_err(dir_err("state directory", &config.state_dir))?;
        // The state lock comes first: of two crosd on one state directory, the second stops
        // here, before it looks at the socket, the trace or the disks.
        let state_lock = HeldLock::state_dir(&config.state_dir)?;
        if config.socket.parent() == Some(config.run_dir.as_path()) {
            create_socket_dir(&config.run_dir, group.as_ref())?;
        } else {
            create_dir_with_mode(&config.run_dir, 0o700)
                .map_err(dir_err("run directory", &config.run_dir))?;
        }
        // Bind before the actors start: a second crosd must fail before it touches the trace.
        let socket::ControlSocket {
            listener: std_listener,
            lock: socket_lock,
        } = bind_control_socket(&config.socket, group.as_ref())?;
        let listen_err = |source| DaemonError::Listen {
            path: config.socket.clone(),
            source,
        };
        std_listener.set_nonblocking(true).map_err(listen_err)?;
        let listener = tokio::net::UnixListener::from_std(std_listener).map_err(listen_err)?;
        let started = async {
            let bus = BusHandle::new(BusConfig {
                trace: config.trace.clone(),
                ..BusConfig::default()
            })?;
            let host = HostConfig {
                state_dir: config.state_dir.clone(),
                run_dir: config.run_dir.clone(),
                hypervisor: config.hypervisor.clone(),
                network: config.network.clone(),
            };
            // First in the trace: an isolated replay maps these directories onto its own.
            bus.publish(
                bus.addr(),
                Body::BusEvent(BusEvent::DaemonStarted {
                    state_dir: host.state_dir.display().to_string(),
                    run_dir: host.run_dir.display().to_string(),
                    hypervisor: format!("{:?}", host.hypervisor.kind).to_lowercase(),
                }),
            );
            if let Err(e) = start_host_actors(&bus, &host).await {
                bus.shutdown();
                return Err(DaemonError::from(e));
            }
            Ok(bus)
        }
        .await;
        let bus = match started {
            Ok(bus) => bus,
            Err(e) => {
                let _ = std::fs::remove_file(&config.socket);
                return Err(e);
            }
        };
        tracing::info!(
            socket = %config.socket.display(),
            state_dir = %config.state_dir.display(),
            trace = ?config.trace,
            actors = bus.actors().len(),
            "crosd ready"
        );
        Ok(Self {
            listener,
            bus,
            policy: Arc::new(AccessPolicy::new(group)),
            socket: config.socket.clone(),
            vm_stop_timeout: config.vm_stop_timeout,
            max_clients: config.max_clients.max(1),
            _locks: [state_lock, socket_lock],
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn bus(&self) -> &BusHandle {
        &self.bus
    }

    /// Serves until `stop` completes, then shuts down gracefully.
    pub async fn run_until(self, stop: impl Future<Output = ()>) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Every connection holds a sender; recv() returns None once all of them have finished.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let mut next = 0u64;
        let slots = Arc::new(Semaphore::new(self.max_clients));
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
        let mut refused_log = Throttle::default();
        let mut exhausted_log = Throttle::default();
        let mut reserve = FdReserve::new();
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    next += 1;
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        if let Some(more) = refused_log.ready() {
                            tracing::warn!(
                                max_clients = self.max_clients,
                                refused_since_last_report = more,
                                "refusing a control connection: {} clients connected already",
                                self.max_clients
                            );
                        }
                        self.refuse(stream, next, &refusals);
                        continue;
                    };
                    let (bus, policy, rx, alive) = (
                        self.bus.clone(),
                        self.policy.clone(),
                        shutdown_rx.clone(),
                        alive_tx.clone(),
                    );
                    actix::spawn(async move {
                        connection::serve(stream, next, bus, &policy, rx).await;
                        drop(slot);
                        drop(alive);
                    });
                }
                Err(e) if is_out_of_fds(&e) => {
                    // The connection stays in the backlog and the listener readable: accept
                    // would fail again at once, for ever. Spend the reserve descriptor on
                    // taking that connection off the backlog and closing it (its client sees
                    // the connection closed), then take the reserve back.
                    let closed = reserve.accept_and_close(&self.listener).await;
                    if let Some(more) = exhausted_log.ready() {
                        tracing::warn!(
                            error = %e,
                            closed,
                            refused_since_last_report = more,
                            "out of file descriptors: closing new control connections until \
                             some are free"
                        );
                    }
                    if !closed {
                        // Not even the reserve: wait for descriptors to come back.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        drop(self.listener);
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = shutdown_tx.send(true);
        drop(alive_tx);
        if tokio::time::timeout(DRAIN_TIMEOUT, alive_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
        stop_vms(&self.bus, self.vm_stop_timeout).await;
        self.bus.shutdown();
        if let Err(e) = std::fs::remove_file(&self.socket) {
            tracing::warn!(socket = %self.socket.display(), error = %e, "cannot remove socket");
        }
        tracing::info!("crosd stopped");
    }
}

/// Stops every VM in order, as `vmc stop` does, so that what a guest wrote reaches its disk;
/// VMs still running after `timeout` are killed when the actors stop.
async fn stop_vms(bus: &BusHandle, timeout: Duration) {
    let stop = Body::Concierge(ConciergeRequest::StopAllVms {});
    tracing::info!("stopping every VM (at most {timeout:?})");
    match bus
        .request_with_deadline(bus.addr(), &Addr::host("concierge"), stop, timeout)
        .await
    {
        Ok(Body::ConciergeReply(ConciergeReply::AllVmsStopped { count })) => {
            tracing::info!(count, "VMs stopped")
        }
        Ok(other) => tracing::warn!(reply = %other.type_name(), "unexpected StopAllVms reply"),
        Err(e) => tracing::warn!(error = %e, "VMs did not all stop in order; killing the rest"),
    }
}

impl Daemon {
    /// Tells a client over the cap why it is not served, on a task of its own (at most
    /// [`MAX_REFUSALS_IN_FLIGHT`] at once; past that the connection is just closed).
    fn refuse(&self, stream: tokio::net::UnixStream, n: u64, refusals: &Arc<Semaphore>) {
        let Ok(permit) = refusals.clone().try_acquire_owned() else {
            return;
        };
        let why = CrosError::unavailable(format!(
            "crosd serves at most {} control connections at once (--max-clients) and all are \
             in use; try again when one closes",
            self.max_clients
        ));
        let bus = self.bus.clone();
        actix::spawn(async move {
            connection::refuse(stream, n, bus, why).await;
            drop(permit);
        });
    }
}

/// EMFILE or ENFILE: this process or the whole system is out of file descriptors.
fn is_out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One descriptor kept open (on /dev/null) so that, when all others are in use, the accept
/// loop can still take a connection off the backlog and close it.
struct FdReserve(Option<std::fs::File>);

impl FdReserve {
    fn new() -> Self {
        Self(std::fs::File::open("/dev/null").ok())
    }

    /// Frees the reserve, accepts one pending connection and closes it, takes the reserve
    /// back. Whether a connection was closed.
    async fn accept_and_close(&mut self, listener: &tokio::net::UnixListener) -> bool {
        self.0 = None;
        // The connection that failed is ready in the backlog, so this does not wait; the
        // bound is for a client that gave up meanwhile.
        let closed = matches!(
            tokio::time::timeout(Duration::from_millis(100), listener.accept()).await,
            Ok(Ok(_))
        );
        *self = Self::new();
        closed
    }
}

/// Rate limit for a warning that may repeat for every connection: at most one a second, with
/// how many were left out.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// Some(number left out since the last report) when a report is due.
    fn ready(&mut self) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Completes on the first SIGTERM or SIGINT. Installs the handlers at once (call it before
/// announcing readiness), so a signal that arrives early is not lost.
pub fn termination_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use cros_messages::bus::{BusReply, BusRequest};
    use cros_messages::cicerone::CiceroneEvent;
    use cros_messages::concierge::ConciergeEvent;
    use cros_messages::{Addr, Body, FrameError};

    /// What ListActors lists: the bus and the host actors.
    const ACTORS: usize = cros_messages::ActorKind::HOST.len() + 1;

    /// A test actor (`slow`) that tells the test when a request reached it, then answers Ping
    /// after a pause: a request that is in flight when shutdown begins.
    struct Slow {
        reached: std::sync::mpsc::Sender<()>,
    }

    impl actix::Actor for Slow {
        type Context = actix::Context<Self>;
    }

    impl actix::Handler<cros_actors::Deliver> for Slow {
        type Result = actix::ResponseFuture<Body>;

        fn handle(&mut self, msg: cros_actors::Deliver, _: &mut Self::Context) -> Self::Result {
            let _ = self.reached.send(());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                match msg.env.body {
                    Body::Bus(BusRequest::Ping { seq }) => Body::BusReply(BusReply::Pong { seq }),
                    other => cros_messages::CrosError::invalid(other.type_name()).into(),
                }
            })
        }
    }

    #[test]
    fn shutdown_finishes_in_flight_requests() {
        let dir = tempfile::tempdir().unwrap();
        let config = DaemonConfig::new(dir.path().join("state"), dir.path().join("run"));
        let socket = config.socket.clone();
        let (reached_tx, reached_rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let d = Daemon::start(&config).await.unwrap();
                cros_actors::spawn_supervised(d.bus(), Addr::host("slow"), move || Slow {
                    reached: reached_tx.clone(),
                })
                .await
                .unwrap();
                ready_tx.send(()).unwrap();
                d.run_until(async {
                    let _ = stop_rx.await;
                })
                .await;
            })
        });
        ready_rx.recv().unwrap();
        let mut client = Client::connect(&socket).unwrap();
        let asker = std::thread::spawn(move || {
            client.request(
                &Addr::host("slow"),
                Body::Bus(BusRequest::Ping { seq: 9 }),
                Duration::from_secs(10),
            )
        });
        // The request is with the actor: now shut down.
        reached_rx.recv().unwrap();
        stop_tx.send(()).unwrap();
        let reply = asker.join().unwrap().unwrap();
        assert_eq!(reply, Body::BusReply(BusReply::Pong { seq: 9 }));
        daemon.join().unwrap();
        assert!(!socket.exists());
        // And nobody can connect any more.
        assert!(matches!(
            Client::connect(&socket),
            Err(crate::client::ClientError::NotRunning(_))
        ));
    }

    /// The real daemon on its own thread; the test drives it with the real client.
    #[test]
    fn subscribed_connection_gets_matching_events_and_shutdown_removes_the_socket() {
        let d = Running::start(DEFAULT_MAX_CLIENTS);
        let (socket, bus) = (d.socket.clone(), d.bus.clone());
        let timeout = Duration::from_secs(10);
        let mut client = Client::connect(&socket).unwrap();
        client
            .subscribe(vec!["ConciergeEvent".into()], timeout)
            .unwrap();
        let wanted = Body::ConciergeEvent(ConciergeEvent::VmStartingUp {
            name: "termina".into(),
        });
        bus.publish(
            &Addr::host("cicerone"),
            Body::CiceroneEvent(CiceroneEvent::TremplinStarted {
                vm: "termina".into(),
            }),
        );
        bus.publish(&Addr::host("concierge"), wanted.clone());
        // A request in between: its reply is matched, the event waits in the queue.
        let actors = client.list_actors(timeout).unwrap();
        assert_eq!(actors.len(), ACTORS);
        let event = client.next_event(timeout).unwrap().expect("an event");
        assert_eq!(event.body, wanted);
        assert_eq!(event.from, Addr::host("concierge"));
        // The cicerone event did not match the subscription.
        assert!(
            client
                .next_event(Duration::from_millis(200))
                .unwrap()
                .is_none()
        );
        // That wait timed out between frames: the connection is still usable.
        assert_eq!(client.list_actors(timeout).unwrap().len(), ACTORS);
        drop(client);
        drop(d);
        assert!(!socket.exists());
    }

    /// A daemon on its own thread, stopped and joined on drop.
    struct Running {
        socket: PathBuf,
        bus: BusHandle,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
        _dir: tempfile::TempDir,
    }

    impl Running {
        fn start(max_clients: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut config = DaemonConfig::new(dir.path().join("state"), dir.path().join("run"));
            config.max_clients = max_clients;
            let socket = config.socket.clone();
            let (bus_tx, bus_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                actix::System::new().block_on(async move {
                    let d = Daemon::start(&config).await.unwrap();
                    bus_tx.send(d.bus().clone()).unwrap();
                    d.run_until(async {
                        let _ = stop_rx.await;
                    })
                    .await;
                })
            });
            let bus = bus_rx.recv().unwrap();
            Self {
                socket,
                bus,
                stop: Some(stop_tx),
                thread: Some(thread),
                _dir: dir,
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    const PATIENCE: Duration = Duration::from_secs(30);

    #[test]
    fn a_hundred_concurrent_clients_all_get_answers() {
        let d = Running::start(DEFAULT_MAX_CLIENTS);
        let all_connected = Arc::new(std::sync::Barrier::new(100));
        let clients: Vec<_> = (0..100)
            .map(|_| {
                let (socket, all_connected) = (d.socket.clone(), all_connected.clone());
                std::thread::spawn(move || {
                    let mut client = Client::connect(&socket).unwrap();
                    // Every connection is open before any asks: 100 at once.
                    all_connected.wait();
                    client.list_actors(PATIENCE).map(|a| a.len())
                })
            })
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap().unwrap(), ACTORS);
        }
    }

    #[test]
    fn connections_over_the_cap_are_refused_and_the_cap_frees_up_when_they_close() {
        let d = Running::start(3);
        let mut served: Vec<Client> = (0..3)
            .map(|_| {
                let mut c = Client::connect(&d.socket).unwrap();
                assert_eq!(c.list_actors(PATIENCE).unwrap().len(), ACTORS);
                c
            })
            .collect();
        let refused = |socket: &Path| match Client::connect(socket)
            .and_then(|mut c| c.list_actors(PATIENCE))
        {
            Err(crate::client::ClientError::Refused(e)) => Some(e),
            Ok(_) => None,
            Err(e) => panic!("neither served nor refused: {e}"),
        };
        let e = refused(&d.socket).expect("a fourth client is refused");
        assert_eq!(e.kind, cros_messages::ErrorKind::Unavailable);
        assert!(e.message.contains("at most 3"), "{}", e.message);
        // The ones served go on being served.
        assert_eq!(served[0].list_actors(PATIENCE).unwrap().len(), ACTORS);
        drop(served.pop());
        // The closed connection's slot comes back once crosd has seen it close.
        let start = Instant::now();
        while refused(&d.socket).is_some() {
            assert!(start.elapsed() < PATIENCE, "the cap never freed up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_client_that_never_reads_its_events_is_cut_off_and_others_are_served() {
        let d = Running::start(DEFAULT_MAX_CLIENTS);
        // concierge itself subscribes to its guests' events.
        let before = d.bus.subscriber_count();
        let mut deaf = Client::connect(&d.socket).unwrap();
        deaf.subscribe(vec!["ConciergeEvent".into()], PATIENCE)
            .unwrap();
        assert_eq!(d.bus.subscriber_count(), before + 1);
        let flood = 100 * connection::MAX_QUEUED;
        for i in 0..flood {
            d.bus.publish(
                &Addr::host("concierge"),
                Body::ConciergeEvent(ConciergeEvent::VmStartingUp {
                    name: format!("vm-{i}"),
                }),
            );
        }
        // The queue filled: the subscription ended at once, the connection is closed.
        assert_eq!(d.bus.subscriber_count(), before);
        let mut received = 0;
        let end = loop {
            match deaf.next_event(PATIENCE) {
                Ok(Some(_)) => received += 1,
                Ok(None) => panic!("the connection stayed open after {received} events"),
                Err(e) => break e,
            }
        };
        assert!(received < flood, "{received} of {flood} events were queued");
        assert!(
            matches!(
                end,
                crate::client::ClientError::Protocol(FrameError::Closed)
            ),
            "{end}"
        );
        // crosd itself is fine.
        let mut other = Client::connect(&d.socket).unwrap();
        assert_eq!(other.list_actors(PATIENCE).unwrap().len(), ACTORS);
    }
}
