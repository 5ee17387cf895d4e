//! tremplin: containers inside the VM (vsock 8890; reports to host 7778).

pub use crate::cicerone::ContainerSummary;
use crate::cicerone::{ContainerStatus, PrivilegeLevel};
use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum TremplinRequest {
    StartLxd {},
    CreateContainer {
        name: String,
        #[serde(default)]
        image_server: String,
        #[serde(default)]
        image_alias: String,
        #[serde(default)]
        rootfs_path: String,
        #[serde(default)]
        metadata_path: String,
        /// Host vsock port that streams the image when it comes from two tarballs (0: none).
        /// The stream is `[u64 LE metadata_len][metadata][u64 LE rootfs_len][rootfs]`;
        /// `rootfs_path`/`metadata_path` then only name the files in messages.
        #[serde(default)]
        upload_port: u32,
    },
    StartContainer {
        name: String,
        token: String,
        #[serde(default)]
        privilege_level: PrivilegeLevel,
    },
    SetUpUser {
        name: String,
        username: String,
    },
    StopContainer {
        name: String,
    },
    DeleteContainer {
        name: String,
    },
    GetContainerInfo {
        name: String,
    },
    /// Every container LXD has (those being created are left out), with its status.
    ListContainers {},
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum TremplinReply {
    Ack {},
    ContainerStatus {
        name: String,
        status: ContainerStatus,
        failure_reason: String,
    },
    ContainerInfo {
        name: String,
        ipv4: String,
        status: ContainerStatus,
    },
    /// SetUpUser's answer: the user that uid 1000 has now (an existing uid 1000 keeps its
    /// name, so it may differ from the one asked for) and its home directory.
    UserSetUp {
        name: String,
        username: String,
        homedir: String,
    },
    Containers {
        containers: Vec<ContainerSummary>,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum TremplinEvent {
    TremplinReady {},
    UpdateCreateStatus {
        name: String,
        status: ContainerStatus,
        percent: u8,
        failure_reason: String,
    },
    UpdateStartStatus {
        name: String,
        status: ContainerStatus,
        failure_reason: String,
    },
    ContainerShutdown {
        name: String,
    },
}
