//! cicerone's requests: the VM table from concierge, container management through tremplin,
//! garcon's ContainerReady, and container shells.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use cros_messages::chunneld::ChunneldRequest;
use cros_messages::cicerone::{CiceroneReply, CiceroneRequest, ContainerStatus, PrivilegeLevel};
use cros_messages::garcon::{GarconReply, GarconRequest};
use cros_messages::tremplin::{TremplinReply, TremplinRequest};
use cros_messages::{Addr, Body, CrosError, ports};
use tokio::io::AsyncWriteExt;

use super::host_port::HostPort;
use super::image_proxy::{self, AllowedServers, ImageProxy};
use super::vm_table::{Container, VmEntry, check_name, denied, may_manage, no_such_vm};
use super::{Cicerone, DEFAULT_IMAGE_ALIAS, DEFAULT_IMAGE_SERVER, Reply, ready, reply};
use crate::bridge::outbound::GuestActorBridge;
use crate::bus::BusHandle;

/// How long a container's vshd has to dial back once garcon was asked to start it.
pub const VSHD_ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest has to pick up an image upload.
pub const UPLOAD_ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long reaching an image server may take before CreateLxdContainer says it is unreachable.
pub const SERVER_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// How long ContainerStarted waits for the container's DHCP lease on lxdbr0 before it goes out
/// without an address.
const ADDRESS_WAIT: Duration = Duration::from_secs(30);
const ADDRESS_POLL: Duration = Duration::from_millis(250);

/// The container's lxdbr0 address, as tremplin sees it in LXD's state; "" when it has none
/// within [`ADDRESS_WAIT`]. garcon reports ready as soon as the container runs, which is
/// often before its DHCP client (udhcpc, systemd-networkd) has a lease: asked once, the
/// address would usually be missing, and the host's names need it.
async fn container_address(bus: BusHandle, vm: String, name: String) -> String {
    let give_up = Instant::now() + ADDRESS_WAIT;
    loop {
        let req = TremplinRequest::GetContainerInfo { name: name.clone() };
        let asked = ask_tremplin(bus.clone(), vm.clone(), req, give_up).await;
        match asked {
            Ok(TremplinReply::ContainerInfo { ipv4, .. }) if !ipv4.is_empty() => return ipv4,
            // Not running any more, or tremplin gone: no address to wait for.
            Ok(TremplinReply::ContainerInfo { status, .. })
                if status != ContainerStatus::Running =>
            {
                return String::new();
            }
            Ok(_) if Instant::now() + ADDRESS_POLL < give_up => {
                tokio::time::sleep(ADDRESS_POLL).await
            }
            Ok(_) | Err(_) => return String::new(),
        }
    }
}

/// Asks `tremplin@<vm>` through the VM's bridge.
async fn ask_tremplin(
    bus: BusHandle,
    vm: String,
    req: TremplinRequest,
    deadline: Instant,
) -> Result<TremplinReply, CrosError> {
    let what = Body::Tremplin(req.clone()).type_name();
    match bus
        .request_with_deadline(
            &Cicerone::me(),
            &Addr::in_vm("tremplin", &vm),
            Body::Tremplin(req),
            left(deadline),
        )
        .await?
    {
        Body::TremplinReply(r) => Ok(r),
        other => Err(CrosError::internal(format!(
            "tremplin@{vm} answered {what} with {}",
            other.type_name()
        ))),
    }
}

/// A container status as cicerone's answer; a failure is an error, so a client prints LXD's
/// reason in one line.
fn status_reply(vm: &str, r: TremplinReply) -> Result<CiceroneReply, CrosError> {
    match r {
        TremplinReply::ContainerStatus {
            name,
            status: ContainerStatus::Failed,
            failure_reason,
        } => Err(CrosError::internal(format!(
            "container {name:?} in VM {vm:?}: {failure_reason}"
        ))),
        TremplinReply::ContainerStatus {
            name,
            status,
            failure_reason,
        } => Ok(CiceroneReply::ContainerStatus {
            container: name,
            status,
            failure_reason,
        }),
        TremplinReply::Ack {} => Ok(CiceroneReply::Ack {}),
        other => Err(CrosError::internal(format!(
            "tremplin@{vm} answered with {}",
            Body::TremplinReply(other).type_name()
        ))),
    }
}

