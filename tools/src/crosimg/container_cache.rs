//! The Debian container's base tree: mmdebstrap minbase plus the package list, cached under
//! CROSD_CACHE (default ~/.cache/crosd) in `container-rootfs/debian-<release>-<key>/rootfs`,
//! keyed by everything that shapes it (release, mirror, packages, hooks). It is made in a
//! temporary sibling directory and renamed into place when mmdebstrap succeeded, so a cache
//! entry is always whole; entries of the same release with other keys are removed then.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{ImageError, io_err};

/// Debian's archive (the host reaches it; nothing else).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

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
const CUSTOMIZE_HOOKS: &[&str] = &[
    r#"chroot "$1" systemctl enable systemd-networkd.service"#,
    r#"echo 'en_US.UTF-8 UTF-8' > "$1/etc/locale.gen" && chroot "$1" locale-gen && chroot "$1" update-locale LANG=en_US.UTF-8"#,
];

/// Bump when the way the tree is made changes in a way the fields below do not show.
const CACHE_FORMAT: u32 = 1;

/// One cached base tree.
#[derive(Debug, Clone)]
pub struct DebianBase {
    pub release: String,
    pub mirror: String,
    pub packages: Vec<String>,
}

impl DebianBase {
    pub fn new(release: &str, mirror: &str) -> Self {
        DebianBase {
            release: release.to_string(),
            mirror: mirror.trim_end_matches('/').to_string(),
            packages: DEBIAN_PACKAGES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The archive lines: the release with its updates and security suites (not for
    /// sid/unstable, which have neither).
    fn sources(&self) -> Vec<String> {
        let r = &self.release;
        let mut lines = vec![format!("deb {} {r} main", self.mirror)];
        if !matches!(r.as_str(), "sid" | "unstable") {
            lines.push(format!("deb {} {r}-updates main", self.mirror));
            if let Some(base) = self.mirror.strip_suffix("/debian") {
                lines.push(format!("deb {base}/debian-security {r}-security main"));
            }
        }
        lines
    }

    /// Hash of everything that shapes the tree.
    pub fn key(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        let mut h = Sha256::new();
        h.update(format!("format {CACHE_FORMAT}\n"));
        h.update(format!("release {}\n", self.release));
        for l in self.sources() {
            h.update(format!("source {l}\n"));
        }
        h.update(format!("packages {}\n", packages.join(",")));
        for hook in CUSTOMIZE_HOOKS {
            h.update(format!("hook {hook}\n"));
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn entry_name(&self) -> String {
        format!("debian-{}-{}", self.release, self.key())
    }
}

/// CROSD_CACHE, or ~/.cache/crosd (the scripts' cache: tools/scripts/lib.sh).
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CROSD_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/crosd")
}

fn cache_dir() -> PathBuf {
    cache_root().join("container-rootfs")
}

/// mmdebstrap's first error line ("E: …", the cause; the later ones follow from it), or its
/// last line when it printed none.
fn mmdebstrap_error(stderr: &str) -> String {
    let mut errors = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("E:"));
    match errors.next() {
        Some(first) => match errors.count() {
            0 => first.to_string(),
            n => format!("{first} (and {n} more errors)"),
        },
        None => stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string(),
    }
}

/// The cached tree for `base`, made with mmdebstrap when missing.
pub fn ensure(base: &DebianBase) -> Result<PathBuf, ImageError> {
    let dir = cache_dir();
    let entry = dir.join(base.entry_name());
    let rootfs = entry.join("rootfs");
    if rootfs.is_dir() {
        eprintln!(
            "crosimg: reusing the cached Debian {} tree {}",
            base.release,
            entry.display()
        );
        return Ok(rootfs);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::Invalid(format!(
            "building the Debian {} tree needs root (mmdebstrap's root mode keeps the files' owners); run crosimg as root",
            base.release
        )));
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let work = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(&dir)
        .map_err(io_err(&dir))?;
    let tree = work.path().join("rootfs");
    eprintln!(
        "crosimg: mmdebstrap Debian {} minbase + {} packages (cached in {})",
        base.release,
        base.packages.len(),
        dir.display()
    );
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--format=directory"])
        .arg(format!("--include={}", base.packages.join(",")));
    for hook in CUSTOMIZE_HOOKS {
        cmd.arg(format!("--customize-hook={hook}"));
    }
    cmd.arg(&base.release).arg(&tree).args(base.sources());
    let out = cmd.output().map_err(|source| ImageError::MissingTool {
        tool: "mmdebstrap".into(),
        source,
    })?;
    if !out.status.success() {
        return Err(ImageError::Invalid(format!(
            "mmdebstrap could not build Debian {} from {} (is the archive reachable?): {}",
            base.release,
            base.mirror,
            mmdebstrap_error(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    let staged = work.keep();
    if let Err(e) = std::fs::rename(&staged, &entry) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another build made the same entry meanwhile: use it.
        if !rootfs.is_dir() {
            return Err(ImageError::Io {
                path: entry,
                source: e,
            });
        }
    }
    prune_other_keys(&dir, base);
    Ok(rootfs)
}

/// Removes the trees of the same release that other package lists made (hundreds of MB each).
fn prune_other_keys(dir: &Path, base: &DebianBase) {
    let keep = base.entry_name();
    let prefix = format!("debian-{}-", base.release);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name != keep {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_release_mirror_and_packages_not_their_order() {
        let a = DebianBase::new("bookworm", DEFAULT_MIRROR);
        let mut b = a.clone();
        b.packages.reverse();
        assert_eq!(a.key(), b.key());
        b.packages.push("man-db".into());
        assert_ne!(a.key(), b.key());
        assert_ne!(a.key(), DebianBase::new("trixie", DEFAULT_MIRROR).key());
        assert_ne!(
            a.key(),
            DebianBase::new("bookworm", "http://mirror.example/debian").key()
        );
        assert_eq!(
            a.sources(),
            [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main"
            ]
        );
    }

    #[test]
    fn mmdebstrap_errors_are_one_line() {
        let stderr = "I: chroot architecture amd64\nE: cannot reach deb.debian.org\nI: x\nE: apt-get update failed\n";
        assert_eq!(
            mmdebstrap_error(stderr),
            "E: cannot reach deb.debian.org (and 1 more errors)"
        );
        assert_eq!(mmdebstrap_error("a\nlast words\n\n"), "last words");
    }
}
