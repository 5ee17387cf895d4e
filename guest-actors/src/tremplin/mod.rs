//! tremplin: the container manager in the termina VM (REFERENCE.md, "Tremplin").
//!
//! It drives real LXD over its REST API on the Unix socket, serves cicerone's
//! [`TremplinRequest`]s on guest vsock port 8890 ([`server`]) and reports
//! [`TremplinEvent`](cros_messages::tremplin::TremplinEvent)s on a connection it keeps to host
//! port 7778 ([`host`]). LXD starts on StartLxd ([`lxd_process`], [`setup`]); images come through
//! the host's proxy ([`forwarder`]) or as tarballs the host streams in ([`upload`]). Its own tokio
//! runtime; no actix in the guest.

pub mod container_fs;
pub mod create;
pub mod events;
pub mod forwarder;
pub mod host;
pub mod lxd_client;
pub mod lxd_process;
pub mod server;
pub mod setup;
pub mod start;
pub mod upload;
pub mod user;
pub mod validate;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cros_messages::CrosError;
use cros_messages::tremplin::{TremplinReply, TremplinRequest};

use create::ImageSource;
use host::{EventSender, HostDialer};
use lxd_client::{LxdClient, LxdError};
use lxd_process::LxdCommand;

/// The image version `%d` in an image server URL stands for, when /etc/lsb-release names none.
pub const DEFAULT_IMAGE_VERSION: &str = "1";

/// Where things are; the defaults are termina's, tests point them elsewhere.
#[derive(Debug, Clone)]
pub struct Config {
    /// The stateful disk's mount: LXD's state lives in `<stateful>/lxd`.
    pub stateful: PathBuf,
    pub lxd_program: String,
    /// `lxd --logfile` instead of `--syslog`.
    pub lxd_logfile: Option<PathBuf>,
    pub tokens_dir: PathBuf,
    pub profile: setup::ProfilePaths,
    /// garcon as the VM sees it (the tools image), checked before it is started in a container.
    pub garcon_host_path: PathBuf,
    pub host: HostDialer,
    /// What `%d` in an image server URL becomes.
    pub image_version: String,
    /// Run the proxy forwarder on 127.0.0.1:3128 (off in tests that run beside other things).
    pub forwarder: bool,
    /// lxdbr0's address/prefix: the container subnet the host routes to this VM.
    pub bridge_address: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stateful: "/mnt/stateful".into(),
            lxd_program: "lxd".into(),
            lxd_logfile: None,
            tokens_dir: "/run/tokens".into(),
            profile: setup::ProfilePaths::default(),
            garcon_host_path: start::GARCON.into(),
            host: HostDialer::default(),
            image_version: image_version_from(
                &std::fs::read_to_string("/etc/lsb-release").unwrap_or_default(),
            ),
            forwarder: true,
            bridge_address: setup::BRIDGE_ADDRESS.into(),
        }
    }
}

/// `CHROMEOS_RELEASE_CHROME_MILESTONE` of an lsb-release file, as Crostini's tremplin uses it.
pub fn image_version_from(lsb_release: &str) -> String {
    lsb_release
        .lines()
        .find_map(|l| l.strip_prefix("CHROMEOS_RELEASE_CHROME_MILESTONE="))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| DEFAULT_IMAGE_VERSION.to_string())
}

impl Config {
    pub fn lxd_dir(&self) -> PathBuf {
        self.stateful.join("lxd")
    }
    pub fn lxd_socket(&self) -> PathBuf {
        self.lxd_dir().join("unix.socket")
    }
    pub fn pool_source(&self) -> PathBuf {
        self.lxd_dir().join("storage-pools").join(setup::POOL)
    }
}

/// LXD's errors as the host sees them: LXD's own text, with what tremplin was doing.
pub fn lxd_error(context: &str, e: LxdError) -> CrosError {
    let msg = format!("{context}: {e}");
    match e {
        LxdError::Lxd { code: 404, .. } => CrosError::not_found(msg),
        LxdError::Lxd { code: 400, .. } => CrosError::precondition(msg),
        LxdError::Connect { .. } => CrosError::unavailable(msg),
        LxdError::Timeout { .. } => CrosError::timeout(msg),
        _ => CrosError::internal(msg),
    }
}

pub struct Tremplin {
    pub config: Config,
    pub lxd: LxdClient,
    pub events: EventSender,
    tunnels: forwarder::LoopbackTunnels,
    /// StartLxd runs one at a time.
    start_lxd: tokio::sync::Mutex<StartedParts>,
    lxd_ready: AtomicBool,
    /// Creates and starts in progress, by (what, container).
    busy: Mutex<HashSet<(&'static str, String)>>,
}

#[derive(Default)]
struct StartedParts {
    supervisor: Option<tokio::task::JoinHandle<()>>,
    watcher: bool,
    forwarder: bool,
}

impl Tremplin {
    pub fn new(config: Config, events: EventSender) -> Arc<Self> {
        Arc::new(Self {
            lxd: LxdClient::new(config.lxd_socket()),
            tunnels: forwarder::LoopbackTunnels::new(config.host.clone()),
            config,
            events,
            start_lxd: tokio::sync::Mutex::default(),
            lxd_ready: AtomicBool::new(false),
            busy: Mutex::default(),
        })
    }

    fn require_lxd(&self) -> Result<(), CrosError> {
        if self.lxd_ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(CrosError::precondition(
                "LXD is not started in this VM: send StartLxd first",
            ))
        }
    }

    /// Marks `what` running for `name`; false when it already is.
    fn begin(&self, what: &'static str, name: &str) -> bool {
        self.busy
            .lock()
            .map(|mut b| b.insert((what, name.to_string())))
            .unwrap_or(false)
    }