/// Fails fast, in one line, when the image server cannot be reached from the host at all (as
/// the default server cannot on a machine without internet), instead of LXD's error chain
/// after its own timeouts.
async fn check_reachable(url: &str, host: &str, port: u16) -> Result<(), CrosError> {
    let unreachable = |why: String| {
        CrosError::unavailable(format!(
            "image server {url} is unreachable from this host ({host}:{port}: {why})"
        ))
    };
    match tokio::time::timeout(
        SERVER_CHECK_TIMEOUT,
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {SERVER_CHECK_TIMEOUT:?}"
        ))),
    }
}

/// The rootfs and metadata tarballs of a CreateLxdContainer: the files the client passed (in
/// that order), or for crosd's own callers the paths.
fn upload_files(
    files: Vec<OwnedFd>,
    rootfs: &str,
    metadata: &str,
    from: &Addr,
) -> Result<(File, File), CrosError> {
    for (what, p) in [("rootfs", rootfs), ("metadata", metadata)] {
        if !Path::new(p).is_absolute() {
            return Err(CrosError::invalid(format!(
                "{what} tarball {p:?} must be an absolute path"
            )));
        }
    }
    let (rootfs_file, metadata_file) = if files.is_empty() && !from.is_client() {
        let open = |p: &str| {
            File::open(p).map_err(|e| CrosError::not_found(format!("cannot open {p}: {e}")))
        };
        (open(rootfs)?, open(metadata)?)
    } else {
        let mut it = files.into_iter().map(File::from);
        match (it.next(), it.next(), it.next()) {
            (Some(r), Some(m), None) => (r, m),
            _ => {
                return Err(CrosError::invalid(
                    "CreateLxdContainer from tarballs needs the rootfs and metadata files passed \
                     with the request (vmc container does)",
                ));
            }
        }
    };
    for (f, p) in [(&rootfs_file, rootfs), (&metadata_file, metadata)] {
        let m = f
            .metadata()
            .map_err(|e| CrosError::invalid(format!("{p}: {e}")))?;
        if !m.is_file() {
            return Err(CrosError::invalid(format!("{p} is not a regular file")));
        }
    }
    Ok((rootfs_file, metadata_file))
}

/// Streams `[u64 LE len][metadata][u64 LE len][rootfs]` to the guest that dials `port`.
async fn serve_upload(
    port: HostPort,
    vm: String,
    rootfs: File,
    metadata: File,
) -> Result<(), CrosError> {
    let what = format!("image upload to VM {vm}");
    let mut s = port.accept(UPLOAD_ACCEPT_TIMEOUT, &what).await?;
    let io = |e: std::io::Error| CrosError::unavailable(format!("{what}: {e}"));
    for f in [metadata, rootfs] {
        let len = f.metadata().map_err(io)?.len();
        s.write_all(&len.to_le_bytes()).await.map_err(io)?;
        let mut f = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(f), len);
        let sent = tokio::io::copy(&mut f, &mut s).await.map_err(io)?;
        if sent != len {
            return Err(CrosError::unavailable(format!(
                "{what}: the file shrank while it was sent"
            )));
        }
    }
    s.shutdown().await.map_err(io)
}

/// Copies bytes between the container's vshd and the socket the client passed, both ways,
/// until both ends are done.
async fn relay_shell(guest: tokio::net::UnixStream, client: OwnedFd) {
    let client = std::os::unix::net::UnixStream::from(client);
    let client = match client
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(client))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "container shell: the client's socket is unusable");
            return;
        }
    };
    let (mut guest, mut client) = (guest, client);
    if let Err(e) = tokio::io::copy_bidirectional(&mut guest, &mut client).await {
        tracing::debug!(error = %e, "container shell relay ended");
    }
}

fn new_token() -> Result<String, CrosError> {
    crate::concierge::disk_op::new_uuid().map_err(|e| CrosError::internal(e.to_string()))
}

