//! The [`Envelope`] every message travels in, its [`Body`], and the connection [`Hello`].

use crate::bus::{BusEvent, BusReply, BusRequest};
use crate::chunneld::{ChunneldReply, ChunneldRequest};
use crate::cicerone::{CiceroneEvent, CiceroneReply, CiceroneRequest};
use crate::concierge::{ConciergeEvent, ConciergeReply, ConciergeRequest};
use crate::crosvm::{CrosvmReply, CrosvmRequest};
use crate::garcon::{GarconEvent, GarconReply, GarconRequest};
use crate::imageloader::{ImageloaderReply, ImageloaderRequest};
use crate::maitred::{MaitredEvent, MaitredReply, MaitredRequest};
use crate::patchpanel::{PatchpanelReply, PatchpanelRequest};
use crate::seneschal::{SeneschalReply, SeneschalRequest};
use crate::tremplin::{TremplinEvent, TremplinReply, TremplinRequest};
use crate::vmlog::{VmlogReply, VmlogRequest};
use crate::{ActorKind, Addr, CrosError, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// First frame each side of every connection sends.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    /// Who is speaking.
    pub actor: Addr,
}

impl Hello {
    pub fn new(actor: Addr) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            actor,
        }
    }
}

/// A routed message.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version of the sender.
    pub v: u16,
    /// Unique per sender; replies name it in `reply_to`.
    pub id: u64,
    /// Correlates every envelope caused by one client request, across actors.
    pub trace: u64,
    pub from: Addr,
    pub to: Addr,
    /// Set on replies: the `id` of the request answered.
    pub reply_to: Option<u64>,
    pub body: Body,
}

impl Envelope {
    /// A new request or event (`reply_to` empty).
    pub fn new(id: u64, trace: u64, from: Addr, to: Addr, body: Body) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            trace,
            from,
            to,
            reply_to: None,
            body,
        }
    }

    /// The reply to `self`, sent back to its sender with the same trace id.
    pub fn reply(&self, id: u64, body: Body) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            trace: self.trace,
            from: self.to.clone(),
            to: self.from.clone(),
            reply_to: Some(self.id),
            body,
        }
    }
}

/// Whether a body asks, answers, or announces.
/// Slack added to a timeout a request carries itself (see [`Body::timeout`]).
pub const REQUEST_TIMEOUT_SLACK: Duration = Duration::from_secs(30);
/// REFERENCE.md's StopVm: maitred's Shutdown (30 s), the VMM's exit (10 s), the power button
/// (10 s), then SIGTERM and SIGKILL.
pub const STOP_VM_TIMEOUT: Duration = Duration::from_secs(70);
/// REFERENCE.md: StartTermina may take up to 150 s (mkfs, mount, grow).
pub const START_TERMINA_TIMEOUT: Duration = Duration::from_secs(150);
/// btrfs resizes move data around; under emulation that takes a while.
pub const RESIZE_FILESYSTEM_TIMEOUT: Duration = Duration::from_secs(600);
/// LXD's start (tremplin waits up to 2 minutes for it) and its set-up.
pub const START_LXD_TIMEOUT: Duration = Duration::from_secs(180);
/// Container requests LXD answers after real work (stop, delete, user set-up).
pub const CONTAINER_OP_TIMEOUT: Duration = Duration::from_secs(90);

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum BodyKind {
    Request,
    Reply,
    Event,
    Error,
}

/// Every message, one variant per actor and direction.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum Body {
    Bus(BusRequest),
    BusReply(BusReply),
    Imageloader(ImageloaderRequest),
    ImageloaderReply(ImageloaderReply),
    Concierge(ConciergeRequest),
    ConciergeReply(ConciergeReply),
    ConciergeEvent(ConciergeEvent),
    Cicerone(CiceroneRequest),
    CiceroneReply(CiceroneReply),
    CiceroneEvent(CiceroneEvent),
    Seneschal(SeneschalRequest),
    SeneschalReply(SeneschalReply),
    VmlogForwarder(VmlogRequest),
    VmlogReply(VmlogReply),
    Maitred(MaitredRequest),
    MaitredReply(MaitredReply),
    MaitredEvent(MaitredEvent),
    Tremplin(TremplinRequest),
    TremplinReply(TremplinReply),
    TremplinEvent(TremplinEvent),
    Garcon(GarconRequest),
    GarconReply(GarconReply),
    GarconEvent(GarconEvent),
    Crosvm(CrosvmRequest),
    CrosvmReply(CrosvmReply),
    Error(CrosError),
    /// After `Error` so that the postcard tags of the variants before it stay as they were.
    BusEvent(BusEvent),
    /// Appended (like `BusEvent`) so that every earlier variant keeps its postcard tag.
    Patchpanel(PatchpanelRequest),
    PatchpanelReply(PatchpanelReply),
    /// Appended (like `Patchpanel`) so that every earlier variant keeps its postcard tag.
    Chunneld(ChunneldRequest),
    ChunneldReply(ChunneldReply),
}

