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
    },
    NotifyVmStopping {
        vm: String,
    },
    NotifyVmStopped {
        vm: String,
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
    /// Asks garcon in the container to start vshd that dials the host on `port`.
    LaunchVshd {
        vm: String,
        container: String,
        port: u32,
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