impl Cicerone {
    pub(super) fn handle_request(
        &mut self,
        ctx: &mut Context<Self>,
        from: Addr,
        req: CiceroneRequest,
        files: Vec<OwnedFd>,
        deadline: Instant,
    ) -> Reply {
        use CiceroneRequest as R;
        match req {
            R::NotifyVmStarted {
                vm,
                cid,
                token,
                owner_uid,
                vsock_socket,
                ..
            } => ready(reply(self.vm_started(
                &from,
                vm,
                cid,
                token,
                owner_uid,
                vsock_socket,
            ))),
            R::NotifyVmStopping { vm } => ready(reply(
                only_concierge(&from, "NotifyVmStopping")
                    .and_then(|()| self.vms.get(&vm).map(|_| ()).ok_or_else(|| no_such_vm(&vm)))
                    .map(|()| CiceroneReply::Ack {}),
            )),
            R::NotifyVmStopped { vm, token } => ready(reply(self.vm_stopped(&from, &vm, &token))),
            R::ContainerReady { token, garcon_port } => {
                ready(reply(self.container_ready(ctx, &from, &token, garcon_port)))
            }
            other => match self.managed(&from, &other) {
                Ok(()) => self.container_request(from, other, files, deadline),
                Err(e) => ready(Body::Error(e)),
            },
        }
    }

    /// Checks the VM and container names of a client's container request, that the VM runs and
    /// that `from` may manage it.
    fn managed(&self, from: &Addr, req: &CiceroneRequest) -> Result<(), CrosError> {
        use CiceroneRequest as R;
        let (vm, container) = match req {
            R::StartLxd { vm } | R::ListRunningContainers { vm } | R::ListContainers { vm } => {
                (vm, None)
            }
            R::CreateLxdContainer { vm, container, .. }
            | R::SetUpLxdContainerUser { vm, container, .. }
            | R::StartLxdContainer { vm, container, .. }
            | R::StopLxdContainer { vm, container }
            | R::DeleteLxdContainer { vm, container }
            | R::GetContainerInfo { vm, container }
            | R::LaunchVshd { vm, container, .. } => (vm, Some(container)),
            _ => return Err(CrosError::internal("not a container request")),
        };
        check_name("VM", vm)?;
        if let Some(c) = container {
            check_name("container", c)?;
        }
        let entry = self.vms.get(vm).ok_or_else(|| no_such_vm(vm))?;
        if !may_manage(&self.bus, from, entry.owner_uid) {
            // What a user may not manage answers as if it did not exist, as concierge does.
            return Err(no_such_vm(vm));
        }
        Ok(())
    }

    fn vm_started(
        &mut self,
        from: &Addr,
        vm: String,
        cid: u32,
        token: String,
        owner_uid: u32,
        vsock_socket: String,
    ) -> Result<CiceroneReply, CrosError> {
        only_concierge(from, "NotifyVmStarted")?;
        check_name("VM", &vm)?;
        self.forget_vm(&vm);
        let allowed_servers = AllowedServers::default();
        let (host, port) = image_proxy::server_host_port(DEFAULT_IMAGE_SERVER)?;
        allowed_servers.allow(&host, port);
        let vsock_socket = PathBuf::from(vsock_socket);
        let image_proxy = if vsock_socket.as_os_str().is_empty() {
            None
        } else {
            Some(ImageProxy::start(&vsock_socket, allowed_servers.clone())?)
        };
        let notify_chunneld = ChunneldRequest::NotifyVmStarted {
            vm: vm.clone(),
            owner_uid,
            vsock_socket: vsock_socket.to_string_lossy().into_owned(),
        };
        self.vms.insert(
            vm,
            VmEntry {
                cid,
                token,
                owner_uid,
                vsock_socket,
                tremplin_ready: tokio::sync::watch::channel(false).0,
                containers: BTreeMap::new(),
                allowed_servers,
                _image_proxy: image_proxy,
            },
        );
        self.tell_chunneld(notify_chunneld);
        Ok(CiceroneReply::Ack {})
    }

