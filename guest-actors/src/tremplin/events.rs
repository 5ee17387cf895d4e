//! LXD's lifecycle events (websocket `/1.0/events?type=lifecycle`): a container that stopped
//! or shut down is reported to cicerone as ContainerShutdown, once per run.

use std::collections::HashSet;
use std::time::Duration;

use cros_messages::tremplin::TremplinEvent;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::host::EventSender;
use super::lxd_client::LxdClient;
use super::validate::INPROGRESS_PREFIX;

/// What a lifecycle event means for cicerone.
#[derive(Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Started(String),
    Stopped(String),
    Other,
}

/// Reads one event message: `{"type": "lifecycle", "metadata": {"action": "instance-stopped",
/// "source": "/1.0/instances/penguin", …}}`.
pub fn parse_event(text: &str) -> Lifecycle {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Lifecycle::Other;
    };
    if v.get("type").and_then(Value::as_str) != Some("lifecycle") {
        return Lifecycle::Other;
    }
    let meta = &v["metadata"];
    let action = meta.get("action").and_then(Value::as_str).unwrap_or("");
    let source = meta.get("source").and_then(Value::as_str).unwrap_or("");
    let Some(rest) = source.strip_prefix("/1.0/instances/") else {
        return Lifecycle::Other;
    };
    // `/1.0/instances/<name>` possibly with `?project=…`; snapshots and the like are deeper.
    let name = rest.split('?').next().unwrap_or("");
    if name.is_empty() || name.contains('/') || name.starts_with(INPROGRESS_PREFIX) {
        return Lifecycle::Other;
    }
    match action {
        "instance-started" => Lifecycle::Started(name.to_string()),
        "instance-stopped" | "instance-shutdown" => Lifecycle::Stopped(name.to_string()),
        _ => Lifecycle::Other,
    }
}

/// Turns a run of lifecycle events into ContainerShutdown events: LXD says both
/// instance-shutdown and instance-stopped for one clean stop, cicerone hears of it once.
#[derive(Debug, Default)]
pub struct ShutdownFilter {
    reported: HashSet<String>,
}

impl ShutdownFilter {
    pub fn feed(&mut self, ev: Lifecycle) -> Option<TremplinEvent> {
        match ev {
            Lifecycle::Started(name) => {
                self.reported.remove(&name);
                None
            }
            Lifecycle::Stopped(name) => self
                .reported
                .insert(name.clone())
                .then_some(TremplinEvent::ContainerShutdown { name }),
            Lifecycle::Other => None,
        }
    }
}

/// Follows LXD's event stream for as long as tremplin runs, reconnecting when LXD restarts.
pub async fn watch(lxd: LxdClient, events: EventSender) {
    let mut filter = ShutdownFilter::default();
    loop {
        match follow(&lxd, &events, &mut filter).await {
            Ok(()) => eprintln!("tremplin: LXD's event stream ended; reconnecting"),
            Err(e) => eprintln!("tremplin: LXD's event stream: {e}; reconnecting"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(
    lxd: &LxdClient,
    events: &EventSender,
    filter: &mut ShutdownFilter,
) -> Result<(), String> {
    let stream = lxd.connect().await.map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async("ws://lxd/1.0/events?type=lifecycle", stream)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(msg) = ws.next().await {
        let text = match msg.map_err(|e| e.to_string())? {
            Message::Text(t) => t.to_string(),
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::Close(_) => return Ok(()),
            _ => continue,
        };
        if let Some(ev) = filter.feed(parse_event(&text)) {
            events.send(ev);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, source: &str) -> String {
        serde_json::json!({"type": "lifecycle", "metadata": {"action": action, "source": source}})
            .to_string()
    }

    #[test]
    fn stop_events_become_one_container_shutdown_per_run() {
        let mut f = ShutdownFilter::default();
        let shutdown = |n: &str| Some(TremplinEvent::ContainerShutdown { name: n.into() });
        assert_eq!(
            f.feed(parse_event(&ev("instance-started", "/1.0/instances/p"))),
            None
        );
        assert_eq!(
            f.feed(parse_event(&ev("instance-shutdown", "/1.0/instances/p"))),
            shutdown("p")
        );
        assert_eq!(
            f.feed(parse_event(&ev("instance-stopped", "/1.0/instances/p"))),
            None
        );
        assert_eq!(
            f.feed(parse_event(&ev("instance-started", "/1.0/instances/p"))),
            None
        );
        assert_eq!(
            f.feed(parse_event(&ev(
                "instance-stopped",
                "/1.0/instances/p?project=default"
            ))),
            shutdown("p")
        );
    }

    #[test]
    fn other_events_are_ignored() {
        assert_eq!(parse_event("not json"), Lifecycle::Other);
        assert_eq!(
            parse_event(&ev(
                "instance-stopped",
                "/1.0/instances/crostini-inprogress-p"
            )),
            Lifecycle::Other
        );
        assert_eq!(
            parse_event(&ev(
                "instance-snapshot-created",
                "/1.0/instances/p/snapshots/s"
            )),
            Lifecycle::Other
        );
        assert_eq!(
            parse_event(&ev("instance-created", "/1.0/instances/p")),
            Lifecycle::Other
        );
        assert_eq!(
            parse_event(r#"{"type":"logging","metadata":{}}"#),
            Lifecycle::Other
        );
    }
}
