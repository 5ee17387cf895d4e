//! Debian userlands built with mmdebstrap from the Debian archive and cached as tarballs under
//! the crosd cache (`$CROSD_CACHE`, default `~/.cache/crosd`), keyed by a hash of everything
//! that decides their contents (suite, packages, mmdebstrap options), so a rootfs is built once
//! and again only when its recipe changes.
//!
//! A build writes a hidden partial file that is renamed into place only when mmdebstrap
//! succeeded, under a lock, so parallel builders wait for one another and an interrupted build
//! is never used.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::{ImageError, io_err, run_tool};

/// What a Debian userland is made of: termina's ([`TERMINA`]) and the Debian container
/// image's (`crosimg build-container debian`, container.rs).
#[derive(Clone, Copy)]
pub struct Recipe<'a> {
    /// Names the cached tarball: `rootfs/<name>-<suite>-<key>.tar`.
    pub name: &'a str,
    pub suite: &'a str,
    /// mmdebstrap's variant: `essential` (the Essential:yes set) or `minbase` (plus apt).
    pub variant: &'a str,
    /// The Debian archive (its `-security` sibling is used when it ends in `/debian`).
    pub mirror: &'a str,
    /// Installed on top of the variant, with their dependencies (no Recommends).
    pub packages: &'a [&'a str],
    /// mmdebstrap's `--hook-dir`s (e.g. its merged-usr hooks).
    pub hook_dirs: &'a [&'a str],
    /// Shell commands mmdebstrap runs at the end with the root directory as `$1`.
    pub customize_hooks: &'a [&'a str],
    /// Leave out manual pages, info, translations and documentation ([`DPKG_EXCLUDES`]).
    pub exclude_docs: bool,
}

/// The archive the userlands come from by default: the suite, its updates and its security
/// updates.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Files no guest reads: documentation, manual pages, translations. Licences stay.
const DPKG_EXCLUDES: [&str; 5] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];

/// termina's userland: what real LXD needs in the VM (ARCHITECTURE.md, "Containers"). The
/// Essential set has no apt: the image is read-only and never updated in place.
pub const TERMINA_PACKAGES: &[&str] = &[
    // The container manager and its client (`lxc` in termina, as the seed uses it).
    "lxd",
    "lxd-client",
    // lxdbr0: DHCP/DNS for the containers and the NAT rules (Recommends that mmdebstrap skips).
    "dnsmasq-base",
    "nftables",
    // What LXD runs to move and unpack images: rsync, setfattr, unsquashfs, xz.
    "rsync",
    "attr",
    "squashfs-tools",
    "xz-utils",
    // The stateful disk and the storage pool (maitred formats and grows it with these).
    "btrfs-progs",
    "iproute2",
    // modprobe with the module tree in /lib/modules/<release>, for LXD and the kernel.
    "kmod",
    // The shell tools Debian's Essential set lacks (ps, vi, wget, …), as applet links.
    "busybox",
    "ca-certificates",
    // Satisfies init-system-helpers' "usrmerge | usr-is-merged" without usrmerge, which would
    // pull in perl (about 50 MB); the merged-usr hook makes the merged /usr it asserts.
    "usr-is-merged",
];

pub const TERMINA: Recipe<'static> = Recipe {
    name: "termina",
    suite: "bookworm",
    variant: "essential",
    mirror: DEFAULT_MIRROR,
    packages: TERMINA_PACKAGES,
    // Debian's merged /usr (bin → usr/bin …), as a debootstrap-made system has it.
    hook_dirs: &["/usr/share/mmdebstrap/hooks/merged-usr"],
    // Links for the busybox applets that no Debian package provides; existing files are kept.
    customize_hooks: &[r#"chroot "$1" /bin/busybox --install -s"#],
    exclude_docs: true,
};