    fn vm_stopped(
        &mut self,
        from: &Addr,
        vm: &str,
        token: &str,
    ) -> Result<CiceroneReply, CrosError> {
        only_concierge(from, "NotifyVmStopped")?;
        let entry = self.vms.get(vm).ok_or_else(|| no_such_vm(vm))?;
        if token.is_empty() || entry.token == token {
            self.forget_vm(vm);
            self.tell_chunneld(ChunneldRequest::NotifyVmStopped { vm: vm.to_string() });
        }
        Ok(CiceroneReply::Ack {})
    }

    /// garcon of a container says it is up. The bridge on host port 8889 set `from` to
    /// `garcon@<vm>` for the VM the connection came from, so a token is only ever matched
    /// against that VM's containers: another VM's token is as wrong as a made-up one.
    fn container_ready(
        &mut self,
        ctx: &mut Context<Self>,
        from: &Addr,
        token: &str,
        garcon_port: u32,
    ) -> Result<CiceroneReply, CrosError> {
        let (Some(vm), None, "garcon") = (&from.vm, &from.container, from.actor.as_str()) else {
            return Err(denied("ContainerReady", from));
        };
        let entry = self.vms.get_mut(vm).ok_or_else(|| no_such_vm(vm))?;
        let Some(name) = entry.container_with_token(token).map(str::to_string) else {
            tracing::warn!(%from, "ContainerReady with a token no container of the VM has");
            return Err(denied("ContainerReady with this token", from));
        };
        if !(ports::GARCON_FIRST..=ports::GARCON_LAST).contains(&garcon_port) {
            return Err(CrosError::invalid(format!(
                "garcon port {garcon_port} is outside {}..={}",
                ports::GARCON_FIRST,
                ports::GARCON_LAST
            )));
        }
        let addr = Addr::in_container("garcon", vm, &name);
        let bridge = actix::Actor::start(GuestActorBridge::new(
            addr.clone(),
            entry.vsock_socket.clone(),
            garcon_port,
        ));
        self.bus.register(addr, bridge.clone().recipient());
        let container = entry.containers.get_mut(&name).ok_or_else(|| {
            CrosError::internal(format!("container {name} vanished from the table"))
        })?;
        container.garcon = Some(bridge);
        let (username, homedir) = (container.username.clone(), container.homedir.clone());
        self.tell_chunneld(ChunneldRequest::NotifyContainerReady {
            vm: vm.clone(),
            container: name.clone(),
            garcon_port,
        });
        tracing::info!(vm = %vm, container = %name, garcon_port, "container ready");

        // ContainerStarted carries the container's address: ask tremplin, then announce.
        let vm = vm.clone();
        let info = container_address(self.bus.clone(), vm.clone(), name.clone());
        ctx.spawn(info.into_actor(self).map(move |ipv4, act, _| {
            act.publish(cros_messages::cicerone::CiceroneEvent::ContainerStarted {
                vm,
                container: name,
                username,
                homedir,
                ipv4,
            });
        }));
        Ok(CiceroneReply::Ack {})
    }

