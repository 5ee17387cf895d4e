//! `crosimg build-container KIND --out DIR`: a container image in LXD's split format
//! (lxd.tar.xz with metadata.yaml and templates, plus rootfs.squashfs or root.tar.xz) put into
//! the simplestreams tree DIR (see simplestreams.rs).
//!
//! Kinds:
//! - `busybox`: the host's static busybox with busybox init; builds in seconds; no systemd, no
//!   garcon (tremplin starts garcon itself in containers whose image has none).
//! - `debian`: mmdebstrap minbase plus systemd, udev, networkd and what a Crostini penguin has
//!   from the archive, with garcon started by a systemd unit as cros-container-guest-tools
//!   does. The mmdebstrap output is cached (rootfs.rs, as termina's userland is).
//!
//! Everything is built in DIR/.build-XXXX (removed on any failure) and renamed into place;
//! the catalogue is rewritten last, so DIR never holds half an image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::rootfs::{self, Recipe};
use super::simplestreams::{self, ProductInfo, RootfsFormat, SplitHashes};
use super::staging::Staging;
use super::{ImageError, io_err, run_tool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A seconds-to-build test image: static busybox, busybox init, DHCP with udhcpc.
    Busybox,
    /// Debian (mmdebstrap minbase) with systemd and garcon, like Crostini's penguin.
    Debian,
}

pub struct BuildOptions {
    pub kind: Kind,
    /// The simplestreams tree to add the image to (made if missing).
    pub out: PathBuf,
    /// Debian release (suite); `debian` only.
    pub release: String,
    pub rootfs_format: RootfsFormat,
    /// The version name; default: the build time as YYYYMMDD_HHMM (UTC), which LXD parses.
    pub serial: Option<String>,
    /// Versions of the product kept in the tree, this one included.
    pub keep: usize,
    /// Static busybox for the `busybox` kind.
    pub busybox: PathBuf,
    /// Debian archive for the `debian` kind.
    pub mirror: String,
}

/// What a build put where.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub product: String,
    pub serial: String,
    pub aliases: Vec<String>,
    /// The version directory in the tree.
    pub dir: PathBuf,
    pub fingerprint: String,
    pub metadata_size: u64,
    pub rootfs_size: u64,
}

/// Where garcon's unit starts it from: the tools image LXD's default profile mounts there.
pub const GARCON: &str = "/opt/google/cros-containers/bin/garcon";
/// The container token tremplin adds as a disk device; garcon reads it.
pub const CONTAINER_TOKEN: &str = "/dev/.container_token";

fn progress(msg: &str) {
    eprintln!("crosimg: {msg}");
}