impl Recipe<'_> {
    /// mmdebstrap's arguments up to the output file (which follows, then the mirrors).
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--variant={}", self.variant),
            "--mode=root".to_string(),
            "--format=tar".to_string(),
        ];
        args.extend(self.hook_dirs.iter().map(|d| format!("--hook-dir={d}")));
        args.push(format!("--include={}", self.packages.join(",")));
        if self.exclude_docs {
            args.extend(DPKG_EXCLUDES.iter().map(|o| format!("--dpkgopt={o}")));
        }
        args.extend(
            self.customize_hooks
                .iter()
                .map(|h| format!("--customize-hook={h}")),
        );
        args.push(self.suite.to_string());
        args
    }

    /// The archive lines: the suite with its updates and security suites (sid/unstable have
    /// neither).
    fn mirrors(&self) -> Vec<String> {
        let (s, mirror) = (self.suite, self.mirror.trim_end_matches('/'));
        let mut lines = vec![format!("deb {mirror} {s} main")];
        if !matches!(s, "sid" | "unstable") {
            lines.push(format!("deb {mirror} {s}-updates main"));
            if let Some(base) = mirror.strip_suffix("/debian") {
                lines.push(format!("deb {base}/debian-security {s}-security main"));
            }
        }
        lines
    }

    /// Hash of everything that decides the contents (16 hex digits).
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for a in self.args().iter().chain(self.mirrors().iter()) {
            h.update(a.as_bytes());
            h.update(b"\n");
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn file_name(&self) -> String {
        format!("{}-{}-{}.tar", self.name, self.suite, self.key())
    }
}

/// The crosd cache directory: `$CROSD_CACHE`, else `~/.cache/crosd` (as tools/scripts/lib.sh).
pub fn cache_dir() -> Result<PathBuf, ImageError> {
    if let Some(dir) = std::env::var_os("CROSD_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ImageError::Invalid("neither CROSD_CACHE nor HOME is set".into()))?;
    Ok(PathBuf::from(home).join(".cache/crosd"))
}

/// The cached tarball of `recipe` in `cache/rootfs/`, built with mmdebstrap when missing.
pub fn cached(recipe: &Recipe, cache: &Path) -> Result<PathBuf, ImageError> {
    let dir = cache.join("rootfs");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tarball = dir.join(recipe.file_name());
    if tarball.is_file() {
        eprintln!(
            "crosimg: reusing the cached Debian {} userland {}",
            recipe.suite,
            tarball.display()
        );
        return Ok(tarball);
    }
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    let _lock =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            ImageError::Io {
                path: lock_path.clone(),
                source: e.into(),
            }
        })?;
    // Another builder may have finished while this one waited.
    if tarball.is_file() {
        return Ok(tarball);
    }
    remove_partials(&dir)?;
    let partial = dir.join(format!(
        ".{}.partial-{}",
        recipe.file_name(),
        std::process::id()
    ));
    eprintln!(
        "crosimg: building the Debian {} userland for {} with mmdebstrap (about a minute; cached as {})",
        recipe.suite,
        recipe.name,
        tarball.display()
    );
    let result = mmdebstrap(recipe, &partial)
        .and_then(|()| std::fs::rename(&partial, &tarball).map_err(io_err(&partial)));
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
        return result.map(|()| tarball);
    }
    remove_other_keys(&dir, recipe);
    Ok(tarball)
}

/// Removes the tarballs of the same name and suite that other recipes made (hundreds of MB
/// each): only the newest recipe of a userland is kept.
fn remove_other_keys(dir: &Path, recipe: &Recipe) {
    let keep = recipe.file_name();
    let prefix = format!("{}-{}-", recipe.name, recipe.suite);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".tar") && name != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Deletes what interrupted builds left (only ever called with the lock held).
fn remove_partials(dir: &Path) -> Result<(), ImageError> {
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".partial-") {
            std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
        }
    }
    Ok(())
}

fn mmdebstrap(recipe: &Recipe, out: &Path) -> Result<(), ImageError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::Invalid(
            "building a Debian userland needs root: mmdebstrap installs packages owned by root and the image keeps their owners".into(),
        ));
    }
    let mut args: Vec<OsString> = recipe.args().into_iter().map(Into::into).collect();
    args.push(out.into());
    args.extend(recipe.mirrors().into_iter().map(Into::into));
    let mut child = Command::new("mmdebstrap")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::MissingTool {
            tool: "mmdebstrap".into(),
            source,
        })?;
    // Its "I: …" steps are the progress of this long step; apt's and dpkg's chatter is kept
    // back, its first error named when the build fails.
    let mut tail = std::collections::VecDeque::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(step) = line.strip_prefix("I: ") {
                eprintln!("crosimg: mmdebstrap: {step}");
            }
            if tail.len() == 200 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().map_err(|source| ImageError::MissingTool {
        tool: "mmdebstrap".into(),
        source,
    })?;
    if !status.success() {
        return Err(ImageError::Invalid(format!(
            "mmdebstrap could not build Debian {} from {} (is the archive reachable?): {}",
            recipe.suite,
            recipe.mirror,
            mmdebstrap_error(&Vec::from(tail).join("\n"))
        )));
    }
    Ok(())
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