    fn container_request(
        &mut self,
        from: Addr,
        req: CiceroneRequest,
        files: Vec<OwnedFd>,
        deadline: Instant,
    ) -> Reply {
        use CiceroneRequest as R;
        let bus = self.bus.clone();
        let req_kind = if matches!(req, R::ListRunningContainers { .. }) {
            Listing::Running
        } else {
            Listing::All
        };
        match req {
            R::StartLxd { vm } => {
                let Some(entry) = self.vms.get(&vm) else {
                    return ready(Body::Error(no_such_vm(&vm)));
                };
                let mut started = entry.tremplin_ready.subscribe();
                Box::pin(
                    async move {
                        let wait = started.wait_for(|ready| *ready);
                        if tokio::time::timeout(left(deadline), wait).await.is_err() {
                            return Err(CrosError::timeout(format!(
                                "tremplin in VM {vm:?} did not report (TremplinReady) in time: \
                                 is it part of the VM's image, and was the VM started with \
                                 start_termina?"
                            )));
                        }
                        let r =
                            ask_tremplin(bus, vm.clone(), TremplinRequest::StartLxd {}, deadline)
                                .await?;
                        status_reply(&vm, r).map(|_| CiceroneReply::Ack {})
                    }
                    .into_actor(self)
                    .map(|r, _, _| reply(r)),
                )
            }
            R::CreateLxdContainer {
                vm,
                container,
                image_server,
                image_alias,
                rootfs_path,
                metadata_path,
            } => self.create(
                from,
                vm,
                container,
                image_server,
                image_alias,
                rootfs_path,
                metadata_path,
                files,
                deadline,
            ),
            R::SetUpLxdContainerUser {
                vm,
                container,
                username,
            } => {
                if let Err(e) = check_username(&username) {
                    return ready(Body::Error(e));
                }
                let req = TremplinRequest::SetUpUser {
                    name: container.clone(),
                    username,
                };
                self.via_tremplin(vm, req, deadline, move |act, vm, r| match r {
                    TremplinReply::UserSetUp {
                        username, homedir, ..
                    } => {
                        if let Some(c) = act.container_entry(vm, &container) {
                            c.username = username.clone();
                            c.homedir = homedir.clone();
                        }
                        Ok(CiceroneReply::UserSetUp {
                            container,
                            username,
                            homedir,
                        })
                    }
                    other => status_reply(vm, other),
                })
            }
            R::StartLxdContainer {
                vm,
                container,
                privilege_level,
            } => self.start(vm, container, privilege_level, deadline),
            R::StopLxdContainer { vm, container } => {
                let req = TremplinRequest::StopContainer { name: container };
                self.via_tremplin(vm, req, deadline, |_, vm, r| status_reply(vm, r))
            }
            R::DeleteLxdContainer { vm, container } => {
                let req = TremplinRequest::DeleteContainer {
                    name: container.clone(),
                };
                self.via_tremplin(vm, req, deadline, move |act, vm, r| {
                    let r = status_reply(vm, r)?;
                    act.container_deleted(vm, &container);
                    Ok(r)
                })
            }
            R::ListRunningContainers { vm } | R::ListContainers { vm } => {
                let running_only = matches!(req_kind, Listing::Running);
                let req = TremplinRequest::ListContainers {};
                self.via_tremplin(vm, req, deadline, move |_, vm, r| match r {
                    TremplinReply::Containers { containers } if running_only => {
                        Ok(CiceroneReply::RunningContainers {
                            containers: containers
                                .into_iter()
                                .filter(|c| c.status == ContainerStatus::Running)
                                .map(|c| c.name)
                                .collect(),
                        })
                    }
                    TremplinReply::Containers { containers } => {
                        Ok(CiceroneReply::Containers { containers })
                    }
                    other => status_reply(vm, other),
                })
            }
            R::GetContainerInfo { vm, container } => {
                let req = TremplinRequest::GetContainerInfo { name: container };
                self.via_tremplin(vm, req, deadline, |_, vm, r| match r {
                    TremplinReply::ContainerInfo { name, ipv4, status } => {
                        Ok(CiceroneReply::ContainerInfo {
                            container: name,
                            status,
                            ipv4,
                        })
                    }
                    other => status_reply(vm, other),
                })
            }
            R::LaunchVshd {
                vm,
                container,
                port,
            } => self.launch_vshd(vm, container, port, files),
            _ => ready(Body::Error(CrosError::internal("not a container request"))),
        }
    }

    /// Asks tremplin@`vm` and answers with what `answer` makes of its reply.
    fn via_tremplin(
        &mut self,
        vm: String,
        req: TremplinRequest,
        deadline: Instant,
        answer: impl FnOnce(&mut Self, &str, TremplinReply) -> Result<CiceroneReply, CrosError>
        + 'static,
    ) -> Reply {
        Box::pin(
            ask_tremplin(self.bus.clone(), vm.clone(), req, deadline)
                .into_actor(self)
                .map(move |r, act, _| reply(r.and_then(|r| answer(act, &vm, r)))),
        )
    }

    /// The table entry of a container of a running VM, made on first use; None when the VM
    /// stopped while a request about it was out.
    fn container_entry(&mut self, vm: &str, name: &str) -> Option<&mut Container> {
        let entry = self.vms.get_mut(vm)?;
        Some(entry.containers.entry(name.to_string()).or_default())
    }

