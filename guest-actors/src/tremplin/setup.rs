//! Crostini's LXD server set-up (REFERENCE.md, "Tremplin"), applied through the API and
//! idempotent: each object is created when missing and the default profile is rewritten whole,
//! so a second StartLxd, or a tremplin restarted over LXD state on disk, converges on the same.

use std::path::{Path, PathBuf};

use hyper::Method;
use serde_json::{Map, Value, json};

use super::lxd_client::{LxdClient, LxdError};

pub const POOL: &str = "default";
pub const BRIDGE: &str = "lxdbr0";
/// lxdbr0's address and subnet when the host names none (StartTermina's lxd_ipv4_subnet): the
/// first /28 of crosd's default container pool, as Crostini's LXD subnets are /28s (leases never
/// expire, as in Crostini). It must not overlap the VM's own /30 from the host's pool
/// (100.115.92.0/24): a bridge holding the gateway's address would make the gateway the VM.
pub const BRIDGE_ADDRESS: &str = "100.115.93.1/28";
/// The guest-local forwarder to the host's image proxy (see `forwarder`).
pub const PROXY_URL: &str = "http://127.0.0.1:3128";
pub const RAW_IDMAP: &str =
    "both 1000 1000\nboth 655360 655360\nboth 665357 665357\nboth 1001 1001";

/// The guest paths the default profile refers to.
#[derive(Debug, Clone)]
pub struct ProfilePaths {
    /// The tools image (garcon, vshd): /opt/google/cros-containers.
    pub tools: PathBuf,
    /// /mnt/external.
    pub external: PathBuf,
    /// /mnt/shared, which the host's 9P share is mounted on.
    pub shared: PathBuf,
    /// /dev, where fuse, tun and the char devices of the VM are.
    pub dev: PathBuf,
}

impl Default for ProfilePaths {
    fn default() -> Self {
        Self {
            tools: "/opt/google/cros-containers".into(),
            external: "/mnt/external".into(),
            shared: "/mnt/shared".into(),
            dev: "/dev".into(),
        }
    }
}

/// What of [`ProfilePaths`] exists now (read from the filesystem; the profile is built from it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    pub tools: bool,
    pub external: bool,
    pub shared: bool,
    pub fuse: bool,
    pub tun: bool,
    /// Char devices passed through by path (relative to /dev): kvm, wl0, dri/*, snd/*.
    pub char_devices: Vec<String>,
}

impl Present {
    pub fn probe(p: &ProfilePaths) -> Self {
        use std::os::unix::fs::FileTypeExt;
        let is_char = |path: &Path| {
            std::fs::metadata(path)
                .map(|m| m.file_type().is_char_device())
                .unwrap_or(false)
        };
        let mut char_devices = Vec::new();
        for name in ["kvm", "wl0"] {
            if is_char(&p.dev.join(name)) {
                char_devices.push(name.to_string());
            }
        }
        for dir in ["dri", "snd"] {
            if let Ok(rd) = std::fs::read_dir(p.dev.join(dir)) {
                let mut names: Vec<String> = rd
                    .flatten()
                    .filter(|e| e.file_type().map(|t| t.is_char_device()).unwrap_or(false))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .map(|n| format!("{dir}/{n}"))
                    .collect();
                names.sort();
                char_devices.extend(names);
            }
        }
        Self {
            tools: p.tools.is_dir(),
            external: p.external.is_dir(),
            shared: p.shared.is_dir(),
            fuse: is_char(&p.dev.join("fuse")),
            tun: is_char(&p.dev.join("net/tun")),
            char_devices,
        }
    }
}

