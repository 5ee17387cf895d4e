//! termina's own settings in its Debian userland: what LXD and maitred need from /etc in a
//! read-only root (the rest of what they need at run time — tmpfs /var, /run, /tmp, cgroup2,
//! loopback — maitred sets up at boot, guest-actors/src/maitred/init.rs).

use super::ImageError;
use super::staging::Staging;

/// Subordinate ids for root, which LXD (run as root) gives containers. LXD takes the first
/// range of at least 65536 ids as every unprivileged container's map (container root = host
/// 1000000) and refuses a `raw.idmap` host id inside that range ("Host id is in the range of
/// subids"), so the range starts above the ids the default profile maps straight through (the
/// user 1000 and 1001, Chrome OS's 655360 and 665357). Those are allowed for root one by one.
pub const SUBIDS: &str =
    "root:1000000:1000000000\nroot:1000:1\nroot:1001:1\nroot:655360:1\nroot:665357:1\n";

/// The user that `vsh` sessions and the containers' uid 1000 belong to, as in Crostini's
/// termina; in group `lxd` so that `lxc` works for it.
const USER: &str = "chronos";
const USER_ID: u32 = 1000;

/// Writes the settings into the unpacked userland at `st`.
pub fn configure(st: &Staging, version: &str) -> Result<(), ImageError> {
    st.file("etc/subuid", SUBIDS.as_bytes(), 0o644)?;
    st.file("etc/subgid", SUBIDS.as_bytes(), 0o644)?;

    let passwd = read(st, "etc/passwd")?;
    let passwd = with_entry(
        &passwd,
        USER,
        &format!("{USER}:x:{USER_ID}:{USER_ID}:{USER}:/home/{USER}:/bin/bash"),
    );
    st.file("etc/passwd", passwd.as_bytes(), 0o644)?;
    let group = read(st, "etc/group")?;
    let group = with_entry(&group, USER, &format!("{USER}:x:{USER_ID}:"));
    if !group.lines().any(|l| l.starts_with("lxd:")) {
        return Err(ImageError::Invalid(
            "the userland has no lxd group: did the lxd package fail to configure?".into(),
        ));
    }
    let group = with_member(&group, "lxd", USER);
    // Its home is made at boot: maitred mounts a tmpfs on /home and /root.
    st.file("etc/group", group.as_bytes(), 0o644)?;

    // maitred sets the hostname to the VM's name at boot; these are the defaults before that.
    st.file("etc/hostname", b"termina\n", 0o644)?;
    st.file(
        "etc/hosts",
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    // termina has no network of its own (LXD reaches image servers through crosd's proxy);
    // whatever a boot writes there lives in /run. mmdebstrap copied the build host's file.
    st.symlink("etc/resolv.conf", "/run/resolv.conf")?;
    st.symlink("etc/mtab", "../proc/self/mounts")?;
    st.file("etc/fstab", b"# maitred mounts everything\n", 0o644)?;
    st.file(
        "etc/os-release",
        format!(
            "PRETTY_NAME=\"termina (Debian GNU/Linux 12)\"\nNAME=termina\nID=termina\nID_LIKE=debian\nVERSION_ID={version}\nVERSION_CODENAME=bookworm\n"
        )
        .as_bytes(),
        0o644,
    )?;
    Ok(())
}

fn read(st: &Staging, rel: &str) -> Result<String, ImageError> {
    let p = st.root.join(rel);
    std::fs::read_to_string(&p).map_err(super::io_err(&p))
}

/// `file` (passwd or group lines) with `line` added unless an entry named `name` exists.
fn with_entry(file: &str, name: &str, line: &str) -> String {
    let prefix = format!("{name}:");
    if file.lines().any(|l| l.starts_with(&prefix)) {
        return file.to_string();
    }
    let mut out = file.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    out
}

/// A group file with `user` added to the members of `group` (kept when already there).
fn with_member(file: &str, group: &str, user: &str) -> String {
    let prefix = format!("{group}:");
    let mut out = String::new();
    for l in file.lines() {
        if l.starts_with(&prefix) {
            let (head, members) = l.rsplit_once(':').unwrap_or((l, ""));
            let mut list: Vec<&str> = members.split(',').filter(|m| !m.is_empty()).collect();
            if !list.contains(&user) {
                list.push(user);
            }
            out.push_str(&format!("{head}:{}\n", list.join(",")));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_idmap_ids_lie_outside_the_container_range_and_are_allowed() {
        // The default profile's raw.idmap host ids (REFERENCE.md).
        let raw = [1000u64, 655360, 665357, 1001];
        let entries: Vec<(u64, u64)> = SUBIDS
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                assert_eq!(f[0], "root");
                (f[1].parse().unwrap(), f[2].parse().unwrap())
            })
            .collect();
        // LXD's container map: the first range of at least 65536 ids.
        let (start, len) = *entries.iter().find(|(_, n)| *n >= 65536).unwrap();
        for id in raw {
            assert!(
                !(start..start + len).contains(&id),
                "{id} in the subid range"
            );
            assert!(
                entries.iter().any(|&(s, n)| n == 1 && s == id),
                "{id} not allowed for root"
            );
        }
        assert!(start + len <= u64::from(u32::MAX), "ids are 32-bit");
    }

    #[test]
    fn adds_the_user_and_its_lxd_membership_once() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n";
        let once = with_entry(
            passwd,
            "chronos",
            "chronos:x:1000:1000::/home/chronos:/bin/bash",
        );
        assert_eq!(once.lines().count(), 2);
        assert_eq!(
            with_entry(&once, "chronos", "chronos:x:1:1::/:/bin/sh"),
            once
        );
        let group = "root:x:0:\nlxd:x:101:\nsudo:x:27:a";
        let g = with_member(group, "lxd", "chronos");
        assert!(g.contains("\nlxd:x:101:chronos\n"), "{g}");
        assert_eq!(with_member(&g, "lxd", "chronos"), g);
        assert!(with_member("lxd:x:101:a", "lxd", "b").contains("lxd:x:101:a,b"));
    }
}
