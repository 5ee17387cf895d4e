//! Actor addresses: `concierge`, `maitred@termina`, `garcon@termina/penguin`, `client-7`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest actor, VM or container name accepted in an address.
pub const MAX_NAME_LEN: usize = 64;

/// Names an actor and where it lives: on the host (`vm` and `container` empty), in a VM, or in a
/// container of a VM.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Addr {
    pub actor: String,
    pub vm: Option<String>,
    pub container: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad actor address {input:?}: {reason}")]
pub struct AddrParseError {
    pub input: String,
    pub reason: &'static str,
}

impl Addr {
    /// An actor on the host.
    pub fn host(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            vm: None,
            container: None,
        }
    }
    /// An actor inside VM `vm`.
    pub fn in_vm(actor: impl Into<String>, vm: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            vm: Some(vm.into()),
            container: None,
        }
    }
    /// An actor inside container `container` of VM `vm`.
    pub fn in_container(
        actor: impl Into<String>,
        vm: impl Into<String>,
        container: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            vm: Some(vm.into()),
            container: Some(container.into()),
        }
    }
    /// The address of connection `n` on crosd's control socket.
    pub fn client(n: u64) -> Self {
        Self::host(format!("client-{n}"))
    }
    /// True for addresses made by [`Addr::client`].
    pub fn is_client(&self) -> bool {
        self.vm.is_none() && self.actor.starts_with("client-")
    }
    /// The kind of actor this address names, if it is one crosd knows.
    pub fn kind(&self) -> Option<ActorKind> {
        ActorKind::from_str(&self.actor).ok()
    }
}

/// A name segment is non-empty, bounded, and made of `[A-Za-z0-9._-]` (so it never holds `/`,
/// `@` or whitespace and can be used as a path component once `.`/`..` are excluded).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.actor)?;
        if let Some(vm) = &self.vm {
            write!(f, "@{vm}")?;
            if let Some(c) = &self.container {
                write!(f, "/{c}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Addr {
    type Err = AddrParseError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddrParseError {
            input: input.to_string(),
            reason,
        };
        let (actor, place) = match input.split_once('@') {
            Some((a, p)) => (a, Some(p)),
            None => (input, None),
        };
        if !valid_name(actor) {
            return Err(err("actor name must be 1-64 characters of [A-Za-z0-9._-]"));
        }
        let (vm, container) = match place {
            None => (None, None),
            Some(p) => match p.split_once('/') {
                Some((vm, c)) => (Some(vm), Some(c)),
                None => (Some(p), None),
            },
        };
        if vm.is_some_and(|v| !valid_name(v)) {
            return Err(err("vm name must be 1-64 characters of [A-Za-z0-9._-]"));
        }
        if container.is_some_and(|c| !valid_name(c)) {
            return Err(err(
                "container name must be 1-64 characters of [A-Za-z0-9._-]",
            ));
        }
        Ok(Addr {
            actor: actor.to_string(),
            vm: vm.map(str::to_string),
            container: container.map(str::to_string),
        })
    }
}

/// Every kind of actor in the system, with its well-known name.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::EnumIter,
    strum::Display,
)]
#[strum(serialize_all = "snake_case")]
pub enum ActorKind {
    /// The bus itself: lists actors, subscribes to events.
    Bus,
    Imageloader,
    Concierge,
    Cicerone,
    Seneschal,
    VmlogForwarder,
    Maitred,
    Tremplin,
    Garcon,
    Crosvm,
    /// Appended so that the earlier kinds keep their postcard tags.
    Patchpanel,
    /// Port forwarding; appended as Patchpanel was.
    Chunneld,
}

impl ActorKind {
    /// The host actors crosd runs.
    pub const HOST: [ActorKind; 7] = [
        ActorKind::Imageloader,
        ActorKind::Concierge,
        ActorKind::Cicerone,
        ActorKind::Seneschal,
        ActorKind::VmlogForwarder,
        ActorKind::Patchpanel,
        ActorKind::Chunneld,
    ];

    pub fn name(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for s in [
            "concierge",
            "maitred@termina",
            "garcon@termina/penguin",
            "client-7",
        ] {
            let a: Addr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "garcon@termina/penguin".parse::<Addr>().unwrap(),
            Addr::in_container("garcon", "termina", "penguin")
        );
    }

    #[test]
    fn rejects_bad_names() {
        for s in [
            "",
            "@vm",
            "a@",
            "a@vm/",
            "a b",
            "../x",
            "a@..",
            "a@vm/c/d",
            &"x".repeat(65),
        ] {
            assert!(s.parse::<Addr>().is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn actor_kind_names() {
        assert_eq!(ActorKind::VmlogForwarder.name(), "vmlog_forwarder");
        assert_eq!(
            "concierge".parse::<ActorKind>().unwrap(),
            ActorKind::Concierge
        );
        assert!("nope".parse::<ActorKind>().is_err());
    }
}
