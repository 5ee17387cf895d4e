//! cicerone: containers in VMs (REFERENCE.md, "Cicerone").

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum CiceroneRequest {
    NotifyVmStarted {
        vm: String,
        cid: u32,
        token: String,
        pid: u32,
        /// The uid that owns the VM: only it (or an administrator) may manage its containers.
        #[serde(default)]
        owner_uid: u32,
        /// The VM's hybrid vsock socket: guest ports are reached through it, and the host ports
        /// a guest dials are `<it>_<port>`.
        #[serde(default)]
        vsock_socket: String,
    },
    NotifyVmStopping {
        vm: String,
    },
    NotifyVmStopped {
        vm: String,
        /// The token of NotifyVmStarted: a late notice about an earlier VM of the same name
        /// does not forget the one running now. Empty matches any.
        #[serde(default)]
        token: String,
    },
    StartLxd {
        vm: String,
    },
    CreateLxdContainer {
        vm: String,
        container: String,
        #[serde(default)]
        image_server: String,
        #[serde(default)]
        image_alias: String,
        #[serde(default)]
        rootfs_path: String,
        #[serde(default)]
        metadata_path: String,
    },
    SetUpLxdContainerUser {
        vm: String,
        container: String,
        username: String,
    },
    StartLxdContainer {
        vm: String,
        container: String,
        #[serde(default)]
        privilege_level: PrivilegeLevel,
    },
    StopLxdContainer {
        vm: String,
        container: String,
    },
    DeleteLxdContainer {
        vm: String,
        container: String,
    },
    ListRunningContainers {
        vm: String,
    },
    GetContainerInfo {
        vm: String,
        container: String,
    },
    /// Every container of the VM, running or not.
    ListContainers {
        vm: String,
    },
    /// Asks garcon in the container to start vshd that dials the host on `port`. With port 0
    /// crosd picks the port itself, accepts vshd's connection and relays it to the socket the
    /// client passed with the request, so a user reaches a container shell without access to
    /// crosd's run directory.
    LaunchVshd {
        vm: String,
        container: String,
        #[serde(default)]
        port: u32,
    },
    /// From garcon in a container (through the VM's bridge on host port 8889): the container is
    /// up; `token` is the one cicerone gave tremplin for it, `garcon_port` where garcon listens.
    ContainerReady {
        token: String,
        garcon_port: u32,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrivilegeLevel {
    #[default]
    Unchanged,
    Privileged,
    Unprivileged,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum ContainerStatus {
    Creating,
    /// LXD is downloading the image (UpdateCreateStatus carries the percent).
    Downloading,
    Exists,
    Created,
    Starting,
    Started,
    Running,
    Remapping,
    Stopped,
    Deleted,
    Failed,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum CiceroneReply {
    Ack {},
    ContainerStatus {
        container: String,
        status: ContainerStatus,
        failure_reason: String,
    },
    RunningContainers {
        containers: Vec<String>,
    },
    VshdLaunched {
        cid: u32,
    },
    ContainerInfo {
        container: String,
        status: ContainerStatus,
        ipv4: String,
    },
    UserSetUp {
        container: String,
        username: String,
        homedir: String,
    },
    Containers {
        containers: Vec<ContainerSummary>,
    },
}

/// One container in a list.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub name: String,
    pub status: ContainerStatus,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum CiceroneEvent {
    TremplinStarted {
        vm: String,
    },
    StartLxdProgress {
        vm: String,
        status: String,
    },
    LxdContainerDownloading {
        vm: String,
        container: String,
        percent: u8,
    },
    LxdContainerCreated {
        vm: String,
        container: String,
        status: ContainerStatus,
        failure_reason: String,
    },
    LxdContainerStarting {
        vm: String,
        container: String,
        status: ContainerStatus,
        failure_reason: String,
    },
    ContainerStarted {
        vm: String,
        container: String,
        username: String,
        homedir: String,
        ipv4: String,
    },
    ContainerShutdown {
        vm: String,
        container: String,
    },
    LxdContainerDeleted {
        vm: String,
        container: String,
    },
    LowDiskSpace {
        vm: String,
        free_bytes: u64,
    },
}
