//! SetUpUser: uid 1000 named as asked (an existing uid 1000 keeps its name), Crostini's groups,
//! a home directory and systemd's linger flag — by editing /etc/passwd, /etc/group (and the
//! shadow files when the image has them) through LXD's SFTP endpoint ([`super::container_fs`]),
//! so it works in any distribution, running or stopped, with or without useradd.

use cros_messages::CrosError;
use cros_messages::tremplin::TremplinReply;

use super::container_fs::{ContainerFs, FsError, Owner};
use super::{Tremplin, lxd_error};

pub const UID: u32 = 1000;
/// Groups every user has, with the gids the profile's raw.idmap passes through.
pub const REQUIRED_GROUPS: [(&str, u32); 2] =
    [("android-everybody", 665357), ("chronos-access", 1001)];
/// Groups that are created when missing but the user is not put in.
pub const OTHER_GROUPS: [(&str, u32); 1] = [("android-root", 655360)];
/// Groups the user joins when the image has them.
pub const OPTIONAL_GROUPS: [&str; 10] = [
    "audio", "cdrom", "dialout", "floppy", "kvm", "libvirt", "plugdev", "sudo", "users", "video",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {name} already exists with uid {uid}, not {UID}")]
    NameTaken { name: String, uid: String },
}

/// The edited account files and what the user ended up as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPlan {
    pub username: String,
    pub homedir: String,
    pub passwd: String,
    pub group: String,
    pub shadow: Option<String>,
    pub gshadow: Option<String>,
}

fn fields(line: &str) -> Vec<&str> {
    line.split(':').collect()
}