    fn container_deleted(&mut self, vm: &str, name: &str) {
        if let Some(entry) = self.vms.get_mut(vm)
            && let Some(c) = entry.containers.remove(name)
            && c.garcon.is_some()
        {
            self.bus.unregister(&Addr::in_container("garcon", vm, name));
        }
        self.tell_chunneld(ChunneldRequest::NotifyContainerStopped {
            vm: vm.to_string(),
            container: name.to_string(),
        });
        self.publish(
            cros_messages::cicerone::CiceroneEvent::LxdContainerDeleted {
                vm: vm.to_string(),
                container: name.to_string(),
            },
        );
    }

    #[allow(clippy::too_many_arguments)] // One request's fields, passed on as they came.
    fn create(
        &mut self,
        from: Addr,
        vm: String,
        container: String,
        image_server: String,
        image_alias: String,
        rootfs_path: String,
        metadata_path: String,
        files: Vec<OwnedFd>,
        deadline: Instant,
    ) -> Reply {
        let Some(entry) = self.vms.get(&vm) else {
            return ready(Body::Error(no_such_vm(&vm)));
        };
        let bus = self.bus.clone();
        if !rootfs_path.is_empty() || !metadata_path.is_empty() {
            let (rootfs, metadata) = match upload_files(files, &rootfs_path, &metadata_path, &from)
            {
                Ok(f) => f,
                Err(e) => return ready(Body::Error(e)),
            };
            let port = match HostPort::listen(&entry.vsock_socket) {
                Ok(p) => p,
                Err(e) => return ready(Body::Error(e)),
            };
            let req = TremplinRequest::CreateContainer {
                name: container,
                image_server: String::new(),
                image_alias: String::new(),
                rootfs_path,
                metadata_path,
                upload_port: port.port,
            };
            // The upload runs beside the request: tremplin answers CREATING at once and reads
            // the stream while LXD imports it.
            let upload_vm = vm.clone();
            actix::spawn(async move {
                if let Err(e) = serve_upload(port, upload_vm.clone(), rootfs, metadata).await {
                    tracing::warn!(vm = %upload_vm, error = %e, "image upload failed");
                }
            });
            return self.via_tremplin(vm, req, deadline, |_, vm, r| status_reply(vm, r));
        }
        let server = if image_server.is_empty() {
            DEFAULT_IMAGE_SERVER.to_string()
        } else {
            image_server
        };
        let alias = if image_alias.is_empty() {
            DEFAULT_IMAGE_ALIAS.to_string()
        } else {
            image_alias
        };
        let (host, port) = match image_proxy::server_host_port(&server) {
            Ok(hp) => hp,
            Err(e) => return ready(Body::Error(e)),
        };
        // A user named this server for this VM: its proxy may reach it from now on.
        entry.allowed_servers.allow(&host, port);
        let name = container.clone();
        let req = TremplinRequest::CreateContainer {
            name: container,
            image_server: server.clone(),
            image_alias: alias,
            rootfs_path: String::new(),
            metadata_path: String::new(),
            upload_port: 0,
        };
        Box::pin(
            async move {
                // A container that exists needs no image: say so before the server matters.
                let info = TremplinRequest::GetContainerInfo { name: name.clone() };
                if let Ok(TremplinReply::ContainerInfo { .. }) =
                    ask_tremplin(bus.clone(), vm.clone(), info, deadline).await
                {
                    return Ok(CiceroneReply::ContainerStatus {
                        container: name,
                        status: ContainerStatus::Exists,
                        failure_reason: String::new(),
                    });
                }
                check_reachable(&server, &host, port).await?;
                let r = ask_tremplin(bus, vm.clone(), req, deadline).await?;
                status_reply(&vm, r)
            }
            .into_actor(self)
            .map(|r, _, _| reply(r)),
        )
    }

