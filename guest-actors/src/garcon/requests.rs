//! What garcon does for cicerone.

use std::process::{Command, Stdio};

use cros_messages::garcon::{GarconReply, GarconRequest};
use cros_messages::{Body, CrosError, ports};

use super::GarconConfig;

/// Answers one request body.
pub fn handle(config: &GarconConfig, garcon_port: u32, body: Body) -> Body {
    let result = match body {
        Body::Garcon(GarconRequest::LaunchVshd { port }) => launch_vshd(config, port),
        Body::Garcon(GarconRequest::GetDebugInformation {}) => Ok(GarconReply::DebugInformation {
            text: debug_information(garcon_port),
        }),
        Body::Garcon(GarconRequest::LaunchApplication { desktop_file_id }) => {
            Err(CrosError::unsupported(format!(
                "garcon cannot launch {desktop_file_id:?}: this host has no display integration"
            )))
        }
        other => Err(CrosError::invalid(format!(
            "garcon does not handle {}",
            other.type_name()
        ))),
    };
    match result {
        Ok(r) => Body::GarconReply(r),
        Err(e) => Body::Error(e),
    }
}

/// The container's name: LXD makes it the hostname.
fn container_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Starts vshd dialing the host's `port` (the host waits there for this one session); a
/// thread reaps it.
fn launch_vshd(config: &GarconConfig, port: u32) -> Result<GarconReply, CrosError> {
    if port == 0 {
        return Err(CrosError::invalid("LaunchVshd needs a host port"));
    }
    let mut cmd = Command::new(&config.vshd);
    cmd.arg("--connect")
        .arg(format!("vsock:{}:{port}", ports::HOST_CID))
        .arg("--target")
        .arg(container_name())
        .stdin(Stdio::null());
    if let Some(user) = super::container_user(&config.passwd) {
        cmd.arg("--default-user").arg(user);
    }
    let mut child = cmd.spawn().map_err(|e| {
        CrosError::unavailable(format!("cannot start {}: {e}", config.vshd.display()))
    })?;
    let pid = child.id();
    std::thread::spawn(move || child.wait());
    Ok(GarconReply::Launched { pid })
}

fn debug_information(garcon_port: u32) -> String {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let pretty = os
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("unknown")
        .trim_matches('"')
        .to_string();
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let ports = super::listening::listening_ports(std::path::Path::new("/proc/net"));
    format!(
        "container: {}\nos: {pretty}\ngarcon vsock port: {garcon_port}\nuptime: {} s\nlistening tcp ports: {ports:?}\n",
        container_name(),
        uptime.split_whitespace().next().unwrap_or("?"),
    )
}