macro_rules! variant_name {
    ($self:expr, $($v:ident),*) => {
        match $self {
            $(Body::$v(inner) => <&'static str>::from(inner),)*
            Body::Error(e) => <&'static str>::from(e.kind),
        }
    };
}

impl Body {
    /// `Concierge`, `ConciergeReply`, …
    pub fn family(&self) -> &'static str {
        self.into()
    }

    /// The inner variant: `ListVms`, `VmStarted`, …
    pub fn variant(&self) -> &'static str {
        variant_name!(
            self,
            Bus,
            BusReply,
            BusEvent,
            Imageloader,
            ImageloaderReply,
            Concierge,
            ConciergeReply,
            ConciergeEvent,
            Cicerone,
            CiceroneReply,
            CiceroneEvent,
            Seneschal,
            SeneschalReply,
            VmlogForwarder,
            VmlogReply,
            Maitred,
            MaitredReply,
            MaitredEvent,
            Tremplin,
            TremplinReply,
            TremplinEvent,
            Garcon,
            GarconReply,
            GarconEvent,
            Crosvm,
            CrosvmReply,
            Patchpanel,
            PatchpanelReply,
            Chunneld,
            ChunneldReply
        )
    }

    /// Full message type name used in traces and logs, e.g. `Concierge::ListVms`.
    pub fn type_name(&self) -> String {
        format!("{}::{}", self.family(), self.variant())
    }

    pub fn kind(&self) -> BodyKind {
        match self {
            Body::Error(_) => BodyKind::Error,
            Body::BusEvent(_)
            | Body::ConciergeEvent(_)
            | Body::CiceroneEvent(_)
            | Body::MaitredEvent(_)
            | Body::TremplinEvent(_)
            | Body::GarconEvent(_) => BodyKind::Event,
            Body::BusReply(_)
            | Body::ImageloaderReply(_)
            | Body::ConciergeReply(_)
            | Body::CiceroneReply(_)
            | Body::SeneschalReply(_)
            | Body::VmlogReply(_)
            | Body::MaitredReply(_)
            | Body::TremplinReply(_)
            | Body::GarconReply(_)
            | Body::CrosvmReply(_)
            | Body::PatchpanelReply(_)
            | Body::ChunneldReply(_) => BodyKind::Reply,
            _ => BodyKind::Request,
        }
    }

    /// How long this request may take, when it says so itself: StartVm waits `timeout_secs`
    /// (plus slack, so concierge's own, more specific timeout error wins over a generic one),
    /// StartTermina as long as REFERENCE.md allows it, a guest filesystem resize up to ten
    /// minutes. `None`: the sender's default deadline. The bus, bridges and clients all ask here,
    /// so no caller special-cases a request.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Body::Concierge(ConciergeRequest::StartVm(start)) => {
                Some(Duration::from_secs(u64::from(start.timeout_secs)) + REQUEST_TIMEOUT_SLACK)
            }
            Body::Concierge(
                ConciergeRequest::StopVm { .. }
                | ConciergeRequest::StopAllVms {}
                | ConciergeRequest::DestroyDiskImage { .. },
            ) => Some(STOP_VM_TIMEOUT),
            Body::Maitred(MaitredRequest::StartTermina { .. }) => Some(START_TERMINA_TIMEOUT),
            Body::Maitred(MaitredRequest::ResizeFilesystem { .. }) => {
                Some(RESIZE_FILESYSTEM_TIMEOUT)
            }
            Body::Cicerone(CiceroneRequest::StartLxd { .. })
            | Body::Tremplin(TremplinRequest::StartLxd {}) => Some(START_LXD_TIMEOUT),
            Body::Cicerone(
                CiceroneRequest::StopLxdContainer { .. }
                | CiceroneRequest::DeleteLxdContainer { .. }
                | CiceroneRequest::SetUpLxdContainerUser { .. },
            )
            | Body::Tremplin(
                TremplinRequest::StopContainer { .. }
                | TremplinRequest::DeleteContainer { .. }
                | TremplinRequest::SetUpUser { .. },
            ) => Some(CONTAINER_OP_TIMEOUT),
            _ => None,
        }
    }

    /// The kind of actor a request body is addressed to.
    pub fn request_target(&self) -> Option<ActorKind> {
        Some(match self {
            Body::Bus(_) => ActorKind::Bus,
            Body::Imageloader(_) => ActorKind::Imageloader,
            Body::Concierge(_) => ActorKind::Concierge,
            Body::Cicerone(_) => ActorKind::Cicerone,
            Body::Seneschal(_) => ActorKind::Seneschal,
            Body::VmlogForwarder(_) => ActorKind::VmlogForwarder,
            Body::Maitred(_) => ActorKind::Maitred,
            Body::Tremplin(_) => ActorKind::Tremplin,
            Body::Garcon(_) => ActorKind::Garcon,
            Body::Crosvm(_) => ActorKind::Crosvm,
            Body::Patchpanel(_) => ActorKind::Patchpanel,
            Body::Chunneld(_) => ActorKind::Chunneld,
            _ => return None,
        })
    }

    /// Parses `json`, the actor's request enum in serde's externally tagged form
    /// (`{"GetVmInfo":{"name":"termina"}}`), into the request body for `actor`.
    pub fn request_from_json(actor: ActorKind, json: &str) -> Result<Body, serde_json::Error> {
        Ok(match actor {
            ActorKind::Bus => Body::Bus(serde_json::from_str(json)?),
            ActorKind::Imageloader => Body::Imageloader(serde_json::from_str(json)?),
            ActorKind::Concierge => Body::Concierge(serde_json::from_str(json)?),
            ActorKind::Cicerone => Body::Cicerone(serde_json::from_str(json)?),
            ActorKind::Seneschal => Body::Seneschal(serde_json::from_str(json)?),
            ActorKind::VmlogForwarder => Body::VmlogForwarder(serde_json::from_str(json)?),
            ActorKind::Maitred => Body::Maitred(serde_json::from_str(json)?),
            ActorKind::Tremplin => Body::Tremplin(serde_json::from_str(json)?),
            ActorKind::Garcon => Body::Garcon(serde_json::from_str(json)?),
            ActorKind::Crosvm => Body::Crosvm(serde_json::from_str(json)?),
            ActorKind::Patchpanel => Body::Patchpanel(serde_json::from_str(json)?),
            ActorKind::Chunneld => Body::Chunneld(serde_json::from_str(json)?),
        })
    }

    /// The body without its family wrapper, as JSON: what `crosmsg send` prints.
    pub fn inner_json(&self) -> serde_json::Value {
        let full = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        match full {
            serde_json::Value::Object(mut map) if map.len() == 1 => {
                map.remove(self.family()).unwrap_or(serde_json::Value::Null)
            }
            other => other,
        }
    }
}

impl From<CrosError> for Body {
    fn from(e: CrosError) -> Self {
        Body::Error(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::concierge::ConciergeRequest;

    #[test]
    fn type_names() {
        let b = Body::Concierge(ConciergeRequest::ListVms {});
        assert_eq!(b.type_name(), "Concierge::ListVms");
        assert_eq!(b.kind(), BodyKind::Request);
        assert_eq!(
            Body::Error(CrosError::not_found("x")).type_name(),
            "Error::NotFound"
        );
    }

    #[test]
    fn json_requests_parse_per_actor() {
        let b =
            Body::request_from_json(ActorKind::Concierge, r#"{"GetVmInfo":{"name":"termina"}}"#)
                .unwrap();
        assert_eq!(
            b,
            Body::Concierge(ConciergeRequest::GetVmInfo {
                name: "termina".into(),
                owner_id: String::new()
            })
        );
        let err = Body::request_from_json(ActorKind::Concierge, r#"{"Nope":{}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn inner_json_strips_family() {
        let b = Body::Concierge(ConciergeRequest::ListVms {});
        assert_eq!(b.inner_json(), serde_json::json!({"ListVms": {}}));
    }
}
