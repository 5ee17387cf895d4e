//! The files a client names for an export or import, as concierge gets them.
//!
//! A client opens them itself and passes the descriptors with the request (SCM_RIGHTS; the
//! bus's [`ClientTable`](crate::bus::clients::ClientTable) hands them to concierge), so crosd
//! reads and writes only what that user could: it never opens a client's path with its own
//! privileges. The order is fixed per request: the export target or import stream first, then
//! the digest file when the request names one. The paths in the request only label the files
//! in messages and traces.
//!
//! Whatever comes in is checked before any work starts: every file must be a regular file
//! (a FIFO or a device would block or never end), opened for what it is used for, and a digest
//! at most [`MAX_DIGEST_FILE`] bytes, read at once so a bad one is refused in the reply.
//!
//! Without passed files, crosd opens the paths itself for an administrator only (root or
//! crosd's user, e.g. `crosmsg send`), with the same checks: the import stream and digest
//! opened non-blocking (a FIFO does not hang the open), the export written to a new
//! `<path>.partial` that is renamed over `path` once complete, refusing an existing `path`
//! unless `force`. Any other caller gets an error saying the files must be passed.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cros_messages::{CrosError, ErrorKind};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::disk_op;
use super::disk_requests::absolute;
use super::owner::Caller;

/// Largest digest file accepted: a SHA-256 line is 64 hex digits, two spaces and a file name.
pub const MAX_DIGEST_FILE: u64 = 512;

/// Where an export writes.
pub struct ExportTarget {
    pub out: File,
    /// `path` from the request, for messages and the digest line.
    pub out_label: PathBuf,
    pub digest: Option<(File, PathBuf)>,
    /// Files crosd created itself (administrator, no passed files): `(partial, final)` pairs
    /// renamed once the export is complete, and removed if it fails.
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// Whether a rename may replace an existing file.
    pub replace: bool,
}

/// What an import reads.
pub struct ImportSource {
    pub src: File,
    pub src_label: PathBuf,
    /// The SHA-256 the digest file names, and the digest file's label.
    pub digest: Option<(String, PathBuf)>,
}

fn denied_paths(what: &str) -> CrosError {
    CrosError::new(
        ErrorKind::PermissionDenied,
        format!(
            "{what}: the files must be opened by the client and passed with the request (use \
             vmc); crosd opens a client's paths itself only for root"
        ),
    )
}

fn wrong_count(what: &str, expected: usize, got: usize) -> CrosError {
    CrosError::invalid(format!(
        "{what} takes {expected} passed file(s) (the file, then the digest when one is named); \
         {got} were passed"
    ))
}

/// What a passed file must have been opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// A regular file opened for `access`, or why not.
pub fn check_file(file: &File, access: Access, what: &str, label: &Path) -> Result<(), CrosError> {
    let bad = |why: String| CrosError::invalid(format!("{what} {}: {why}", label.display()));
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat it: {e}")))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(bad(format!("{kind}; only a regular file will do")));
    }
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)
        .map_err(|e| bad(format!("cannot read its open flags: {e}")))?;
    let mode = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
    let (ok, how) = match access {
        Access::Read => (mode != OFlag::O_WRONLY, "reading"),
        Access::Write => (mode != OFlag::O_RDONLY, "writing"),
        Access::ReadWrite => (mode == OFlag::O_RDWR, "reading and writing"),
    };
    if !ok {
        return Err(bad(format!("not opened for {how}")));
    }
    Ok(())
}

pub fn identity(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Opens a client's path for reading, for an administrator: non-blocking, so a FIFO cannot
/// hang the open (it is refused as not a regular file right after).
fn open_for_admin(path: &Path, what: &str) -> Result<File, CrosError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::InvalidArgument
            };
            CrosError::new(kind, format!("{what} {}: {e}", path.display()))
        })
}

/// The SHA-256 a `sha256sum`-style digest file names, reading at most [`MAX_DIGEST_FILE`] bytes.
pub fn read_digest(file: &File, label: &Path) -> Result<String, CrosError> {
    check_file(file, Access::Read, "digest file", label)?;
    let mut text = Vec::new();
    // From the start, whatever the client's offset: pread through a cloned handle would share
    // it anyway, and this file is small and read once.
    let mut f = file;
    std::io::Seek::rewind(&mut f)
        .and_then(|_| f.take(MAX_DIGEST_FILE + 1).read_to_end(&mut text))
        .map_err(|e| CrosError::invalid(format!("digest file {}: {e}", label.display())))?;
    if text.len() as u64 > MAX_DIGEST_FILE {
        return Err(CrosError::invalid(format!(
            "digest file {}: longer than {MAX_DIGEST_FILE} bytes, so not a digest",
            label.display()
        )));
    }
    disk_op::parse_digest(&String::from_utf8_lossy(&text)).map_err(|reason| {
        CrosError::invalid(format!("bad digest file {}: {reason}", label.display()))
    })
}

