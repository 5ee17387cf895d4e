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
        /// Non-zero: the image comes as a stream on this host port instead (rootfs + metadata
        /// tarballs the user named on the host): `[u64 LE metadata length][metadata][u64 LE
        /// rootfs length][rootfs]`.
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
    /// SetUpUser's answer: the user uid 1000 has (an existing one keeps its name).
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
