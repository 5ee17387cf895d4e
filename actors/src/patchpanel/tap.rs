//! The VMs' tap devices, made and removed with iproute2's `ip` (the same tool the tests and
//! termina use; a tap is three calls, not worth a netlink client of our own).
//!
//! A tap is persistent (it outlives the descriptor that made it, so the VMM's helper can attach
//! to it by name) and owned by nobody: only a process with CAP_NET_ADMIN, crosd's own helpers,
//! can attach. patchpanel removes it when its VM stops, and removes every `crosdtap*` left by a
//! crosd that was killed when the next one starts.

use super::pool::{ContainerSubnet, SUBNET_PREFIX, Subnet};
use std::process::Command;

/// Every tap crosd makes is named `crosdtap<index in the pool>` (at most 15 bytes, IFNAMSIZ).
pub const TAP_PREFIX: &str = "crosdtap";

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot run `ip` ({0}): install iproute2")]
    Spawn(std::io::Error),
    #[error("ip {args}: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("cannot list network interfaces in {NET_DEV}: {0}")]
    List(std::io::Error),
}

/// The calling thread's network namespace's interfaces. Not /sys/class/net: sysfs shows the
/// namespace of whoever mounted it, not the caller's (a test in its own namespace would see,
/// and remove, the host's).
const NET_DEV: &str = "/proc/thread-self/net/dev";

pub fn tap_name(subnet: &Subnet) -> String {
    format!("{TAP_PREFIX}{}", subnet.index)
}

fn ip(args: &[&str]) -> Result<(), TapError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(TapError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TapError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Makes `name` with the host's address of `subnet`, up. A tap of that name left behind is
/// replaced, so the VM starts on a clean device.
pub fn create(name: &str, subnet: &Subnet) -> Result<(), TapError> {
    if exists(name) {
        remove(name)?;
    }
    ip(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"])?;
    let addr = format!("{}/{SUBNET_PREFIX}", subnet.host());
    let configured = ip(&["addr", "add", &addr, "dev", name])
        .and_then(|()| ip(&["link", "set", "dev", name, "up"]));
    if let Err(e) = configured {
        // Half a tap helps nobody; the error that matters is the first one.
        let _ = remove(name);
        return Err(e);
    }
    Ok(())
}

/// Routes `containers` (the VM's lxdbr0 subnet) through the guest's address on tap `name`, so
/// the host reaches its containers by their own addresses (their names in the hosts file point
/// there). The route belongs to the tap: removing the tap removes it.
pub fn route_containers(
    name: &str,
    subnet: &Subnet,
    containers: &ContainerSubnet,
) -> Result<(), TapError> {
    let (to, via) = (containers.to_string(), subnet.guest().to_string());
    ip(&["route", "replace", &to, "via", &via, "dev", name])
}

pub fn remove(name: &str) -> Result<(), TapError> {
    ip(&["link", "delete", "dev", name])
}

pub fn exists(name: &str) -> bool {
    interfaces().is_ok_and(|names| names.iter().any(|n| n == name))
}

/// The interfaces of the calling thread's network namespace.
pub fn interfaces() -> Result<Vec<String>, TapError> {
    let text = std::fs::read_to_string(NET_DEV).map_err(TapError::List)?;
    Ok(interface_names(&text))
}

/// The names in a /proc/net/dev table (two header lines, then `NAME: counters…`).
fn interface_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|name| !name.is_empty() && !name.contains(' '))
        .collect()
}

/// The `crosdtap*` interfaces in this network namespace.
pub fn leftovers() -> Result<Vec<String>, TapError> {
    let mut names: Vec<String> = interfaces()?
        .into_iter()
        .filter(|n| n.starts_with(TAP_PREFIX))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_net_dev() {
        let text = "Inter-|   Receive                            |  Transmit\n \
                    face |bytes    packets errs drop|bytes    packets\n    \
                    lo: 1200 12 0 0 1200 12\ncrosdtap0:       0 0 0 0 0 0\n";
        assert_eq!(interface_names(text), ["lo", "crosdtap0"]);
    }
}