/// The import stream and digest, from `passed` files or (administrator) the paths.
pub fn import_source(
    caller: &Caller,
    passed: Vec<OwnedFd>,
    path: &str,
    digest_path: Option<&str>,
) -> Result<ImportSource, CrosError> {
    const WHAT: &str = "ImportDiskImage";
    let src_label = absolute(path, "import file")?;
    let digest_label = digest_path
        .map(|d| absolute(d, "digest file"))
        .transpose()?;
    let expected = 1 + usize::from(digest_label.is_some());
    let (src, digest_file) = if passed.is_empty() {
        if !caller.admin {
            return Err(denied_paths(WHAT));
        }
        let src = open_for_admin(&src_label, "import file")?;
        let digest = digest_label
            .as_deref()
            .map(|d| open_for_admin(d, "digest file"))
            .transpose()?;
        (src, digest)
    } else if passed.len() != expected {
        return Err(wrong_count(WHAT, expected, passed.len()));
    } else {
        let mut files = passed.into_iter().map(File::from);
        let src = files.next().ok_or_else(|| wrong_count(WHAT, expected, 0))?;
        (src, files.next())
    };
    check_file(&src, Access::Read, "import file", &src_label)?;
    let digest = match (digest_file, digest_label) {
        (Some(f), Some(label)) => Some((read_digest(&f, &label)?, label)),
        _ => None,
    };
    Ok(ImportSource {
        src,
        src_label,
        digest,
    })
}

