//! chunneld: a container's listening TCP ports forwarded to the host's localhost over vsock
//! (issue 14 item 4).
//!
//! cicerone tells chunneld which VMs run and which containers have a garcon to dial (the
//! `Notify*` requests, accepted only from cicerone), and relays garcon's listening ports;
//! clients (`vmc port-forward`) list, add and remove forwards of their own VMs.

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ChunneldRequest {
    /// VM `vm` runs, owned by `owner_uid`; its hybrid vsock socket is `vsock_socket`. Forgets
    /// whatever an earlier VM of that name had.
    NotifyVmStarted {
        vm: String,
        owner_uid: u32,
        vsock_socket: String,
    },
    /// The VM is gone: every forward of its containers closes.
    NotifyVmStopped { vm: String },
    /// The container's garcon is connected and serves ForwardPort on guest vsock `garcon_port`.
    NotifyContainerReady {
        vm: String,
        container: String,
        garcon_port: u32,
    },
    /// The container stopped or was deleted: its forwards close.
    NotifyContainerStopped { vm: String, container: String },
    /// What garcon reported: the container listens on exactly these TCP ports now.
    UpdateListeningPorts {
        vm: String,
        container: String,
        ports: Vec<u16>,
    },
    /// The forwards of VM `vm`, or of every VM the caller may see when `vm` is empty.
    ListForwards { vm: String },
    /// Forwards the container's `port` to 127.0.0.1:`host_port` (0: the same number), kept
    /// whatever garcon reports until removed.
    AddForward {
        vm: String,
        container: String,
        port: u16,
        host_port: u16,
    },
    /// Stops forwarding the container's `port` (automatic or manual).
    RemoveForward {
        vm: String,
        container: String,
        port: u16,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardState {
    /// Listening on these host addresses (`127.0.0.1:8080`, `[::1]:8080`).
    Listening { addrs: Vec<String> },
    /// The host port could not be bound (another program holds it): the bind error.
    Taken { reason: String },
}

/// One forwarded port, as `vmc port-forward list` shows it.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub vm: String,
    pub container: String,
    pub container_port: u16,
    pub host_port: u16,
    pub state: ForwardState,
    /// Added with AddForward (kept when garcon's list changes), not from garcon's list.
    pub manual: bool,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ChunneldReply {
    Ack {},
    Forwards {
        forwards: Vec<PortForward>,
    },
    /// The forward AddForward made (its state says whether the host port was free).
    Added {
        forward: PortForward,
    },
    Removed {
        forward: PortForward,
    },
}