    fn start(
        &mut self,
        vm: String,
        container: String,
        privilege_level: PrivilegeLevel,
        deadline: Instant,
    ) -> Reply {
        // A container keeps its token while cicerone knows it: a running container's garcon
        // already has it.
        let known = self
            .vms
            .get(&vm)
            .and_then(|e| e.containers.get(&container))
            .map(|c| c.token.clone())
            .filter(|t| !t.is_empty());
        let token = match known.map(Ok).unwrap_or_else(new_token) {
            Ok(t) => t,
            Err(e) => return ready(Body::Error(e)),
        };
        match self.container_entry(&vm, &container) {
            Some(c) => c.token = token.clone(),
            None => return ready(Body::Error(no_such_vm(&vm))),
        }
        let req = TremplinRequest::StartContainer {
            name: container,
            token,
            privilege_level,
        };
        self.via_tremplin(vm, req, deadline, |_, vm, r| status_reply(vm, r))
    }

    /// A shell in a container: garcon starts vshd, which dials the host port. With `port` 0
    /// cicerone listens itself, accepts within [`VSHD_ACCEPT_TIMEOUT`] and relays to the
    /// socket the client passed; otherwise the caller listens on `port`.
    fn launch_vshd(
        &mut self,
        vm: String,
        container: String,
        port: u32,
        files: Vec<OwnedFd>,
    ) -> Reply {
        let Some(entry) = self.vms.get(&vm) else {
            return ready(Body::Error(no_such_vm(&vm)));
        };
        if entry
            .containers
            .get(&container)
            .is_none_or(|c| c.garcon.is_none())
        {
            return ready(Body::Error(CrosError::unavailable(format!(
                "container {container:?} in VM {vm:?} has no garcon connected: is it running? \
                 (vmc container {vm} {container} starts it)"
            ))));
        }
        let cid = entry.cid;
        let garcon = Addr::in_container("garcon", &vm, &container);
        let bus = self.bus.clone();
        let ask = move |port: u32| async move {
            match bus
                .request_with_deadline(
                    &Cicerone::me(),
                    &garcon,
                    Body::Garcon(GarconRequest::LaunchVshd { port }),
                    Duration::from_secs(10),
                )
                .await?
            {
                Body::GarconReply(GarconReply::Ack {} | GarconReply::Launched { .. }) => Ok(()),
                other => Err(CrosError::internal(format!(
                    "{garcon} answered LaunchVshd with {}",
                    other.type_name()
                ))),
            }
        };
        if port != 0 {
            return Box::pin(
                ask(port)
                    .into_actor(self)
                    .map(move |r, _, _| reply(r.map(|()| CiceroneReply::VshdLaunched { cid }))),
            );
        }
        let mut files = files.into_iter();
        let (Some(client), None) = (files.next(), files.next()) else {
            return ready(Body::Error(CrosError::invalid(
                "LaunchVshd with port 0 needs one socket passed with the request (the client's \
                 end of the shell)",
            )));
        };
        let listener = match HostPort::listen(&entry.vsock_socket) {
            Ok(l) => l,
            Err(e) => return ready(Body::Error(e)),
        };
        let what = format!("shell in container {container} of VM {vm}");
        Box::pin(
            async move {
                ask(listener.port).await?;
                let guest = listener.accept(VSHD_ACCEPT_TIMEOUT, &what).await?;
                actix::spawn(relay_shell(guest, client));
                Ok(CiceroneReply::VshdLaunched { cid })
            }
            .into_actor(self)
            .map(|r, _, _| reply(r)),
        )
    }
}

/// Which containers a list request wants.
enum Listing {
    Running,
    All,
}

/// Only concierge tells cicerone about VMs.
fn only_concierge(from: &Addr, what: &str) -> Result<(), CrosError> {
    if *from == Addr::host(cros_messages::ActorKind::Concierge.name()) {
        Ok(())
    } else {
        Err(CrosError::new(
            cros_messages::ErrorKind::PermissionDenied,
            format!("{what} is accepted only from concierge, not from {from}"),
        ))
    }
}

/// A user name for the container's uid 1000: what useradd takes (and nothing that could break
/// /etc/passwd).
fn check_username(name: &str) -> Result<(), CrosError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CrosError::invalid(format!(
            "bad user name {name:?}: 1-32 characters of [a-z0-9_-], starting with a letter or _"
        )))
    }
}