/// The export target and digest, from `passed` files or (administrator) new partial files
/// beside the paths. `disk` is the disk being exported, `disks_dir` where disks live: neither
/// may be written.
pub fn export_target(
    caller: &Caller,
    passed: Vec<OwnedFd>,
    path: &str,
    digest_path: Option<&str>,
    force: bool,
    disk: &Path,
    disks_dir: &Path,
) -> Result<ExportTarget, CrosError> {
    const WHAT: &str = "ExportDiskImage";
    let out_label = absolute(path, "export file")?;
    let digest_label = digest_path
        .map(|d| absolute(d, "digest file"))
        .transpose()?;
    let expected = 1 + usize::from(digest_label.is_some());
    let mut renames = Vec::new();
    let (out, digest_file) = if passed.is_empty() {
        if !caller.admin {
            return Err(denied_paths(WHAT));
        }
        let targets: Vec<&PathBuf> = std::iter::once(&out_label)
            .chain(digest_label.as_ref())
            .collect();
        if targets.iter().any(|p| p.parent() == Some(disks_dir)) {
            return Err(CrosError::invalid(format!(
                "export file {path:?}: not into {}, where it could replace a disk",
                disks_dir.display()
            )));
        }
        if targets.iter().any(|p| p.as_path() == disk) || digest_label.as_ref() == Some(&out_label)
        {
            return Err(CrosError::invalid(format!(
                "export file {path:?} and digest file must differ from each other and from the disk"
            )));
        }
        let mut opened = Vec::new();
        for target in targets {
            if !force && target.exists() {
                return Err(CrosError::precondition(format!(
                    "{} exists: not replacing it unless forced",
                    target.display()
                )));
            }
            let partial = disk_op::partial_path(target);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&partial)
                .map_err(|e| CrosError::invalid(format!("create {}: {e}", partial.display())));
            match file {
                Ok(f) => {
                    renames.push((partial, target.clone()));
                    opened.push(f);
                }
                Err(e) => {
                    for (p, _) in &renames {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(e);
                }
            }
        }
        let mut opened = opened.into_iter();
        let out = opened
            .next()
            .ok_or_else(|| wrong_count(WHAT, expected, 0))?;
        (out, opened.next())
    } else if passed.len() != expected {
        return Err(wrong_count(WHAT, expected, passed.len()));
    } else {
        let mut files = passed.into_iter().map(File::from);
        let out = files.next().ok_or_else(|| wrong_count(WHAT, expected, 0))?;
        (out, files.next())
    };
    let target = ExportTarget {
        out,
        out_label,
        digest: digest_file.zip(digest_label),
        renames,
        replace: force,
    };
    // From here on a refusal must not leave crosd's own partial files behind.
    let checked = (|| {
        check_file(&target.out, Access::Write, "export file", &target.out_label)?;
        if let Some((f, label)) = &target.digest {
            check_file(f, Access::Write, "digest file", label)?;
        }
        let disk_id = std::fs::metadata(disk).ok().map(|m| (m.dev(), m.ino()));
        let ids: Vec<_> = std::iter::once(&target.out)
            .chain(target.digest.as_ref().map(|(f, _)| f))
            .map(identity)
            .collect();
        if ids.iter().any(|id| id.is_some() && *id == disk_id)
            || (ids.len() == 2 && ids[0] == ids[1])
        {
            return Err(CrosError::invalid(format!(
                "export file {path:?} and digest file must differ from each other and from the disk"
            )));
        }
        Ok(())
    })();
    if let Err(e) = checked {
        for (p, _) in &target.renames {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Caller {
        Caller {
            uid: 4321,
            admin: false,
        }
    }

    fn fd(f: File) -> OwnedFd {
        f.into()
    }

    #[test]
    fn a_user_must_pass_files_and_they_must_be_regular_and_small() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in.zst");
        std::fs::write(&src, b"stream").unwrap();
        let label = src.to_str().unwrap();
        let err = import_source(&user(), Vec::new(), label, None)
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        assert!(err.message.contains("vmc"), "{err}");

        let open = |p: &Path| fd(File::open(p).unwrap());
        let ok = import_source(&user(), vec![open(&src)], label, None).unwrap();
        assert!(ok.digest.is_none());
        // /dev/zero as the digest is refused at once, without reading it.
        let zero = Path::new("/dev/zero");
        let err = import_source(
            &user(),
            vec![open(&src), open(zero)],
            label,
            Some("/dev/zero"),
        )
        .err()
        .unwrap();
        assert!(err.message.contains("a device"), "{err}");
        // A FIFO as the stream: refused, never read.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let err = import_source(&user(), vec![fd(f)], fifo.to_str().unwrap(), None)
            .err()
            .unwrap();
        assert!(err.message.contains("FIFO"), "{err}");
        // A digest file too long to be one.
        let big = dir.path().join("big.sha256");
        std::fs::write(&big, "a".repeat(4096)).unwrap();
        let err = import_source(&user(), vec![open(&src), open(&big)], label, big.to_str())
            .err()
            .unwrap();
        assert!(err.message.contains("longer than 512"), "{err}");
        let good = dir.path().join("good.sha256");
        std::fs::write(&good, format!("{}  in.zst\n", "ab".repeat(32))).unwrap();
        let ok =
            import_source(&user(), vec![open(&src), open(&good)], label, good.to_str()).unwrap();
        assert_eq!(ok.digest.unwrap().0, "ab".repeat(32));
        // The count must match the request.
        let err = import_source(&user(), vec![open(&src)], label, good.to_str())
            .err()
            .unwrap();
        assert!(err.message.contains("takes 2"), "{err}");
    }

    #[test]
    fn export_targets_must_be_writable_and_an_admin_never_replaces_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let disks = dir.path().join("disks");
        std::fs::create_dir_all(&disks).unwrap();
        let disk = disks.join("termina.img");
        std::fs::write(&disk, b"disk").unwrap();
        let out = dir.path().join("out.zst");
        std::fs::write(&out, b"precious").unwrap();
        let label = out.to_str().unwrap();
        // Passed read-only: refused.
        let ro = fd(File::open(&out).unwrap());
        let err = export_target(&user(), vec![ro], label, None, false, &disk, &disks)
            .err()
            .unwrap();
        assert!(err.message.contains("not opened for writing"), "{err}");
        // The disk itself, passed writable (only root could): refused.
        let rw = fd(std::fs::OpenOptions::new().write(true).open(&disk).unwrap());
        let err = export_target(&user(), vec![rw], label, None, false, &disk, &disks)
            .err()
            .unwrap();
        assert!(err.message.contains("differ"), "{err}");

        let admin = Caller::daemon();
        let err = export_target(&admin, Vec::new(), label, None, false, &disk, &disks)
            .err()
            .unwrap();
        assert!(err.message.contains("not replacing"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"precious");
        let t = export_target(&admin, Vec::new(), label, None, true, &disk, &disks).unwrap();
        assert_eq!(t.renames, vec![(disk_op::partial_path(&out), out.clone())]);
        assert!(t.replace);
    }
}
