//! User lookup from /etc/passwd and /etc/group.
//!
//! Parsed by hand instead of getpwnam(3): vshd is a static binary, and static glibc's NSS
//! cannot load modules, so the files are the only source that works the same everywhere.

use std::fs;
use std::path::{Path, PathBuf};

/// Where the account databases live; tests point these at their own files.
#[derive(Debug, Clone)]
pub struct AccountFiles {
    pub passwd: PathBuf,
    pub group: PathBuf,
}

impl Default for AccountFiles {
    fn default() -> Self {
        Self {
            passwd: PathBuf::from("/etc/passwd"),
            group: PathBuf::from("/etc/group"),
        }
    }
}

/// One account, with everything a session needs to run as it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// The login shell; `/bin/sh` when the entry names none.
    pub shell: String,
    /// Supplementary groups from /etc/group (the primary gid included).
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed entry for user '{user}' in {path}")]
    Malformed { user: String, path: String },
}

/// Shell used when an account names none (as login(1) does).
pub const DEFAULT_SHELL: &str = "/bin/sh";

fn read(path: &Path) -> Result<String, LookupError> {
    fs::read_to_string(path).map_err(|source| LookupError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl AccountFiles {
    /// Finds `name` in the passwd file and collects its groups.
    ///
    /// Root is uid 0 on every Linux system, so when the passwd file cannot be read at all (a
    /// minimal guest rootfs without one) root still gets a session, with `/` as home.
    pub fn lookup(&self, name: &str) -> Result<Account, LookupError> {
        let passwd = match read(&self.passwd) {
            Ok(p) => p,
            Err(LookupError::Read { .. }) if name == "root" => {
                return Ok(Account {
                    name: "root".to_string(),
                    uid: 0,
                    gid: 0,
                    home: "/".to_string(),
                    shell: DEFAULT_SHELL.to_string(),
                    groups: vec![0],
                });
            }
            Err(e) => return Err(e),
        };
        let malformed = || LookupError::Malformed {
            user: name.to_string(),
            path: self.passwd.display().to_string(),
        };
        // name:password:uid:gid:gecos:home:shell
        let fields: Vec<&str> = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .ok_or_else(|| LookupError::UnknownUser(name.to_string()))?;
        if fields.len() < 7 {
            return Err(malformed());
        }
        let uid = fields[2].parse::<u32>().map_err(|_| malformed())?;
        let gid = fields[3].parse::<u32>().map_err(|_| malformed())?;
        let home = if fields[5].is_empty() { "/" } else { fields[5] };
        let shell = if fields[6].is_empty() {
            DEFAULT_SHELL
        } else {
            fields[6]
        };
        let mut groups = vec![gid];
        // A missing group file only costs the supplementary groups, not the session.
        if let Ok(group) = fs::read_to_string(&self.group) {
            for line in group.lines() {
                // name:password:gid:member,member
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 4 {
                    continue;
                }
                let Ok(g) = f[2].parse::<u32>() else { continue };
                if f[3].split(',').any(|m| m == name) && !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        Ok(Account {
            name: name.to_string(),
            uid,
            gid,
            home: home.to_string(),
            shell: shell.to_string(),
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(passwd: &str, group: &str) -> (tempfile::TempDir, AccountFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = AccountFiles {
            passwd: dir.path().join("passwd"),
            group: dir.path().join("group"),
        };
        fs::write(&files.passwd, passwd).unwrap();
        fs::write(&files.group, group).unwrap();
        (dir, files)
    }

    #[test]
    fn finds_user_with_groups_and_defaults() {
        let (_d, f) = files(
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:\n",
            "sudo:x:27:alice,bob\nvideo:x:44:bob\nalice:x:1000:\n",
        );
        let a = f.lookup("alice").unwrap();
        assert_eq!((a.uid, a.gid), (1000, 1000));
        assert_eq!(a.home, "/home/alice");
        assert_eq!(a.shell, DEFAULT_SHELL);
        assert_eq!(a.groups, vec![1000, 27]);
        assert_eq!(f.lookup("root").unwrap().shell, "/bin/bash");
    }

    #[test]
    fn unknown_and_malformed_users_are_named() {
        let (_d, f) = files("bad:x:notanumber:0::/:/bin/sh\nshort:x:1\n", "");
        let e = f.lookup("mallory").unwrap_err().to_string();
        assert!(e.contains("mallory"), "{e}");
        assert!(f.lookup("bad").unwrap_err().to_string().contains("bad"));
        assert!(matches!(
            f.lookup("short"),
            Err(LookupError::Malformed { .. })
        ));
    }

    #[test]
    fn root_survives_a_missing_passwd_file_but_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = AccountFiles {
            passwd: dir.path().join("missing"),
            group: dir.path().join("missing-group"),
        };
        let root = f.lookup("root").unwrap();
        assert_eq!(
            (root.uid, root.gid, root.shell.as_str()),
            (0, 0, DEFAULT_SHELL)
        );
        let e = f.lookup("alice").unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
