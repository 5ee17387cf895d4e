//! crosd's block in a hosts file (`/etc/hosts`, or `crosd --hosts-file`): the names of the
//! running containers (issue 14, item 5).
//!
//! Why a managed hosts block and not a resolver stub (systemd-resolved's DNS stub, an NSS
//! module): every resolver on every Linux host reads /etc/hosts first (glibc's and musl's
//! `files`, resolved's own /etc/hosts support, dnsmasq's), so one file edit works with no
//! daemon, no extra library in the host's processes and nothing to install; a resolved stub
//! exists only where resolved runs, an NSS module only where nsswitch.conf names it.
//!
//! The block is the lines between [`BEGIN`] and [`END`]; everything outside it is the user's
//! and is kept byte for byte. A block that a crash or a hand edit broke (a BEGIN with no END,
//! an END with no BEGIN, two blocks) is repaired on the next write: the markers and what lies
//! between them go, and one well-formed block (or none) takes their place at the end.
//!
//! The file is replaced, not rewritten: the new text goes to a temporary file beside it, which
//! is then renamed over it, so a reader sees the old file or the new one, never half of one.
//! A hosts file that is itself a mount point (a container runtime's bind-mounted /etc/hosts)
//! cannot be renamed over (EBUSY); there, and only there, it is rewritten in place.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const BEGIN: &str = "# BEGIN crosd: running containers' names (crosd rewrites this block)";
pub const END: &str = "# END crosd";
/// How the markers are recognised: by their start, so a later wording still matches.
const BEGIN_PREFIX: &str = "# BEGIN crosd";

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("cannot read hosts file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write hosts file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hosts file {0} names no file (it ends in '..' or is '/')")]
    NoFileName(PathBuf),
}

/// One line of the block: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub addr: Ipv4Addr,
    pub names: Vec<String>,
}

