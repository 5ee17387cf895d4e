//! StartContainer (the token device, the privilege level, start, heartbeats, garcon through
//! LXD's exec API), StopContainer, DeleteContainer, GetContainerInfo and ListContainers.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use cros_messages::CrosError;
use cros_messages::cicerone::{ContainerStatus, PrivilegeLevel};
use cros_messages::tremplin::{ContainerSummary, TremplinEvent, TremplinReply};
use hyper::Method;
use serde_json::{Value, json};

use super::validate;
use super::{Tremplin, lxd_error};

/// STARTING is repeated this often while a start runs (a remap can take minutes).
pub const HEARTBEAT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(900);
/// A clean stop gets this long before the container is killed.
const STOP_TIMEOUT_S: i64 = 30;
/// garcon inside every container, from the tools image the profile mounts there.
pub const GARCON: &str = "/opt/google/cros-containers/bin/garcon";

/// LXD's status text as a ContainerStatus.
pub fn lxd_status(status: &str) -> ContainerStatus {
    match status {
        "Running" | "Frozen" | "Freezing" | "Thawed" => ContainerStatus::Running,
        "Starting" => ContainerStatus::Starting,
        "Error" => ContainerStatus::Failed,
        // Stopped, Stopping, Aborting, Pending, anything newer.
        _ => ContainerStatus::Stopped,
    }
}

