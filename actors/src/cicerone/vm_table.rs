//! What cicerone knows of each VM and its containers, and who may ask about them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cros_messages::addr::valid_name;
use cros_messages::{Addr, CrosError, ErrorKind};

use super::image_proxy::{AllowedServers, ImageProxy};
use crate::bridge::outbound::GuestActorBridge;
use crate::bus::BusHandle;
use crate::concierge::owner::is_admin;

/// A container cicerone has started (or seen start) in a VM.
#[derive(Default)]
pub struct Container {
    /// The token tremplin gave the container (`/dev/.container_token`); garcon's ContainerReady
    /// must carry it.
    pub token: String,
    pub username: String,
    pub homedir: String,
    /// `garcon@<vm>/<container>` on the bus, once its garcon reported.
    pub garcon: Option<actix::Addr<GuestActorBridge>>,
}

/// A VM concierge told cicerone about.
pub struct VmEntry {
    pub cid: u32,
    pub token: String,
    pub owner_uid: u32,
    /// The VM's hybrid vsock socket.
    pub vsock_socket: PathBuf,
    /// True once tremplin said TremplinReady.
    pub tremplin_ready: tokio::sync::watch::Sender<bool>,
    pub containers: BTreeMap<String, Container>,
    pub allowed_servers: AllowedServers,
    /// Listening while the VM runs (None in unit tests without a socket directory).
    pub _image_proxy: Option<ImageProxy>,
}

impl VmEntry {
    /// The container whose token is `token`.
    pub fn container_with_token(&self, token: &str) -> Option<&str> {
        // Tokens are long random strings: an empty one never matches.
        if token.is_empty() {
            return None;
        }
        self.containers
            .iter()
            .find(|(_, c)| c.token == token)
            .map(|(n, _)| n.as_str())
    }
}

/// May `from` manage the containers of a VM owned by `owner_uid`? Host actors may; a client only
/// for its own VMs (or as an administrator); guests never.
pub fn may_manage(bus: &BusHandle, from: &Addr, owner_uid: u32) -> bool {
    if from.vm.is_some() {
        return false;
    }
    if !from.is_client() {
        return true;
    }
    bus.clients()
        .peer(from)
        .is_some_and(|p| p.uid == owner_uid || is_admin(p.uid))
}

pub fn check_name(what: &str, name: &str) -> Result<(), CrosError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(CrosError::invalid(format!(
            "bad {what} name {name:?}: use 1-64 characters of [A-Za-z0-9._-]"
        )))
    }
}

pub fn no_such_vm(name: &str) -> CrosError {
    CrosError::not_found(format!("no VM named {name:?} is running"))
}

pub fn denied(what: &str, from: &Addr) -> CrosError {
    CrosError::new(
        ErrorKind::PermissionDenied,
        format!("{what} is not accepted from {from}"),
    )
}
