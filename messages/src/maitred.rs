//! maitred: the guest's init, PID 1 (vsock 8888; REFERENCE.md "Maitred").

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum MaitredRequest {
    ConfigureNetwork {
        address: String,
        netmask: String,
        gateway: String,
        /// Name servers for the guest's /run/resolv.conf (the host's own).
        #[serde(default)]
        dns: Vec<String>,
    },
    Mount {
        source: String,
        target: String,
        fstype: String,
        #[serde(default)]
        flags: u64,
        #[serde(default)]
        options: String,
        #[serde(default)]
        create_target: bool,
        #[serde(default)]
        mkfs_if_needed: bool,
    },
    Mount9P {
        port: u32,
        target: String,
    },
    /// Mounts the stateful disk at /mnt/stateful (mkfs.btrfs if needed) and starts tremplin.
    StartTermina {
        #[serde(default)]
        stateful_device: String,
        #[serde(default)]
        start_tremplin: bool,
        /// lxdbr0's address with its prefix for tremplin (`100.115.93.1/28`, the VM's container
        /// subnet that the host routes to it); empty: tremplin's own default, unrouted.
        #[serde(default)]
        lxd_ipv4_subnet: String,
    },
    Shutdown {},
    LaunchProcess {
        argv: Vec<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
        #[serde(default)]
        respawn: bool,
        #[serde(default)]
        wait_for_exit: bool,
    },
    SetTime {
        secs: u64,
        nanos: u32,
    },
    SetTimezone {
        name: String,
    },
    GetKernelVersion {},
    ResizeFilesystem {
        size: u64,
    },
    GetResizeStatus {},
    GetAvailableSpace {},
    /// The smallest size the stateful filesystem can shrink to (btrfs min-dev-size).
    GetMinimumSize {},
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum MaitredReply {
    Ack {},
    KernelVersion {
        release: String,
        version: String,
    },
    ProcessLaunched {
        pid: u32,
        exit_code: Option<i32>,
    },
    TerminaStarted {
        /// True when the stateful filesystem needed `usebackuproot` (possible data loss).
        partial_data_loss: bool,
        free_bytes: u64,
    },
    ResizeStatus {
        resizing: bool,
        current_size: u64,
        target_size: u64,
    },
    AvailableSpace {
        bytes: u64,
    },
    MinimumSize {
        bytes: u64,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum MaitredEvent {
    /// Sent to the host's port 7777 once init is up.
    VmReady {},
}
