//! crosd: the bus and host actors behind the Unix control socket.
//!
//! [`Daemon::start`] creates the directories, binds the socket and starts the host actors;
//! [`Daemon::run_until`] accepts connections until its stop future fires, then shuts down
//! gracefully: no new connections, in-flight requests finish (bounded), actors stop, the trace
//! is flushed and the socket removed. Both run inside an actix `System`.

pub mod connection;
pub mod passed_files;
pub mod socket;

use cros_actors::HypervisorConfig;
use cros_actors::bus::BusError;
use cros_actors::host::SpawnError;
use cros_actors::{BusConfig, BusHandle, HostConfig, start_host_actors};
use socket::{AccessPolicy, SocketError, SocketGroup, bind_control_socket};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/crosd";
pub const DEFAULT_RUN_DIR: &str = "/run/crosd";
pub const SOCKET_NAME: &str = "crosd.sock";

/// How long shutdown waits for in-flight requests before giving up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Socket(#[from] SocketError),
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
}

impl Daemon {
    pub async fn start(config: &DaemonConfig) -> Result<Self, DaemonError> {
        for (what, path) in [
            ("state directory", &config.state_dir),
            ("run directory", &config.run_dir),
        ] {
            std::fs::create_dir_all(path).map_err(|source| DaemonError::Dir {
                what,
                path: path.clone(),
                source,
            })?;
        }
        let group = config
            .socket_group
            .as_deref()
            .map(SocketGroup::lookup)
            .transpose()?;
        // Bind first: a second crosd must fail before it touches the trace or starts actors.
        let std_listener = bind_control_socket(&config.socket, group.as_ref())?;
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
            };
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
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    next += 1;
                    let (bus, policy, rx, alive) = (
                        self.bus.clone(),
                        self.policy.clone(),
                        shutdown_rx.clone(),
                        alive_tx.clone(),
                    );
                    actix::spawn(async move {
                        connection::serve(stream, next, bus, &policy, rx).await;
                        drop(alive);
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
        self.bus.shutdown();
        if let Err(e) = std::fs::remove_file(&self.socket) {
            tracing::warn!(socket = %self.socket.display(), error = %e, "cannot remove socket");
        }
        tracing::info!("crosd stopped");
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
    use cros_messages::{Addr, Body};

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
        let dir = tempfile::tempdir().unwrap();
        let config = DaemonConfig::new(dir.path().join("state"), dir.path().join("run"));
        let socket = config.socket.clone();
        let (bus_tx, bus_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = std::thread::spawn(move || {
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
        assert_eq!(actors.len(), 6);
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
        assert_eq!(client.list_actors(timeout).unwrap().len(), 6);
        drop(client);
        stop_tx.send(()).unwrap();
        daemon.join().unwrap();
        assert!(!socket.exists());
    }
}