fn with_newline(mut s: String) -> String {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Adds `user` to the member list (field `idx`) of group line `line`.
fn add_member(line: &str, idx: usize, user: &str) -> String {
    let mut f: Vec<String> = line.split(':').map(str::to_string).collect();
    while f.len() <= idx {
        f.push(String::new());
    }
    let members: Vec<&str> = f[idx].split(',').filter(|m| !m.is_empty()).collect();
    if !members.contains(&user) {
        f[idx] = if f[idx].is_empty() {
            user.to_string()
        } else {
            format!("{},{user}", f[idx])
        };
    }
    f.join(":")
}

/// Plans the account files. `shell` is the login shell for a new user.
pub fn plan(
    passwd: &str,
    group: &str,
    shadow: Option<&str>,
    gshadow: Option<&str>,
    requested: &str,
    shell: &str,
) -> Result<UserPlan, UserError> {
    let uid = UID.to_string();
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(fields)
        .collect();
    let (username, homedir, mut passwd) = match entries.iter().find(|f| f.len() >= 7 && f[2] == uid)
    {
        Some(f) => {
            let home = if f[5].is_empty() {
                format!("/home/{}", f[0])
            } else {
                f[5].to_string()
            };
            (f[0].to_string(), home, passwd.to_string())
        }
        None => {
            if let Some(f) = entries.iter().find(|f| f[0] == requested) {
                return Err(UserError::NameTaken {
                    name: requested.to_string(),
                    uid: f.get(2).unwrap_or(&"?").to_string(),
                });
            }
            let home = format!("/home/{requested}");
            let mut p = with_newline(passwd.to_string());
            p.push_str(&format!("{requested}:x:{UID}:{UID}::{home}:{shell}\n"));
            (requested.to_string(), home, p)
        }
    };
    passwd = with_newline(passwd);

    let mut group_lines: Vec<String> = group
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let mut gshadow_lines: Option<Vec<String>> = gshadow.map(|g| {
        g.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    });
    let has_name =
        |lines: &[String], name: &str| lines.iter().any(|l| l.split(':').next() == Some(name));
    let has_gid = |lines: &[String], gid: u32| {
        lines
            .iter()
            .any(|l| l.split(':').nth(2) == Some(gid.to_string().as_str()))
    };
    let mut wanted: Vec<(&str, u32)> = Vec::new();
    // The user's primary group, when nothing has gid 1000 and its name is free.
    if !has_gid(&group_lines, UID) && !has_name(&group_lines, &username) {
        wanted.push((username.as_str(), UID));
    }
    wanted.extend(REQUIRED_GROUPS);
    wanted.extend(OTHER_GROUPS);
    for (name, gid) in wanted {
        if !has_name(&group_lines, name) {
            group_lines.push(format!("{name}:x:{gid}:"));
            if let Some(gs) = gshadow_lines.as_mut()
                && !has_name(gs, name)
            {
                gs.push(format!("{name}:!::"));
            }
        }
    }
    let joins: Vec<&str> = REQUIRED_GROUPS
        .iter()
        .map(|(n, _)| *n)
        .chain(OPTIONAL_GROUPS)
        .collect();
    for line in group_lines.iter_mut() {
        let name = line.split(':').next().unwrap_or("").to_string();
        if joins.contains(&name.as_str()) {
            *line = add_member(line, 3, &username);
        }
    }
    if let Some(gs) = gshadow_lines.as_mut() {
        for line in gs.iter_mut() {
            let name = line.split(':').next().unwrap_or("").to_string();
            if joins.contains(&name.as_str()) && has_name(&group_lines, &name) {
                *line = add_member(line, 3, &username);
            }
        }
    }
    let shadow = shadow.map(|s| {
        let mut s = with_newline(s.to_string());
        if !s
            .lines()
            .any(|l| l.split(':').next() == Some(username.as_str()))
        {
            // No password: the user gets in through vsh, as in Crostini.
            s.push_str(&format!("{username}:*:0:0:99999:7:::\n"));
        }
        s
    });
    let join = |lines: Vec<String>| {
        let mut s = lines.join("\n");
        s.push('\n');
        s
    };
    Ok(UserPlan {
        username,
        homedir,
        passwd,
        group: join(group_lines),
        shadow,
        gshadow: gshadow_lines.map(join),
    })
}

/// The directories from `/` down to `path`, parents first (`/a/b` → `/a`, `/a/b`).
pub fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

impl Tremplin {
    pub(super) async fn set_up_user(
        &self,
        name: String,
        requested: String,
    ) -> Result<TremplinReply, CrosError> {
        self.require_lxd()?;
        let ctx = |what: &str| format!("setting up user {requested} in {name}: {what}");
        let fs_err = |e: FsError| match e {
            FsError::Connect { source, .. } => lxd_error(&ctx("opening its files"), source),
            e => CrosError::internal(ctx(&e.to_string())),
        };
        let fs = ContainerFs::open(&self.lxd, &name).await.map_err(fs_err)?;
        let (passwd, group, shadow, gshadow, bash) = tokio::join!(
            fs.read("/etc/passwd"),
            fs.read("/etc/group"),
            fs.read("/etc/shadow"),
            fs.read("/etc/gshadow"),
            fs.exists("/bin/bash"),
        );
        let Some(passwd) = passwd.map_err(fs_err)? else {
            return Err(CrosError::precondition(ctx(
                "the container has no /etc/passwd",
            )));
        };
        let Some(group) = group.map_err(fs_err)? else {
            return Err(CrosError::precondition(ctx(
                "the container has no /etc/group",
            )));
        };
        let (shadow, gshadow) = (shadow.map_err(fs_err)?, gshadow.map_err(fs_err)?);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let shell = if bash.unwrap_or(false) {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let plan = plan(
            &text(&passwd),
            &text(&group),
            shadow.as_deref().map(text).as_deref(),
            gshadow.as_deref().map(text).as_deref(),
            &requested,
            shell,
        )
        .map_err(|e| CrosError::precondition(ctx(&e.to_string())))?;

        // Shadow files first: a passwd entry without its shadow entry is what tools complain of.
        // A file that already says what the plan says is left alone (a second `vmc container`).
        let changed = |new: &str, old: &[u8]| new.as_bytes() != old;
        let edits = [
            ("/etc/shadow", plan.shadow.as_deref(), shadow.as_deref()),
            ("/etc/gshadow", plan.gshadow.as_deref(), gshadow.as_deref()),
            (
                "/etc/group",
                Some(plan.group.as_str()),
                Some(group.as_slice()),
            ),
            (
                "/etc/passwd",
                Some(plan.passwd.as_str()),
                Some(passwd.as_slice()),
            ),
        ];
        for (path, new, old) in edits {
            if let (Some(new), Some(old)) = (new, old)
                && changed(new, old)
            {
                fs.overwrite(path, new.as_bytes()).await.map_err(fs_err)?;
            }
        }

        let root_dir = Owner {
            uid: 0,
            gid: 0,
            mode: 0o755,
        };
        // An existing home keeps its owner and contents.
        if !fs.exists(&plan.homedir).await.map_err(fs_err)? {
            let parts = ancestors(&plan.homedir);
            for (i, dir) in parts.iter().enumerate() {
                let owner = if i + 1 == parts.len() {
                    Owner {
                        uid: UID,
                        gid: UID,
                        mode: 0o755,
                    }
                } else {
                    root_dir
                };
                fs.mkdir(dir, owner).await.map_err(fs_err)?;
            }
        }
        let linger_dir = "/var/lib/systemd/linger";
        let linger = format!("{linger_dir}/{}", plan.username);
        if !fs.exists(&linger).await.map_err(fs_err)? {
            for dir in ancestors(linger_dir) {
                fs.mkdir(&dir, root_dir).await.map_err(fs_err)?;
            }
            let flag = Owner {
                mode: 0o644,
                ..root_dir
            };
            fs.create(&linger, b"", flag).await.map_err(fs_err)?;
        }
        Ok(TremplinReply::UserSetUp {
            name,
            username: plan.username,
            homedir: plan.homedir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\naudio:x:29:pulse\nsudo:x:27:\nvideo:x:44:\nusers:x:100:\n";

    #[test]
    fn a_new_user_gets_uid_1000_and_crostini_s_groups() {
        let p = plan(PASSWD, GROUP, None, None, "alice", "/bin/bash").unwrap();
        assert_eq!(p.username, "alice");
        assert_eq!(p.homedir, "/home/alice");
        assert!(
            p.passwd
                .ends_with("alice:x:1000:1000::/home/alice:/bin/bash\n")
        );
        assert!(p.passwd.starts_with("root:x:0:0:"));
        let g: Vec<&str> = p.group.lines().collect();
        assert!(g.contains(&"alice:x:1000:"));
        assert!(g.contains(&"android-everybody:x:665357:alice"));
        assert!(g.contains(&"chronos-access:x:1001:alice"));
        assert!(g.contains(&"android-root:x:655360:"));
        assert!(g.contains(&"audio:x:29:pulse,alice"));
        assert!(g.contains(&"sudo:x:27:alice"));
        assert!(g.contains(&"users:x:100:alice"));
        assert!(g.contains(&"root:x:0:"));
        // Groups the image does not have are not made up.
        assert!(!p.group.contains("plugdev"));
    }

    #[test]
    fn an_existing_uid_1000_keeps_its_name_and_home() {
        let passwd = format!("{PASSWD}debian:x:1000:1000:Debian:/home/debian:/bin/bash\n");
        let group = format!("{GROUP}debian:x:1000:\nsudo2:x:5:\n");
        let p = plan(&passwd, &group, None, None, "alice", "/bin/sh").unwrap();
        assert_eq!(p.username, "debian");
        assert_eq!(p.homedir, "/home/debian");
        assert_eq!(p.passwd, passwd);
        assert!(!p.group.contains("alice"));
        assert!(p.group.contains("sudo:x:27:debian"));
        // Idempotent: planning again changes nothing.
        let again = plan(&p.passwd, &p.group, None, None, "alice", "/bin/sh").unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn shadow_files_get_entries_and_a_taken_name_is_an_error() {
        let shadow = "root:*:19000:0:99999:7:::\n";
        let gshadow = "root:*::\nsudo:*::\n";
        let p = plan(PASSWD, GROUP, Some(shadow), Some(gshadow), "bob", "/bin/sh").unwrap();
        assert!(p.shadow.unwrap().contains("\nbob:*:0:0:99999:7:::\n"));
        let gs = p.gshadow.unwrap();
        assert!(gs.contains("sudo:*::bob"));
        assert!(gs.contains("chronos-access:!::bob"));
        assert!(gs.contains("bob:!::"));
        let passwd = format!("{PASSWD}bob:x:1005:1005::/home/bob:/bin/sh\n");
        assert_eq!(
            plan(&passwd, GROUP, None, None, "bob", "/bin/sh"),
            Err(UserError::NameTaken {
                name: "bob".into(),
                uid: "1005".into()
            })
        );
    }

    #[test]
    fn files_without_a_final_newline_stay_well_formed() {
        let p = plan(
            "root:x:0:0::/root:/bin/sh",
            "root:x:0:",
            None,
            None,
            "a",
            "/bin/sh",
        )
        .unwrap();
        assert_eq!(
            p.passwd,
            "root:x:0:0::/root:/bin/sh\na:x:1000:1000::/home/a:/bin/sh\n"
        );
        assert!(p.group.starts_with("root:x:0:\na:x:1000:\n"));
        assert_eq!(
            ancestors("/var/lib/systemd/linger"),
            [
                "/var",
                "/var/lib",
                "/var/lib/systemd",
                "/var/lib/systemd/linger"
            ]
        );
    }
}