/// Unpacks a userland tarball into `dest` with owners, modes and extended attributes (file
/// capabilities) as packaged. /dev is left empty: the guest mounts devtmpfs there.
pub fn unpack(tarball: &Path, dest: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    run_tool(
        Command::new("tar")
            .args([
                "--extract",
                "--numeric-owner",
                "--preserve-permissions",
                "--xattrs",
                "--xattrs-include=*",
                "--exclude=./dev/*",
                "--file",
            ])
            .arg(tarball)
            .arg("--directory")
            .arg(dest),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_package_list_and_suite() {
        let base = TERMINA.key();
        assert_eq!(base.len(), 16);
        assert_eq!(base, TERMINA.key(), "the key is stable");
        let fewer = Recipe {
            packages: &TERMINA_PACKAGES[1..],
            ..TERMINA
        };
        assert_ne!(fewer.key(), base);
        let trixie = Recipe {
            suite: "trixie",
            ..TERMINA
        };
        assert_ne!(trixie.key(), base);
        let mirrored = Recipe {
            mirror: "http://mirror.example/debian",
            ..TERMINA
        };
        assert_ne!(mirrored.key(), base);
        assert!(TERMINA.file_name().starts_with("termina-bookworm-"));
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

    #[test]
    fn archive_lines_follow_the_mirror_and_suite() {
        assert_eq!(
            TERMINA.mirrors(),
            [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
        let sid = Recipe {
            suite: "sid",
            mirror: "http://m.example/debian/",
            ..TERMINA
        };
        assert_eq!(sid.mirrors(), ["deb http://m.example/debian sid main"]);
    }

    #[test]
    fn only_the_current_recipe_s_tarball_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("termina-bookworm-0000000000000000.tar");
        let other = dir.path().join("debian-bookworm-0000000000000000.tar");
        std::fs::write(&old, b"old").unwrap();
        std::fs::write(&other, b"other").unwrap();
        std::fs::write(dir.path().join(TERMINA.file_name()), b"new").unwrap();
        remove_other_keys(dir.path(), &TERMINA);
        assert!(!old.exists());
        assert!(
            other.exists(),
            "another userland's tarball is not this recipe's"
        );
        assert!(dir.path().join(TERMINA.file_name()).exists());
    }

    #[test]
    fn a_cached_tarball_is_used_and_partials_are_not() {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("rootfs");
        std::fs::create_dir_all(&dir).unwrap();
        // What an interrupted build leaves is never taken for the rootfs.
        let partial = dir.join(format!(".{}.partial-1", TERMINA.file_name()));
        std::fs::write(&partial, b"half").unwrap();
        remove_partials(&dir).unwrap();
        assert!(!partial.exists());
        // A finished one is returned as it is, without running mmdebstrap.
        let done = dir.join(TERMINA.file_name());
        std::fs::write(&done, b"tar").unwrap();
        assert_eq!(cached(&TERMINA, cache.path()).unwrap(), done);
    }

    #[test]
    fn unpacks_with_owners_and_without_device_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("dev")).unwrap();
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/hello"), b"hi").unwrap();
        std::fs::write(src.join("dev/not-a-node"), b"").unwrap();
        let tar = dir.path().join("root.tar");
        run_tool(
            Command::new("tar")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&src)
                .arg("."),
        )
        .unwrap();
        let dest = dir.path().join("dest");
        unpack(&tar, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("etc/hello")).unwrap(), b"hi");
        assert!(dest.join("dev").is_dir());
        assert!(!dest.join("dev/not-a-node").exists());
    }
}