/// LXD device names are `[A-Za-z0-9_-]`: `dri/card0` → `dri_card0`.
fn device_name(rel: &str) -> String {
    rel.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The default profile, as Crostini has it. A device whose source is missing now is marked
/// `required: false`, so containers still start (LXD adds it when it appears).
pub fn default_profile(p: &ProfilePaths, present: &Present) -> Value {
    let optional = |dev: &mut Value, there: bool| {
        if !there {
            dev["required"] = json!("false");
        }
    };
    let mut devices = Map::new();
    let mut tools = json!({
        "type": "disk",
        "source": p.tools.display().to_string(),
        "path": "/opt/google/cros-containers",
    });
    optional(&mut tools, present.tools);
    devices.insert("cros_containers".into(), tools);
    let mut external = json!({
        "type": "disk",
        "source": p.external.display().to_string(),
        "path": "/mnt/external",
    });
    optional(&mut external, present.external);
    devices.insert("external".into(), external);
    if present.shared {
        devices.insert(
            "shared".into(),
            json!({
                "type": "disk",
                "source": p.shared.display().to_string(),
                "path": "/mnt/chromeos",
            }),
        );
    }
    let mut fuse =
        json!({"type": "unix-char", "source": "/dev/fuse", "path": "/dev/fuse", "mode": "0666"});
    optional(&mut fuse, present.fuse);
    devices.insert("fuse".into(), fuse);
    let mut tun = json!({"type": "unix-char", "source": "/dev/net/tun", "path": "/dev/net/tun", "mode": "0666"});
    optional(&mut tun, present.tun);
    devices.insert("tun".into(), tun);
    for rel in &present.char_devices {
        let path = format!("/dev/{rel}");
        devices.insert(
            device_name(rel),
            json!({"type": "unix-char", "source": path, "path": path, "mode": "0666"}),
        );
    }
    devices.insert(
        "eth0".into(),
        json!({"type": "nic", "nictype": "bridged", "parent": BRIDGE, "name": "eth0"}),
    );
    devices.insert(
        "root".into(),
        json!({"type": "disk", "path": "/", "pool": POOL}),
    );
    json!({
        "description": "Crostini's default profile (set by tremplin)",
        "config": {
            "boot.autostart": "false",
            "boot.host_shutdown_timeout": "9",
            "security.nesting": "true",
            "raw.idmap": RAW_IDMAP,
        },
        "devices": Value::Object(devices),
    })
}

/// The server configuration tremplin sets.
pub fn server_config() -> Value {
    json!({
        "config": {
            "core.shutdown_timeout": "0",
            "core.proxy_http": PROXY_URL,
            "core.proxy_https": PROXY_URL,
        }
    })
}

pub fn pool_request(source: &Path) -> Value {
    json!({
        "name": POOL,
        "driver": "btrfs",
        "config": {"source": source.display().to_string()},
    })
}

/// Whether `s` is an IPv4 address with a prefix, as LXD's `ipv4.address` takes it.
pub fn is_bridge_address(s: &str) -> bool {
    s.split_once('/').is_some_and(|(addr, prefix)| {
        addr.parse::<std::net::Ipv4Addr>().is_ok()
            && prefix.parse::<u8>().is_ok_and(|p| (8..=30).contains(&p))
    })
}

pub fn network_request(bridge_address: &str) -> Value {
    json!({
        "name": BRIDGE,
        "type": "bridge",
        "config": {
            "ipv4.address": bridge_address,
            // LXD masquerades only when it picked the address itself; the host forwards and
            // NATs the VM's own address alone, so the containers go out as the VM.
            "ipv4.nat": "true",
            "ipv4.dhcp.expiry": "infinite",
            "ipv6.address": "none",
            "raw.dnsmasq": "resolv-file=/run/resolv.conf",
        },
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("LXD set-up, {step}: {source}")]
    Lxd {
        step: &'static str,
        source: LxdError,
    },
    #[error(
        "LXD set-up, storage pool: {path} exists and is not empty, but LXD has no pool '{POOL}'"
    )]
    PoolDirInUse { path: PathBuf },
}