/// The IPv4 address of eth0 in an instance's state, or "".
pub fn eth0_ipv4(state: &Value) -> String {
    state
        .pointer("/network/eth0/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a.get("family").and_then(Value::as_str) == Some("inet"))
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .unwrap_or("")
        .to_string()
}

/// The instance config change a start makes: the token device and, unless Unchanged,
/// `security.privileged`.
pub fn start_patch(token_file: &str, level: PrivilegeLevel) -> Value {
    let mut patch = json!({
        "devices": {
            "container_token": {
                "type": "disk",
                "source": token_file,
                "path": "/dev/.container_token",
            }
        }
    });
    match level {
        PrivilegeLevel::Unchanged => {}
        PrivilegeLevel::Privileged => patch["config"] = json!({"security.privileged": "true"}),
        PrivilegeLevel::Unprivileged => patch["config"] = json!({"security.privileged": "false"}),
    }
    patch
}

/// The part of [`start_patch`] an instance does not already have (its own config and devices,
/// not the profile's), or `None` when a start needs no change: LXD's PATCH of an instance costs
/// about a second in the VM under emulation, and the token device is usually there from the
/// create ([`token_device`]).
pub fn start_patch_needed(
    instance: &Value,
    token_file: &str,
    level: PrivilegeLevel,
) -> Option<Value> {
    let patch = start_patch(token_file, level);
    let has_device =
        instance.pointer("/devices/container_token") == patch.pointer("/devices/container_token");
    let has_config = match patch.pointer("/config/security.privileged") {
        Some(want) => instance.pointer("/config/security.privileged") == Some(want),
        None => true,
    };
    (!has_device || !has_config).then_some(patch)
}

/// The token device alone, for an instance's create request.
pub fn token_device(token_file: &str) -> Value {
    start_patch(token_file, PrivilegeLevel::Unchanged)["devices"].clone()
}

/// REMAPPING when LXD will shift the container's files to a new id map on this start (slow),
/// else STARTING.
pub fn start_status(config: &Value) -> ContainerStatus {
    let key = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or("");
    let next = key("volatile.idmap.next");
    if !next.is_empty() && key("volatile.last_state.idmap") != next {
        ContainerStatus::Remapping
    } else {
        ContainerStatus::Starting
    }
}

impl Tremplin {
    async fn instance(&self, name: &str) -> Result<Value, CrosError> {
        self.lxd
            .get(&format!("/1.0/instances/{name}"))
            .await
            .map_err(|e| lxd_error(&format!("container {name}"), e))
    }

    /// Where container `name`'s token lives in the VM (the source of its token device).
    pub(super) fn token_file(&self, name: &str) -> std::path::PathBuf {
        self.config.tokens_dir.join(format!("{name}_token"))
    }

    pub(super) fn write_token(&self, name: &str, token: &str) -> Result<String, CrosError> {
        let dir = &self.config.tokens_dir;
        let io = |what: &str, e: std::io::Error| {
            CrosError::internal(format!("cannot {what} {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
        let file = self.token_file(name);
        std::fs::write(&file, token).map_err(|e| io("write a token in", e))?;
        // Readable in the container by garcon's user (the file maps to nobody there).
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io("set a token's mode in", e))?;
        Ok(file.display().to_string())
    }

    pub(super) async fn start_container(
        self: &Arc<Self>,
        name: String,
        token: String,
        level: PrivilegeLevel,
    ) -> Result<TremplinReply, CrosError> {
        self.require_lxd()?;
        let reply = |status, failure_reason: String| TremplinReply::ContainerStatus {
            name: name.clone(),
            status,
            failure_reason,
        };
        let inst = self.instance(&name).await?;
        if inst.get("status").and_then(Value::as_str) == Some("Running") {
            return Ok(reply(ContainerStatus::Running, String::new()));
        }
        if !self.begin("start", &name) {
            return Ok(reply(ContainerStatus::Starting, String::new()));
        }
        let started = self.begin_start(&name, &inst, &token, level).await;
        let (status, op) = match started {
            Ok(s) => s,
            Err(e) => {
                self.end("start", &name);
                return Ok(reply(ContainerStatus::Failed, e));
            }
        };
        let me = self.clone();
        let task_name = name.clone();
        tokio::spawn(async move {
            let result = me.finish_start(&task_name, &op, status).await;
            me.end("start", &task_name);
            let (status, failure_reason) = match result {
                Ok(()) => (ContainerStatus::Started, String::new()),
                Err(e) => {
                    eprintln!("tremplin: starting {task_name} failed: {e}");
                    (ContainerStatus::Failed, e)
                }
            };
            me.events.send(TremplinEvent::UpdateStartStatus {
                name: task_name,
                status,
                failure_reason,
            });
        });
        Ok(reply(status, String::new()))
    }

    /// Token, privilege, then the start operation; returns the status to report and the
    /// operation.
    async fn begin_start(
        &self,
        name: &str,
        inst: &Value,
        token: &str,
        level: PrivilegeLevel,
    ) -> Result<(ContainerStatus, String), String> {
        let token_file = self.write_token(name, token).map_err(|e| e.message)?;
        let patched;
        let inst = match start_patch_needed(inst, &token_file, level) {
            None => inst,
            Some(patch) => {
                self.lxd
                    .sync(
                        Method::PATCH,
                        &format!("/1.0/instances/{name}"),
                        Some(&patch),
                    )
                    .await
                    .map_err(|e| format!("configuring {name}: {e}"))?;
                // A change of privilege changes the id map LXD will start with.
                patched = self
                    .lxd
                    .get(&format!("/1.0/instances/{name}"))
                    .await
                    .map_err(|e| e.to_string())?;
                &patched
            }
        };
        let status = start_status(inst.get("config").unwrap_or(&Value::Null));
        let op = self
            .lxd
            .start_operation(
                Method::PUT,
                &format!("/1.0/instances/{name}/state"),
                Some(&json!({"action": "start", "timeout": -1})),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, op))
    }

    async fn finish_start(
        &self,
        name: &str,
        op: &str,
        status: ContainerStatus,
    ) -> Result<(), String> {
        let wait = self.lxd.wait_operation(op, START_TIMEOUT, |_| {});
        tokio::pin!(wait);
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        loop {
            tokio::select! {
                r = &mut wait => { r.map_err(|e| e.to_string())?; break; }
                _ = beat.tick() => self.events.send(TremplinEvent::UpdateStartStatus {
                    name: name.to_string(),
                    status,
                    failure_reason: String::new(),
                }),
            }
        }
        self.start_garcon(name).await;
        Ok(())
    }

    /// Starts garcon in the container through LXD's exec API, not waiting for it: so every
    /// container has one, whether its image starts garcon or not (a second garcon exits, the
    /// first holds its lock). garcon runs as root so that the vshd it spawns can switch to any
    /// user.
    async fn start_garcon(&self, name: &str) {
        if !self.config.garcon_host_path.exists() {
            eprintln!(
                "tremplin: {} is missing in the VM; not starting garcon in {name}",
                self.config.garcon_host_path.display()
            );
            return;
        }
        let req = json!({
            "command": [GARCON],
            "environment": {
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root",
            },
            "wait-for-websocket": false,
            "interactive": false,
            "record-output": false,
        });
        if let Err(e) = self
            .lxd
            .start_operation(
                Method::POST,
                &format!("/1.0/instances/{name}/exec"),
                Some(&req),
            )
            .await
        {
            eprintln!("tremplin: cannot start garcon in {name}: {e}");
        }
    }

    pub(super) async fn stop_container(&self, name: String) -> Result<TremplinReply, CrosError> {
        self.require_lxd()?;
        let inst = self.instance(&name).await?;
        let stopped = TremplinReply::ContainerStatus {
            name: name.clone(),
            status: ContainerStatus::Stopped,
            failure_reason: String::new(),
        };
        if inst.get("status").and_then(Value::as_str) == Some("Stopped") {
            return Ok(stopped);
        }
        let path = format!("/1.0/instances/{name}/state");
        let clean = json!({"action": "stop", "timeout": STOP_TIMEOUT_S});
        let r = self
            .lxd
            .run_operation(
                Method::PUT,
                &path,
                Some(&clean),
                Duration::from_secs(STOP_TIMEOUT_S as u64 + 30),
            )
            .await;
        if r.is_err() {
            // It did not shut down in time: kill it, as `lxc stop --force` would.
            let force = json!({"action": "stop", "force": true, "timeout": -1});
            self.lxd
                .run_operation(Method::PUT, &path, Some(&force), Duration::from_secs(60))
                .await
                .map_err(|e| lxd_error(&format!("stopping {name}"), e))?;
        }
        Ok(stopped)
    }

    pub(super) async fn delete_container(&self, name: String) -> Result<TremplinReply, CrosError> {
        self.require_lxd()?;
        if self.is_busy("create", &name) {
            return Err(CrosError::precondition(format!(
                "container {name} is being created; delete it once the create has ended"
            )));
        }
        self.instance(&name).await?;
        self.delete_instance(&name)
            .await
            .map_err(|e| lxd_error(&format!("deleting {name}"), e))?;
        let _ = std::fs::remove_file(self.config.tokens_dir.join(format!("{name}_token")));
        Ok(TremplinReply::ContainerStatus {
            name,
            status: ContainerStatus::Deleted,
            failure_reason: String::new(),
        })
    }

    pub(super) async fn container_info(&self, name: String) -> Result<TremplinReply, CrosError> {
        self.require_lxd()?;
        let state = self
            .lxd
            .get(&format!("/1.0/instances/{name}/state"))
            .await
            .map_err(|e| lxd_error(&format!("container {name}"), e))?;
        let status = lxd_status(state.get("status").and_then(Value::as_str).unwrap_or(""));
        Ok(TremplinReply::ContainerInfo {
            ipv4: eth0_ipv4(&state),
            name,
            status,
        })
    }

    pub(super) async fn list_containers(&self) -> Result<TremplinReply, CrosError> {
        self.require_lxd()?;
        let list = self
            .lxd
            .get("/1.0/instances?recursion=1")
            .await
            .map_err(|e| lxd_error("listing containers", e))?;
        let mut containers: Vec<ContainerSummary> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let name = i.get("name")?.as_str()?;
                if name.starts_with(validate::INPROGRESS_PREFIX) {
                    return None;
                }
                Some(ContainerSummary {
                    name: name.to_string(),
                    status: lxd_status(i.get("status").and_then(Value::as_str).unwrap_or("")),
                })
            })
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(TremplinReply::Containers { containers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_patches_only_what_the_instance_lacks() {
        let token = "/run/tokens/penguin_token";
        let made = json!({"config": {}, "devices": token_device(token)});
        assert_eq!(
            start_patch_needed(&made, token, PrivilegeLevel::Unchanged),
            None
        );
        // Another privilege level, or a container made without the device (by hand): patched.
        let patch = start_patch_needed(&made, token, PrivilegeLevel::Privileged).unwrap();
        assert_eq!(patch["config"]["security.privileged"], "true");
        let by_hand = json!({"config": {}, "devices": {}});
        assert!(start_patch_needed(&by_hand, token, PrivilegeLevel::Unchanged).is_some());
        let unprivileged =
            json!({"config": {"security.privileged": "false"}, "devices": token_device(token)});
        assert_eq!(
            start_patch_needed(&unprivileged, token, PrivilegeLevel::Unprivileged),
            None
        );
    }

    #[test]
    fn start_patch_follows_the_privilege_level() {
        let p = start_patch("/run/tokens/penguin_token", PrivilegeLevel::Unchanged);
        assert_eq!(
            p["devices"]["container_token"],
            json!({"type": "disk", "source": "/run/tokens/penguin_token", "path": "/dev/.container_token"})
        );
        assert!(p.get("config").is_none());
        let p = start_patch("/t", PrivilegeLevel::Privileged);
        assert_eq!(p["config"]["security.privileged"], "true");
        let p = start_patch("/t", PrivilegeLevel::Unprivileged);
        assert_eq!(p["config"]["security.privileged"], "false");
    }

    #[test]
    fn remapping_is_told_from_the_volatile_idmaps() {
        let same = json!({"volatile.idmap.next": "[a]", "volatile.last_state.idmap": "[a]"});
        assert_eq!(start_status(&same), ContainerStatus::Starting);
        let differ = json!({"volatile.idmap.next": "[b]", "volatile.last_state.idmap": "[]"});
        assert_eq!(start_status(&differ), ContainerStatus::Remapping);
        assert_eq!(start_status(&json!({})), ContainerStatus::Starting);
    }

    #[test]
    fn state_gives_status_and_eth0_s_ipv4() {
        let state = json!({
            "status": "Running",
            "network": {
                "eth0": {"addresses": [
                    {"family": "inet6", "address": "fe80::1"},
                    {"family": "inet", "address": "100.115.92.7"}
                ]},
                "lo": {"addresses": [{"family": "inet", "address": "127.0.0.1"}]}
            }
        });
        assert_eq!(eth0_ipv4(&state), "100.115.92.7");
        assert_eq!(eth0_ipv4(&json!({"network": null})), "");
        assert_eq!(lxd_status("Running"), ContainerStatus::Running);
        assert_eq!(lxd_status("Stopped"), ContainerStatus::Stopped);
        assert_eq!(lxd_status("Error"), ContainerStatus::Failed);
    }
}