    fn end(&self, what: &'static str, name: &str) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(&(what, name.to_string()));
        }
    }

    fn is_busy(&self, what: &'static str, name: &str) -> bool {
        self.busy
            .lock()
            .map(|b| b.contains(&(what, name.to_string())))
            .unwrap_or(true)
    }

    /// StartLxd: start (or adopt) lxd, wait for it, apply the set-up, clean up creates that
    /// died, follow its events; idempotent.
    async fn start_lxd(self: &Arc<Self>) -> Result<TremplinReply, CrosError> {
        let mut parts = self.start_lxd.lock().await;
        if lxd_process::answers(&self.lxd).await.is_err() {
            // One already answering (left by a tremplin that died) is adopted as it is.
            let running = parts.supervisor.as_ref().is_some_and(|h| !h.is_finished());
            if !running {
                let group = std::fs::read_to_string("/etc/group")
                    .ok()
                    .filter(|g| lxd_process::group_exists(g, "lxd"))
                    .map(|_| "lxd".to_string());
                let cmd = LxdCommand {
                    program: self.config.lxd_program.clone(),
                    lxd_dir: self.config.lxd_dir(),
                    logfile: self.config.lxd_logfile.clone(),
                    group,
                };
                let handle = lxd_process::supervise(cmd)
                    .map_err(|e| CrosError::unavailable(e.to_string()))?;
                parts.supervisor = Some(handle);
            }
            lxd_process::wait_ready(&self.lxd, lxd_process::READY_TIMEOUT)
                .await
                .map_err(|e| CrosError::timeout(e.to_string()))?;
        }
        if self.config.forwarder && !parts.forwarder {
            match tokio::net::TcpListener::bind(forwarder::FORWARDER_ADDR).await {
                Ok(l) => {
                    tokio::spawn(forwarder::run_forwarder(l, self.config.host.clone()));
                    parts.forwarder = true;
                }
                Err(e) => {
                    return Err(CrosError::unavailable(format!(
                        "cannot listen on {} for LXD's image proxy: {e}",
                        forwarder::FORWARDER_ADDR
                    )));
                }
            }
        }
        let config = &self.config;
        setup::apply(
            &self.lxd,
            &config.pool_source(),
            &config.profile,
            &config.bridge_address,
        )
        .await
        .map_err(|e| CrosError::internal(e.to_string()))?;
        if !parts.watcher {
            tokio::spawn(events::watch(self.lxd.clone(), self.events.clone()));
            parts.watcher = true;
        }
        self.clean_up_inprogress().await?;
        self.lxd_ready.store(true, Ordering::SeqCst);
        Ok(TremplinReply::Ack {})
    }

    /// Answers one request.
    pub async fn handle(
        self: &Arc<Self>,
        req: TremplinRequest,
    ) -> Result<TremplinReply, CrosError> {
        let invalid = |e: validate::InvalidRequest| CrosError::invalid(e.to_string());
        match req {
            TremplinRequest::StartLxd {} => self.start_lxd().await,
            TremplinRequest::CreateContainer {
                name,
                image_server,
                image_alias,
                rootfs_path,
                metadata_path,
                upload_port,
            } => {
                validate::container_name(&name).map_err(invalid)?;
                let source = ImageSource::from_request(
                    &image_server,
                    &image_alias,
                    &rootfs_path,
                    &metadata_path,
                    upload_port,
                    &self.config.image_version,
                )
                .map_err(invalid)?;
                self.create_container(name, source).await
            }
            TremplinRequest::StartContainer {
                name,
                token,
                privilege_level,
            } => {
                validate::container_name(&name).map_err(invalid)?;
                validate::token(&token).map_err(invalid)?;
                self.start_container(name, token, privilege_level).await
            }
            TremplinRequest::SetUpUser { name, username } => {
                validate::container_name(&name).map_err(invalid)?;
                validate::user_name(&username).map_err(invalid)?;
                self.set_up_user(name, username).await
            }
            TremplinRequest::StopContainer { name } => {
                validate::container_name(&name).map_err(invalid)?;
                self.stop_container(name).await
            }
            TremplinRequest::DeleteContainer { name } => {
                validate::container_name(&name).map_err(invalid)?;
                self.delete_container(name).await
            }
            TremplinRequest::GetContainerInfo { name } => {
                validate::container_name(&name).map_err(invalid)?;
                self.container_info(name).await
            }
            TremplinRequest::ListContainers {} => self.list_containers().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_version_comes_from_lsb_release() {
        assert_eq!(
            image_version_from("CHROMEOS_RELEASE_CHROME_MILESTONE=120\nX=1\n"),
            "120"
        );
        assert_eq!(image_version_from(""), DEFAULT_IMAGE_VERSION);
        assert_eq!(
            image_version_from("CHROMEOS_RELEASE_CHROME_MILESTONE=../x"),
            DEFAULT_IMAGE_VERSION
        );
    }

    #[tokio::test]
    async fn requests_are_checked_before_lxd_is_needed() {
        let (events, _rx) = EventSender::channel();
        let t = Tremplin::new(Config::default(), events);
        let err = t
            .handle(TremplinRequest::StopContainer {
                name: "../etc".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, cros_messages::ErrorKind::InvalidArgument);
        assert!(err.message.contains("\"../etc\""), "{}", err.message);
        let err = t
            .handle(TremplinRequest::ListContainers {})
            .await
            .unwrap_err();
        assert!(err.message.contains("StartLxd first"), "{}", err.message);
    }
}