/// `text` with crosd's block replaced by `entries` (and no block when `entries` is empty).
pub fn with_block(text: &str, entries: &[HostEntry]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']).trim();
        if bare.starts_with(BEGIN_PREFIX) {
            inside = true;
        } else if bare == END {
            // The end of a block, or a stray END (whose block's BEGIN is gone): either way ours.
            inside = false;
        } else if inside && !is_ours(bare) {
            // A BEGIN that never ended: the block ends where its entries do, so a user's line
            // after a crash-truncated block is kept.
            inside = false;
            out.push_str(line);
        } else if !inside {
            out.push_str(line);
        }
    }
    if entries.is_empty() {
        return out;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(BEGIN);
    out.push('\n');
    for e in entries {
        out.push_str(&e.addr.to_string());
        for n in &e.names {
            out.push(' ');
            out.push_str(n);
        }
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// Whether a line inside a block is one crosd writes: an address and `*.linux.test` names.
fn is_ours(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words.next().is_some_and(|a| a.parse::<Ipv4Addr>().is_ok())
        && words.clone().next().is_some()
        && words.all(|n| n.ends_with(".linux.test"))
}

/// Makes `path` hold `entries` as crosd's block; a file without a block that would stay
/// without one is not touched (nor created).
pub fn write(path: &Path, entries: &[HostEntry]) -> Result<(), HostsError> {
    let old = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(HostsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let new = with_block(&old, entries);
    if new == old {
        return Ok(());
    }
    replace(path, new.as_bytes())
}

/// Writes `bytes` to a temporary file beside `path` (same mode and owner) and renames it over
/// `path`.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), HostsError> {
    let err = |source| HostsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| HostsError::NoFileName(path.to_path_buf()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".crosd-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let meta = std::fs::metadata(path).ok();
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        let mode = meta
            .as_ref()
            .map_or(0o644, |m| m.permissions().mode() & 0o7777);
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(m) = &meta {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
        }
        // On disk before the name points at it: a crash leaves the old file or the new one.
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    match std::fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            // A bind-mounted file: its inode cannot be replaced, only its contents.
            let _ = std::fs::remove_file(&tmp);
            std::fs::write(path, bytes).map_err(err)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn penguin() -> HostEntry {
        HostEntry {
            addr: Ipv4Addr::new(100, 115, 93, 5),
            names: vec![
                "penguin.termina.linux.test".into(),
                "penguin.linux.test".into(),
            ],
        }
    }

    const USER: &str = "127.0.0.1\tlocalhost\n# my comment\n::1 localhost ip6-localhost\n\n\
                        192.0.2.7 printer.lan   # spaces kept\n";

    #[test]
    fn adds_a_block_and_keeps_every_other_byte() {
        let text = with_block(USER, &[penguin()]);
        assert!(text.starts_with(USER), "{text}");
        assert_eq!(
            &text[USER.len()..],
            format!("{BEGIN}\n100.115.93.5 penguin.termina.linux.test penguin.linux.test\n{END}\n")
        );
        // Removing the entries gives back the user's file exactly.
        assert_eq!(with_block(&text, &[]), USER);
        // A file without a block stays as it is.
        assert_eq!(with_block(USER, &[]), USER);
    }

    #[test]
    fn is_idempotent_and_replaces_the_block_in_place_of_growing_it() {
        let once = with_block(USER, &[penguin()]);
        assert_eq!(with_block(&once, &[penguin()]), once);
        let other = HostEntry {
            addr: Ipv4Addr::new(100, 115, 93, 6),
            names: vec!["c1.termina.linux.test".into()],
        };
        let two = with_block(&once, &[penguin(), other.clone()]);
        assert_eq!(two.matches(BEGIN_PREFIX).count(), 1, "{two}");
        assert!(
            two.contains("100.115.93.6 c1.termina.linux.test\n"),
            "{two}"
        );
        assert_eq!(
            with_block(&two, std::slice::from_ref(&other)),
            with_block(USER, &[other])
        );
    }

    #[test]
    fn a_file_without_a_final_newline_gets_one_before_the_block() {
        let text = with_block("127.0.0.1 localhost", &[penguin()]);
        assert!(
            text.starts_with(&format!("127.0.0.1 localhost\n{BEGIN}\n")),
            "{text}"
        );
    }

    #[test]
    fn bad_blocks_are_repaired() {
        // A BEGIN whose END was lost (a crash, a hand edit): its entries go, the user's line
        // after them stays.
        let broken =
            format!("{USER}{BEGIN}\n100.115.93.9 old.termina.linux.test\n10.0.0.1 mine.lan\n");
        assert_eq!(
            with_block(&broken, &[]),
            format!("{USER}10.0.0.1 mine.lan\n")
        );
        // A stray END, and two blocks, one of them in the middle of the file.
        let messy = format!(
            "{BEGIN}\n100.115.93.9 a.termina.linux.test\n{END}\n{USER}{END}\n\
             {BEGIN}\n100.115.93.8 b.termina.linux.test\n{END}\n"
        );
        let fixed = with_block(&messy, &[penguin()]);
        assert_eq!(fixed, with_block(USER, &[penguin()]));
        assert!(!fixed.contains("a.termina") && !fixed.contains("b.termina"));
        // CRLF lines are the user's too.
        let crlf = "127.0.0.1 localhost\r\n";
        assert_eq!(with_block(&with_block(crlf, &[penguin()]), &[]), crlf);
    }

    #[test]
    fn write_replaces_the_file_atomically_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, USER).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write(&path, &[penguin()]).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        // A new inode: the file was renamed over, never truncated and rewritten.
        assert_ne!(meta.ino(), inode);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            with_block(USER, &[penguin()])
        );
        // Nothing left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["hosts"]);
        write(&path, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), USER);
    }

    #[test]
    fn write_leaves_a_file_alone_when_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        write(&path, &[]).unwrap();
        assert!(!path.exists(), "clearing a missing file must not create it");
        std::fs::write(&path, USER).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write(&path, &[]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir/hosts");
        let err = write(&path, &[penguin()]).unwrap_err();
        assert!(err.to_string().contains("no-such-dir/hosts"), "{err}");
    }
}