/// UTC civil time of a Unix time: (year, month, day, hour, minute, second). Howard Hinnant's
/// days-to-civil algorithm.
fn utc(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

/// The serial LXD reads as a creation time (layout 20060102_1504; at least 8 characters or
/// LXD skips the version).
pub fn serial_for(secs: u64) -> String {
    let (y, mo, d, h, mi, _) = utc(secs);
    format!("{y:04}{mo:02}{d:02}_{h:02}{mi:02}")
}

fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn valid_serial(s: &str) -> bool {
    s.len() >= 8
        && s[..8].bytes().all(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn valid_release(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

/// metadata.yaml of an LXD image.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Metadata {
    pub architecture: String,
    pub creation_date: u64,
    pub properties: BTreeMap<String, String>,
    pub templates: BTreeMap<String, Template>,
}

/// A file LXD renders from templates/<template> (pongo2) when the instance is made.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Template {
    pub when: Vec<String>,
    #[serde(default)]
    pub create_only: bool,
    pub template: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

const HOSTNAME_TPL: &str = "{{ container.name }}\n";
const HOSTS_TPL: &str = "127.0.0.1\tlocalhost\n127.0.1.1\t{{ container.name }}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// Writes metadata.yaml and templates/ into `dir` and packs them as `tarball` (lxd.tar.xz).
fn metadata_tarball(
    dir: &Path,
    tarball: &Path,
    info: &ProductInfo,
    serial: &str,
    description: &str,
    created: u64,
) -> Result<(), ImageError> {
    let when = || vec!["create".to_string(), "copy".to_string()];
    let template = |name: &str| Template {
        when: when(),
        create_only: false,
        template: name.to_string(),
        properties: BTreeMap::new(),
    };
    let metadata = Metadata {
        architecture: "x86_64".into(),
        creation_date: created,
        properties: BTreeMap::from([
            ("architecture".into(), simplestreams::ARCH.into()),
            ("description".into(), description.into()),
            ("os".into(), info.os.clone()),
            ("release".into(), info.release.clone()),
            ("variant".into(), info.variant.clone()),
            ("serial".into(), serial.into()),
        ]),
        templates: BTreeMap::from([
            ("/etc/hostname".into(), template("hostname.tpl")),
            ("/etc/hosts".into(), template("hosts.tpl")),
        ]),
    };
    // Written as JSON, which is YAML too, with every string quoted: a YAML 1.1 reader (LXD's
    // yaml.v2) takes a bare 20261202_1347 or 12 for an integer.
    let mut yaml = serde_json::to_string_pretty(&metadata)
        .map_err(|e| ImageError::Invalid(format!("encoding metadata.yaml: {e}")))?;
    yaml.push('\n');
    let st = Staging::new(dir.to_path_buf())?;
    st.file("metadata.yaml", yaml.as_bytes(), 0o644)?;
    st.file("templates/hostname.tpl", HOSTNAME_TPL.as_bytes(), 0o644)?;
    st.file("templates/hosts.tpl", HOSTS_TPL.as_bytes(), 0o644)?;
    run_tool(
        Command::new("tar")
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--sort=name",
                "-cJf",
            ])
            .arg(tarball)
            .arg("-C")
            .arg(dir)
            .args(["metadata.yaml", "templates"]),
    )?;
    Ok(())
}

/// Packs the root filesystem tree. `all_root`: make every file root's (the busybox tree is
/// staged by whoever runs crosimg; a Debian tree from mmdebstrap has its real owners).
fn pack_rootfs(
    tree: &Path,
    out: &Path,
    format: RootfsFormat,
    all_root: bool,
) -> Result<(), ImageError> {
    match format {
        RootfsFormat::Squashfs => {
            // zstd level 3: the Debian tree packs in 3 s (level 15, mksquashfs's default, takes
            // 2 minutes for 12% less; gzip 80 s) and unpacks fast under TCG. LXD unpacks it
            // with the guest's unsquashfs (squashfs-tools 4.5 reads zstd).
            let mut cmd = Command::new("mksquashfs");
            cmd.arg(tree).arg(out).args([
                "-noappend",
                "-no-progress",
                "-quiet",
                "-comp",
                "zstd",
                "-Xcompression-level",
                "3",
            ]);
            if all_root {
                cmd.arg("-all-root");
            }
            run_tool(&mut cmd)?;
        }
        RootfsFormat::TarXz => {
            // The split format's rootfs tarball holds the filesystem at its top level.
            let mut cmd = Command::new("tar");
            cmd.args(["--numeric-owner", "--xattrs", "--sort=name", "-I", "xz -T0"]);
            if all_root {
                cmd.args(["--owner=0", "--group=0"]);
            }
            cmd.arg("-cf").arg(out).arg("-C").arg(tree).arg(".");
            run_tool(&mut cmd)?;
        }
    }
    Ok(())
}

/// The busybox version from its banner ("BusyBox v1.35.0 (Debian …) multi-call binary.").
fn busybox_version(busybox: &Path) -> Result<String, ImageError> {
    // `busybox` with no arguments prints the banner and exits 0 (1 on some builds).
    let out = Command::new(busybox)
        .output()
        .map_err(|source| ImageError::MissingTool {
            tool: busybox.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .filter(|v| valid_release(v))
        .map(str::to_string)
        .ok_or_else(|| {
            ImageError::Invalid(format!(
                "{}: no version in its banner; is it busybox?",
                busybox.display()
            ))
        })
}

const BUSYBOX_INITTAB: &str = "\
# busybox init (PID 1 of the container). LXD stops the container with SIGPWR, which busybox
# init takes as halt: it runs the shutdown lines, kills everything and exits.
::sysinit:/etc/init.d/rcS
::respawn:/etc/init.d/network
::shutdown:/bin/sync
";

const BUSYBOX_RCS: &str = "\
#!/bin/sh
# sysinit: LXD has mounted /proc, /sys and /dev and set the host name.
mkdir -p /run /tmp /var/log
chmod 1777 /tmp
ip link set lo up
";

const BUSYBOX_NETWORK: &str = "\
#!/bin/sh
# Respawned by init. Keeps a DHCP lease on eth0 (LXD's lxdbr0 runs a DHCP server) so that the
# container has an address; without eth0 it idles instead of being respawned in a loop.
if [ -e /sys/class/net/eth0 ]; then
    exec udhcpc -f -i eth0 -s /usr/share/udhcpc/default.script
fi
exec sleep 2147483647
";

const UDHCPC_SCRIPT: &str = "\
#!/bin/sh
# udhcpc's hook: applies the lease it got ($ip, $subnet, $router, $dns, $domain).
case \"$1\" in
deconfig)
    ifconfig \"$interface\" 0.0.0.0 up
    ;;
bound|renew)
    ifconfig \"$interface\" \"$ip\" netmask \"${subnet:-255.255.255.0}\" up
    if [ -n \"$router\" ]; then
        while route del default gw 0.0.0.0 dev \"$interface\" 2>/dev/null; do :; done
        for r in $router; do
            route add default gw \"$r\" dev \"$interface\"
            break
        done
    fi
    : > /etc/resolv.conf
    [ -n \"$domain\" ] && echo \"search $domain\" >> /etc/resolv.conf
    for d in $dns; do
        echo \"nameserver $d\" >> /etc/resolv.conf
    done
    ;;
esac
exit 0
";

/// The busybox container's root tree around bin/busybox and its applets.
fn busybox_tree(st: &Staging, version: &str) -> Result<(), ImageError> {
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "home",
        "mnt",
        "var/log",
        "usr/bin",
        "usr/sbin",
        "sbin",
        "opt/google/cros-containers",
    ] {
        st.dir(d)?;
    }
    // LXD starts /sbin/init.
    st.symlink("sbin/init", "/bin/busybox")?;
    st.file("etc/inittab", BUSYBOX_INITTAB.as_bytes(), 0o644)?;
    st.file("etc/init.d/rcS", BUSYBOX_RCS.as_bytes(), 0o755)?;
    st.file("etc/init.d/network", BUSYBOX_NETWORK.as_bytes(), 0o755)?;
    st.file(
        "usr/share/udhcpc/default.script",
        UDHCPC_SCRIPT.as_bytes(),
        0o755,
    )?;
    st.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    st.file("etc/group", b"root:x:0:\n", 0o644)?;
    st.file("etc/shells", b"/bin/sh\n", 0o644)?;
    st.file("etc/hostname", b"busybox\n", 0o644)?;
    st.file(
        "etc/os-release",
        format!(
            "NAME=\"BusyBox\"\nID=busybox\nVERSION_ID={version}\nPRETTY_NAME=\"BusyBox {version} (crosd test image)\"\n"
        )
        .as_bytes(),
        0o644,
    )?;
    std::fs::set_permissions(
        st.root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .map_err(io_err(&st.root.join("tmp")))?;
    std::fs::set_permissions(
        st.root.join("root"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(io_err(&st.root.join("root")))?;
    Ok(())
}

/// What the Debian image holds beyond minbase: systemd as init with udev (without udev
/// systemd-networkd never asks for DHCP in an LXD container), networkd + resolved for eth0,
/// dbus and logind's PAM module (user sessions, lingering), and what a Crostini penguin has
/// that the archive holds (cros-container-guest-tools' debian.yaml and cros-guest-tools'
/// recommends: sudo, iproute2, ping, less, locales, vim, bash-completion, …). No man-db: its
/// triggers cost much build time for little use here.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "libpam-systemd",
    "sudo",
    "iproute2",
    "iputils-ping",
    "netbase",
    "ca-certificates",
    "curl",
    "openssh-client",
    "locales",
    "bash-completion",
    "less",
    "nano",
    "vim-tiny",
    "procps",
    "apt-utils",
    "whiptail",
    "cpio",
];

/// Run in the finished chroot by mmdebstrap (`$1` is its root): enable networkd (with its
/// socket and alias, per its [Install] section) and build the en_US.UTF-8 locale as Crostini's
/// image does.
pub const DEBIAN_CUSTOMIZE_HOOKS: &[&str] = &[
    r#"chroot "$1" systemctl enable systemd-networkd.service"#,
    r#"echo 'en_US.UTF-8 UTF-8' > "$1/etc/locale.gen" && chroot "$1" locale-gen && chroot "$1" update-locale LANG=en_US.UTF-8"#,
];

/// The Debian image's userland: mmdebstrap minbase of `release` from `mirror` plus
/// [`DEBIAN_PACKAGES`], cached as termina's is.
pub fn debian_recipe<'a>(release: &'a str, mirror: &'a str) -> Recipe<'a> {
    Recipe {
        name: "debian",
        suite: release,
        variant: "minbase",
        mirror,
        packages: DEBIAN_PACKAGES,
        hook_dirs: &[],
        customize_hooks: DEBIAN_CUSTOMIZE_HOOKS,
        exclude_docs: false,
    }
}

/// systemd-networkd configuration: DHCP on eth0 (lxdbr0's dnsmasq answers). networkd itself
/// is enabled in the cached userland ([`DEBIAN_CUSTOMIZE_HOOKS`]).
const ETH0_NETWORK: &str = "\
[Match]
Name=eth0

[Network]
DHCP=yes
";

/// garcon as a system unit, not a user unit as Crostini's cros-garcon.service is: it must run
/// before any user exists (SetUpUser may come later, or never for `lxc launch`), and as root so
/// that the vshd it spawns can become whichever user `vsh --user` names. It runs only in a
/// container tremplin started (the token is there) with the tools image mounted; it is the same
/// program tremplin would start through LXD's exec API in images without this unit.
fn garcon_unit() -> String {
    format!(
        "\
[Unit]
Description=crosd garcon: reports this container to cicerone and serves its requests
ConditionPathExists={CONTAINER_TOKEN}
ConditionPathExists={GARCON}

[Service]
Type=simple
ExecStart={GARCON}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"
    )
}

/// Crostini's cros-sudo-config: the sudo group needs no password (the penguin user has none).
const SUDOERS: &str = "%sudo ALL=(ALL:ALL) NOPASSWD: ALL\n";

/// What goes over the cached mmdebstrap tree.
fn debian_overlay(st: &Staging) -> Result<(), ImageError> {
    st.file(
        "etc/systemd/network/20-eth0.network",
        ETH0_NETWORK.as_bytes(),
        0o644,
    )?;
    st.file(
        "etc/systemd/system/cros-garcon.service",
        garcon_unit().as_bytes(),
        0o644,
    )?;
    // What `systemctl enable cros-garcon` does, per its [Install] section.
    st.symlink(
        "etc/systemd/system/multi-user.target.wants/cros-garcon.service",
        "/etc/systemd/system/cros-garcon.service",
    )?;
    st.file("etc/sudoers.d/10-cros-sudo", SUDOERS.as_bytes(), 0o440)?;
    st.dir("opt/google/cros-containers")?;
    // systemd-resolved's postinst keeps the build host's resolv.conf here.
    let bak = st.root.join("etc/.resolv.conf.systemd-resolved.bak");
    match std::fs::remove_file(&bak) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ImageError::Io { path: bak, source }),
    }
    Ok(())
}

/// VERSION_ID from the tree's /etc/os-release ("12" on bookworm).
fn os_version_id(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("etc/os-release")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| valid_release(v))
}

/// Makes sure `out` is a directory; true when it had to be made.
fn prepare_out(out: &Path) -> Result<bool, ImageError> {
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(ImageError::Invalid(format!(
            "--out {}: exists and is not a directory",
            out.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(io_err(out))?;
            Ok(true)
        }
        Err(source) => Err(ImageError::Io {
            path: out.to_path_buf(),
            source,
        }),
    }
}

/// Builds the image and adds it to the tree `opts.out`.
pub fn build(opts: &BuildOptions) -> Result<BuiltImage, ImageError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(ImageError::Invalid(format!(
            "container images are built for x86_64 only (this host is {})",
            std::env::consts::ARCH
        )));
    }
    if opts.kind == Kind::Debian && !valid_release(&opts.release) {
        return Err(ImageError::Invalid(format!(
            "--release {:?}: not a Debian suite name (e.g. bookworm)",
            opts.release
        )));
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let serial = match &opts.serial {
        Some(s) if valid_serial(s) => s.clone(),
        Some(s) => {
            return Err(ImageError::Invalid(format!(
                "--serial {s:?}: must start with YYYYMMDD and hold only [A-Za-z0-9_.-] (LXD skips other versions)"
            )));
        }
        None => serial_for(created),
    };
    let made = prepare_out(&opts.out)?;
    let result = build_into(opts, &serial, created);
    if result.is_err() && made {
        // A tree this build started holds nothing else: leave no trace of it.
        let _ = std::fs::remove_dir_all(&opts.out);
    }
    result
}

fn build_into(opts: &BuildOptions, serial: &str, created: u64) -> Result<BuiltImage, ImageError> {
    let out = &opts.out;
    // One writer of the tree at a time; the kernel drops the lock however the holder dies.
    let lock_path = out.join(".crosimg.lock");
    let _lock = crate::daemon::lock::HeldLock::take("image tree", out, &lock_path).map_err(
        |e| match e {
            crate::daemon::lock::LockError::Held { holder, .. } => ImageError::Invalid(format!(
                "{} is being written by another crosimg ({holder}); wait for it to finish",
                out.display()
            )),
            other => ImageError::Invalid(other.to_string()),
        },
    )?;
    // With the lock held, any build directory left is from a build that died.
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".build-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(out)
        .map_err(io_err(out))?;

    let st = Staging::new(work.path().join("rootfs"))?;
    let (info, description) = match opts.kind {
        Kind::Busybox => {
            // Installed first: that checks it is a static busybox before its banner is read.
            st.busybox(&opts.busybox, "bin")?;
            let version = busybox_version(&opts.busybox)?;
            progress(&format!("busybox {version} root filesystem"));
            busybox_tree(&st, &version)?;
            let info = ProductInfo {
                os: "busybox".into(),
                release: version.clone(),
                release_title: version.clone(),
                variant: "default".into(),
                aliases: vec![
                    "busybox".into(),
                    "busybox/default".into(),
                    format!("busybox/{version}"),
                    format!("busybox/{version}/default"),
                ],
            };
            (info, format!("BusyBox {version} amd64 ({serial})"))
        }
        Kind::Debian => {
            let recipe = debian_recipe(&opts.release, &opts.mirror);
            let userland = rootfs::cached(&recipe, &rootfs::cache_dir()?)?;
            progress(&format!(
                "unpacking the cached userland {}",
                userland.display()
            ));
            rootfs::unpack(&userland, &st.root)?;
            debian_overlay(&st)?;
            let release = &opts.release;
            let mut aliases = vec![
                format!("debian/{release}"),
                format!("debian/{release}/default"),
            ];
            if let Some(v) = os_version_id(&st.root) {
                aliases.push(format!("debian/{v}"));
                aliases.push(format!("debian/{v}/default"));
            }
            let info = ProductInfo {
                os: "debian".into(),
                release: release.clone(),
                release_title: release.clone(),
                variant: "default".into(),
                aliases,
            };
            (info, format!("Debian {release} amd64 ({serial})"))
        }
    };

    let image = work.path().join("image");
    std::fs::create_dir_all(&image).map_err(io_err(&image))?;
    let meta_file = image.join(simplestreams::FTYPE_METADATA);
    let root_file = image.join(opts.rootfs_format.file_name());
    progress(&format!("packing {}", opts.rootfs_format.file_name()));
    pack_rootfs(
        &st.root,
        &root_file,
        opts.rootfs_format,
        opts.kind == Kind::Busybox,
    )?;
    // The tree is hundreds of MB for Debian: free it before the rest.
    std::fs::remove_dir_all(&st.root).map_err(io_err(&st.root))?;
    metadata_tarball(
        &work.path().join("meta"),
        &meta_file,
        &info,
        serial,
        &description,
        created,
    )?;
    progress("hashing");
    let hashes = SplitHashes::of(&meta_file, &root_file)?;

    let rel = info.version_dir(serial);
    let dest = out.join(&rel);
    let parent = dest.parent().unwrap_or(out);
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    if dest.exists() {
        // The same serial built again: the new one replaces it.
        let old = work.path().join("replaced");
        std::fs::rename(&dest, &old).map_err(io_err(&dest))?;
    }
    std::fs::rename(&image, &dest).map_err(io_err(&image))?;
    let version = simplestreams::split_version(&rel, opts.rootfs_format, &hashes);
    if let Err(e) =
        simplestreams::publish_version(out, &info, serial, version, opts.keep, &rfc3339(created))
    {
        let _ = std::fs::remove_dir_all(&dest);
        return Err(e);
    }
    Ok(BuiltImage {
        product: info.id(),
        serial: serial.to_string(),
        aliases: info.aliases,
        dir: dest,
        fingerprint: hashes.combined_sha256,
        metadata_size: hashes.metadata_size,
        rootfs_size: hashes.rootfs_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_utc_times_lxd_parses() {
        assert_eq!(serial_for(0), "19700101_0000");
        // 2026-12-02 13:37:33 UTC
        assert_eq!(serial_for(1_796_218_653), "20261202_1337");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert!(valid_serial("20261202_1337"));
        assert!(!valid_serial("2026"));
        assert!(!valid_serial("20261202/../x"));
    }

    #[test]
    fn an_out_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let err = prepare_out(&f).unwrap_err().to_string();
        assert!(err.contains("exists and is not a directory"), "{err}");
    }
}
