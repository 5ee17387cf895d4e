//! `crosimg build-container debian`: a real mmdebstrap build from the Debian archive (about 30 s
//! on a quiet machine the first time, cached under ~/.cache/crosd or CROSD_CACHE after that),
//! packed as LXD's split format next to a busybox image in one tree.
//!
//! Slow and networked, so in a file and under a name of its own: `cargo test -- --skip
//! debian_image` leaves it out.

use std::path::{Path, PathBuf};
use std::process::Command;

use cros_tools::crosimg::simplestreams::{IMAGES_PATH, Products};

fn crosimg(args: &[&str], out: &Path) -> (PathBuf, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_crosimg"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "crosimg {args:?}: {stderr}");
    (
        PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
        stderr,
    )
}

#[test]
fn debian_image_has_systemd_udev_networkd_and_garcon_and_reuses_its_cache() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mmdebstrap's root mode needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    crosimg(&["build-container", "busybox"], &tree);
    let (first, _) = crosimg(
        &["build-container", "debian", "--serial", "20260101_0000"],
        &tree,
    );
    // The second build finds the first one's mmdebstrap tree.
    let (version_dir, stderr) = crosimg(
        &["build-container", "debian", "--serial", "20260102_0000"],
        &tree,
    );
    assert!(
        stderr.contains("reusing the cached Debian bookworm userland"),
        "{stderr}"
    );
    assert!(!stderr.contains("building the Debian"), "{stderr}");
    assert!(first.exists(), "--keep 2 by default");

    let meta = Command::new("tar")
        .arg("-xOJf")
        .arg(version_dir.join("lxd.tar.xz"))
        .arg("metadata.yaml")
        .output()
        .unwrap();
    let md: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    assert_eq!(md["properties"]["os"], "debian");
    assert_eq!(md["properties"]["release"], "bookworm");

    let ls = Command::new("unsquashfs")
        .arg("-lls")
        .arg(version_dir.join("rootfs.squashfs"))
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    let has = |p: &str| {
        ls.lines()
            .any(|l| l.contains(&format!("squashfs-root/{p}")))
    };
    for p in [
        "usr/sbin/init -> /lib/systemd/systemd",
        "usr/bin/udevadm",
        "usr/bin/sudo",
        "usr/bin/dbus-daemon",
        "usr/sbin/ip",
        "usr/bin/curl",
        "usr/lib/locale/locale-archive",
        "etc/systemd/network/20-eth0.network",
        "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "etc/systemd/system/cros-garcon.service",
        "etc/systemd/system/multi-user.target.wants/cros-garcon.service -> /etc/systemd/system/cros-garcon.service",
        "etc/sudoers.d/10-cros-sudo",
    ] {
        assert!(has(p), "{p} not in the Debian image");
    }
    assert!(
        !has("etc/.resolv.conf.systemd-resolved.bak"),
        "host DNS leaked"
    );
    let unit = Command::new("unsquashfs")
        .args(["-cat"])
        .arg(version_dir.join("rootfs.squashfs"))
        .arg("etc/systemd/system/cros-garcon.service")
        .output()
        .unwrap();
    let unit = String::from_utf8_lossy(&unit.stdout);
    assert!(
        unit.contains("ConditionPathExists=/dev/.container_token")
            && unit.contains("ExecStart=/opt/google/cros-containers/bin/garcon"),
        "{unit}"
    );

    // Both products are in the catalogue, with LXD's aliases.
    let cat: Products =
        serde_json::from_slice(&std::fs::read(tree.join(IMAGES_PATH)).unwrap()).unwrap();
    let debian = &cat.products["debian:bookworm:amd64:default"];
    assert!(debian.aliases.split(',').any(|a| a == "debian/bookworm"));
    assert_eq!(debian.versions.len(), 2);
    assert!(cat.products.keys().any(|k| k.starts_with("busybox:")));
}
