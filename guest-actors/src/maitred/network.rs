//! maitred's ConfigureNetwork: the guest side of patchpanel's /30, set statically (no DHCP) on
//! the VM's one network interface with `ip` (iproute2 or busybox's, whichever the image has),
//! and the host's name servers in /run/resolv.conf.

use super::services::{ServiceError, Services};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

pub const RESOLV_CONF: &str = "/run/resolv.conf";
const IP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("ConfigureNetwork: {what} {value:?} is not an IPv4 address")]
    BadAddress { what: &'static str, value: String },
    #[error("ConfigureNetwork: netmask {0} is not a contiguous prefix")]
    BadNetmask(Ipv4Addr),
    #[error("ConfigureNetwork: name server {0:?} is not an IP address")]
    BadNameServer(String),
    #[error("ConfigureNetwork: this VM has no network interface (only {0:?} in /sys/class/net)")]
    NoInterface(Vec<String>),
    #[error("ConfigureNetwork: cannot read /sys/class/net: {0}")]
    ListInterfaces(std::io::Error),
    #[error("ConfigureNetwork on {iface}: {source}")]
    Ip {
        iface: String,
        #[source]
        source: ServiceError,
    },
    #[error("ConfigureNetwork: cannot write {RESOLV_CONF}: {0}")]
    Resolv(std::io::Error),
}

/// What the host asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<IpAddr>,
}

impl Config {
    pub fn parse(
        address: &str,
        netmask: &str,
        gateway: &str,
        dns: &[String],
    ) -> Result<Self, NetworkError> {
        let v4 = |what, value: &str| {
            value
                .parse::<Ipv4Addr>()
                .map_err(|_| NetworkError::BadAddress {
                    what,
                    value: value.to_string(),
                })
        };
        let mask = v4("netmask", netmask)?;
        let bits = u32::from(mask);
        // Contiguous: the ones, then only zeros.
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(NetworkError::BadNetmask(mask));
        }
        let dns = dns
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| NetworkError::BadNameServer(s.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            address: v4("address", address)?,
            prefix: bits.leading_ones() as u8,
            gateway: v4("gateway", gateway)?,
            dns,
        })
    }

    /// The `ip` runs that set it on `iface`, in order.
    pub fn ip_commands(&self, iface: &str) -> Vec<Vec<String>> {
        let cidr = format!("{}/{}", self.address, self.prefix);
        [
            vec!["link", "set", "dev", iface, "up"],
            vec!["addr", "flush", "dev", iface],
            vec!["addr", "add", &cidr, "dev", iface],
            vec![
                "route",
                "replace",
                "default",
                "via",
                &self.gateway.to_string(),
                "dev",
                iface,
            ],
        ]
        .into_iter()
        .map(|args| {
            std::iter::once("ip")
                .chain(args)
                .map(str::to_string)
                .collect()
        })
        .collect()
    }

    pub fn resolv_conf(&self) -> String {
        let mut text = String::from("# written by maitred from the host's name servers\n");
        for server in &self.dns {
            text.push_str(&format!("nameserver {server}\n"));
        }
        text
    }
}

/// The VM's network interface: the first in /sys/class/net that is a device (not `lo`).
fn interface(sys_class_net: &Path) -> Result<String, NetworkError> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .map_err(NetworkError::ListInterfaces)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
        .iter()
        .find(|n| sys_class_net.join(n).join("device").exists())
        .cloned()
        .ok_or(NetworkError::NoInterface(names))
}

/// Applies `config` to the VM's interface; returns the interface's name.
pub fn configure(services: &Services, config: &Config) -> Result<String, NetworkError> {
    let iface = interface(Path::new("/sys/class/net"))?;
    for argv in config.ip_commands(&iface) {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        services
            .run(&argv, IP_TIMEOUT)
            .map_err(|source| NetworkError::Ip {
                iface: iface.clone(),
                source,
            })?;
    }
    std::fs::write(RESOLV_CONF, config.resolv_conf()).map_err(NetworkError::Resolv)?;
    Ok(iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slash30_becomes_ip_runs_and_a_resolv_conf() {
        let c = Config::parse(
            "100.115.92.2",
            "255.255.255.252",
            "100.115.92.1",
            &["192.0.2.53".into()],
        )
        .unwrap();
        assert_eq!(c.prefix, 30);
        let cmds: Vec<String> = c.ip_commands("eth0").iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            cmds,
            [
                "ip link set dev eth0 up",
                "ip addr flush dev eth0",
                "ip addr add 100.115.92.2/30 dev eth0",
                "ip route replace default via 100.115.92.1 dev eth0"
            ]
        );
        assert!(c.resolv_conf().ends_with("nameserver 192.0.2.53\n"));
    }

    #[test]
    fn bad_input_is_named() {
        let err = Config::parse("100.115.92.2", "255.0.255.0", "100.115.92.1", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ConfigureNetwork: netmask 255.0.255.0 is not a contiguous prefix"
        );
        let err = Config::parse("nope", "255.255.255.252", "100.115.92.1", &[]).unwrap_err();
        assert!(err.to_string().contains("address \"nope\""), "{err}");
        let err =
            Config::parse("10.0.0.2", "255.255.255.252", "10.0.0.1", &["x".into()]).unwrap_err();
        assert!(err.to_string().contains("\"x\""), "{err}");
    }

    #[test]
    fn the_interface_is_the_first_device() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lo")).unwrap();
        std::fs::create_dir_all(dir.path().join("eth0/device")).unwrap();
        assert_eq!(interface(dir.path()).unwrap(), "eth0");
        std::fs::remove_dir_all(dir.path().join("eth0")).unwrap();
        assert!(matches!(interface(dir.path()), Err(NetworkError::NoInterface(n)) if n == ["lo"]));
    }
}