/// Applies the whole set-up. `pool_source` is `$LXD_DIR/storage-pools/default`.
pub async fn apply(
    client: &LxdClient,
    pool_source: &Path,
    paths: &ProfilePaths,
    bridge_address: &str,
) -> Result<(), SetupError> {
    let step = |step| move |source| SetupError::Lxd { step, source };
    client
        .sync(Method::PATCH, "/1.0", Some(&server_config()))
        .await
        .map_err(step("server configuration"))?;

    match client.get(&format!("/1.0/storage-pools/{POOL}")).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            // LXD makes the pool's directory (a btrfs subvolume) itself and refuses one that
            // exists; an empty one left by a pool creation that died is removed first.
            if pool_source.exists() && std::fs::remove_dir(pool_source).is_err() {
                return Err(SetupError::PoolDirInUse {
                    path: pool_source.to_path_buf(),
                });
            }
            client
                .sync(
                    Method::POST,
                    "/1.0/storage-pools",
                    Some(&pool_request(pool_source)),
                )
                .await
                .map_err(step("creating storage pool 'default'"))?;
        }
        Err(e) => return Err(step("reading storage pool 'default'")(e)),
    }

    match client.get(&format!("/1.0/networks/{BRIDGE}")).await {
        Ok(net) => {
            // The stateful disk keeps lxdbr0 from an earlier boot, when the host may have given
            // this VM another subnet (or none): the route on the host points at today's.
            let config = |key: &str| net.get("config").and_then(|c| c.get(key)).cloned();
            let current = (config("ipv4.address"), config("ipv4.nat"));
            if current != (Some(json!(bridge_address)), Some(json!("true"))) {
                let patch = json!({"config": {"ipv4.address": bridge_address, "ipv4.nat": "true"}});
                client
                    .sync(
                        Method::PATCH,
                        &format!("/1.0/networks/{BRIDGE}"),
                        Some(&patch),
                    )
                    .await
                    .map_err(step("readdressing network lxdbr0"))?;
            }
        }
        Err(e) if e.is_not_found() => {
            client
                .sync(
                    Method::POST,
                    "/1.0/networks",
                    Some(&network_request(bridge_address)),
                )
                .await
                .map_err(step("creating network lxdbr0"))?;
        }
        Err(e) => return Err(step("reading network lxdbr0")(e)),
    }

    let profile = default_profile(paths, &Present::probe(paths));
    client
        .sync(Method::PUT, "/1.0/profiles/default", Some(&profile))
        .await
        .map_err(step("default profile"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_present() -> Present {
        Present {
            tools: true,
            external: true,
            shared: true,
            fuse: true,
            tun: true,
            char_devices: vec!["kvm".into(), "dri/card0".into()],
        }
    }

    #[test]
    fn the_default_profile_is_crostini_s() {
        let p = default_profile(&ProfilePaths::default(), &all_present());
        let c = &p["config"];
        assert_eq!(c["boot.autostart"], "false");
        assert_eq!(c["boot.host_shutdown_timeout"], "9");
        assert_eq!(c["security.nesting"], "true");
        assert_eq!(
            c["raw.idmap"].as_str().unwrap().lines().collect::<Vec<_>>(),
            [
                "both 1000 1000",
                "both 655360 655360",
                "both 665357 665357",
                "both 1001 1001"
            ]
        );
        let d = &p["devices"];
        assert_eq!(
            d["cros_containers"]["source"],
            "/opt/google/cros-containers"
        );
        assert_eq!(d["cros_containers"]["path"], "/opt/google/cros-containers");
        assert_eq!(d["external"]["path"], "/mnt/external");
        assert_eq!(d["shared"]["source"], "/mnt/shared");
        assert_eq!(d["shared"]["path"], "/mnt/chromeos");
        assert_eq!(d["fuse"]["type"], "unix-char");
        assert_eq!(d["fuse"]["mode"], "0666");
        assert_eq!(d["tun"]["path"], "/dev/net/tun");
        assert_eq!(d["eth0"]["parent"], "lxdbr0");
        assert_eq!(d["root"]["pool"], "default");
        assert_eq!(d["dri_card0"]["source"], "/dev/dri/card0");
        assert_eq!(d["kvm"]["path"], "/dev/kvm");
        // Everything present: nothing optional.
        assert!(
            d.as_object()
                .unwrap()
                .values()
                .all(|v| v.get("required").is_none())
        );
    }

    #[test]
    fn missing_sources_are_optional_and_shared_needs_its_mount() {
        let p = default_profile(&ProfilePaths::default(), &Present::default());
        let d = &p["devices"];
        assert!(d.get("shared").is_none());
        assert_eq!(d["fuse"]["required"], "false");
        assert_eq!(d["cros_containers"]["required"], "false");
        assert!(d["root"].get("required").is_none());
    }

    #[test]
    fn server_network_and_pool_requests() {
        let s = server_config();
        assert_eq!(s["config"]["core.shutdown_timeout"], "0");
        assert_eq!(s["config"]["core.proxy_https"], "http://127.0.0.1:3128");
        let n = network_request("100.115.93.17/28");
        assert_eq!(n["config"]["ipv4.address"], "100.115.93.17/28");
        assert_eq!(n["config"]["ipv4.nat"], "true");
        assert!(is_bridge_address(BRIDGE_ADDRESS));
        for bad in [
            "",
            "100.115.93.1",
            "100.115.93.1/31",
            "x/28",
            "100.115.93.1/28\n",
        ] {
            assert!(!is_bridge_address(bad), "{bad:?}");
        }
        assert_eq!(n["config"]["ipv4.dhcp.expiry"], "infinite");
        assert_eq!(n["config"]["ipv6.address"], "none");
        assert_eq!(n["config"]["raw.dnsmasq"], "resolv-file=/run/resolv.conf");
        let pool = pool_request(Path::new("/mnt/stateful/lxd/storage-pools/default"));
        assert_eq!(pool["driver"], "btrfs");
        assert_eq!(
            pool["config"]["source"],
            "/mnt/stateful/lxd/storage-pools/default"
        );
    }
}
