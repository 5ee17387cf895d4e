//! An initramfs writer: the kernel's "newc" cpio format, uncompressed (the kernel accepts an
//! uncompressed cpio as initrd, so no external tool and no compressor is needed).
//!
//! Format (linux Documentation/driver-api/early-userspace/buffer-format.rst): each entry is a
//! 110-byte ASCII header ("070701" and 13 eight-digit hex fields), the NUL-terminated name padded
//! to 4 bytes, then the data padded to 4 bytes; the archive ends with an entry named
//! "TRAILER!!!".

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(
        "initramfs entry name '{0}' is invalid: it must be relative, non-empty, without '..' or NUL"
    )]
    BadName(String),
    #[error("initramfs entry '{0}' was added twice")]
    Duplicate(String),
    #[error("cannot read '{path}' for the initramfs: {source}")]
    ReadSource { path: PathBuf, source: io::Error },
    #[error("initramfs entry '{name}' is {size} bytes, over the newc format's 4 GiB limit")]
    TooLarge { name: String, size: u64 },
    #[error("cannot write the initramfs to '{path}': {source}")]
    Write { path: PathBuf, source: io::Error },
}

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug, Clone)]
enum Content {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    mode: u32,
    content: Content,
}

/// An initramfs under construction. Parent directories are created implicitly (mode 0755), so
/// `add_file("lib/modules/x.ko", …)` is enough. Entries are written parents first.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    entries: Vec<Entry>,
    names: BTreeSet<String>,
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory with permission bits `perm` (e.g. 0o755).
    pub fn add_dir(&mut self, name: &str, perm: u32) -> Result<&mut Self, InitramfsError> {
        self.push(name, S_IFDIR | (perm & 0o7777), Content::Dir)
    }

    /// A regular file holding `data`.
    pub fn add_file(
        &mut self,
        name: &str,
        perm: u32,
        data: Vec<u8>,
    ) -> Result<&mut Self, InitramfsError> {
        if data.len() as u64 > u64::from(u32::MAX) {
            return Err(InitramfsError::TooLarge {
                name: name.to_string(),
                size: data.len() as u64,
            });
        }
        self.push(name, S_IFREG | (perm & 0o7777), Content::File(data))
    }

    /// A regular file copied from `source` on the host.
    pub fn add_file_from(
        &mut self,
        name: &str,
        perm: u32,
        source: &Path,
    ) -> Result<&mut Self, InitramfsError> {
        let data = fs::read(source).map_err(|e| InitramfsError::ReadSource {
            path: source.to_path_buf(),
            source: e,
        })?;
        self.add_file(name, perm, data)
    }

    /// Every regular file directly inside host directory `dir`, copied under `name`.
    pub fn add_dir_files_from(
        &mut self,
        name: &str,
        dir: &Path,
    ) -> Result<&mut Self, InitramfsError> {
        let read_err = |e| InitramfsError::ReadSource {
            path: dir.to_path_buf(),
            source: e,
        };
        let mut files: Vec<_> = fs::read_dir(dir)
            .map_err(read_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_err)?;
        files.sort_by_key(|e| e.file_name());
        self.add_dir(name, 0o755)?;
        for f in files {
            let path = f.path();
            if !path.is_file() {
                continue;
            }
            let file_name = f.file_name().to_string_lossy().into_owned();
            self.add_file_from(&format!("{name}/{file_name}"), 0o644, &path)?;
        }
        Ok(self)
    }

    /// A symbolic link `name` pointing at `target`.
    pub fn add_symlink(&mut self, name: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        self.push(name, S_IFLNK | 0o777, Content::Symlink(target.to_string()))
    }

    /// A character device node (e.g. `dev/console`, 5:1, which the kernel opens for init's
    /// stdio before /init runs, so it must exist in the archive itself).
    pub fn add_char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.push(
            name,
            S_IFCHR | (perm & 0o7777),
            Content::CharDev { major, minor },
        )
    }

    /// The skeleton every crosd guest needs: /dev/console and the mount points init uses.
    pub fn with_base_layout() -> Result<Self, InitramfsError> {
        let mut fs = Self::new();
        for d in ["dev", "proc", "sys", "tmp", "run"] {
            fs.add_dir(d, 0o755)?;
        }
        fs.add_char_dev("dev/console", 0o600, 5, 1)?;
        Ok(fs)
    }

    fn push(
        &mut self,
        name: &str,
        mode: u32,
        content: Content,
    ) -> Result<&mut Self, InitramfsError> {
        let name = validate_name(name)?;
        // Implicit parents, so the kernel never sees a file whose directory does not exist.
        let mut parent = String::new();
        let components: Vec<&str> = name.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if self.names.insert(parent.clone()) {
                self.entries.push(Entry {
                    name: parent.clone(),
                    mode: S_IFDIR | 0o755,
                    content: Content::Dir,
                });
            }
        }
        if !self.names.insert(name.clone()) {
            // An explicit directory after an implicit one just sets its mode.
            if let Content::Dir = content
                && let Some(e) = self.entries.iter_mut().find(|e| e.name == name)
                && matches!(e.content, Content::Dir)
            {
                e.mode = mode;
                return Ok(self);
            }
            return Err(InitramfsError::Duplicate(name));
        }
        self.entries.push(Entry {
            name,
            mode,
            content,
        });
        Ok(self)
    }

    /// The archive bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, e) in self.entries.iter().enumerate() {
            let (data, rdev): (&[u8], (u32, u32)) = match &e.content {
                Content::Dir => (&[], (0, 0)),
                Content::File(d) => (d, (0, 0)),
                Content::Symlink(t) => (t.as_bytes(), (0, 0)),
                Content::CharDev { major, minor } => (&[], (*major, *minor)),
            };
            let nlink = if matches!(e.content, Content::Dir) {
                2
            } else {
                1
            };
            write_entry(&mut out, ino as u32 + 1, e.mode, nlink, rdev, &e.name, data);
        }
        write_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out
    }

    /// Writes the archive to `path` (atomically and durably: see
    /// [`crate::fsutil::write_atomically`]).
    pub fn write_to(&self, path: &Path) -> Result<(), InitramfsError> {
        crate::fsutil::write_atomically(path, &self.to_bytes(), 0o644).map_err(|e| {
            InitramfsError::Write {
                path: path.to_path_buf(),
                source: e,
            }
        })
    }
}

fn validate_name(name: &str) -> Result<String, InitramfsError> {
    let trimmed = name.trim_start_matches("./").trim_end_matches('/');
    let bad = trimmed.is_empty()
        || trimmed.starts_with('/')
        || trimmed.contains('\0')
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == ".." || c == ".");
    if bad {
        return Err(InitramfsError::BadName(name.to_string()));
    }
    Ok(trimmed.to_string())
}

fn write_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        ino,
        mode,
        0, // uid: root
        0, // gid: root
        nlink,
        0, // mtime: fixed, so the same inputs give the same bytes
        data.len(),
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize,
        0, // check: unused by newc
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back into (name, mode, rdevmajor, rdevminor, data): the reader half
    /// used to check the writer.
    fn parse(bytes: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0;
        let field = |b: &[u8], i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&b[6 + i * 8..6 + i * 8 + 8]).unwrap(),
                16,
            )
            .unwrap()
        };
        loop {
            let h = &bytes[off..off + 110];
            assert_eq!(&h[..6], b"070701");
            let mode = field(h, 1);
            let size = field(h, 6) as usize;
            let (rmaj, rmin) = (field(h, 9), field(h, 10));
            let namesize = field(h, 11) as usize;
            let name = std::str::from_utf8(&bytes[off + 110..off + 110 + namesize - 1])
                .unwrap()
                .to_string();
            off = (off + 110 + namesize).next_multiple_of(4);
            let data = bytes[off..off + size].to_vec();
            off = (off + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(off, bytes.len());
                return out;
            }
            out.push((name, mode, rmaj, rmin, data));
        }
    }

    #[test]
    fn round_trips_files_dirs_devices_and_symlinks() {
        let mut fs = Initramfs::with_base_layout().unwrap();
        fs.add_file("init", 0o755, b"#!binary".to_vec()).unwrap();
        fs.add_file("lib/modules/crosd/a.ko", 0o644, vec![1, 2, 3])
            .unwrap();
        fs.add_symlink("bin/sh", "/init").unwrap();
        let entries = parse(&fs.to_bytes());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "proc",
                "sys",
                "tmp",
                "run",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/crosd",
                "lib/modules/crosd/a.ko",
                "bin",
                "bin/sh"
            ]
        );
        let console = &entries[5];
        assert_eq!((console.1, console.2, console.3), (S_IFCHR | 0o600, 5, 1));
        assert_eq!(entries[6].1, S_IFREG | 0o755);
        assert_eq!(entries[10].4, vec![1, 2, 3]);
        assert_eq!(entries[12].1, S_IFLNK | 0o777);
        assert_eq!(entries[12].4, b"/init");
    }

    #[test]
    fn rejects_bad_names_and_duplicates() {
        let mut fs = Initramfs::new();
        for bad in ["", "/abs", "a/../b", "a//b", "."] {
            assert!(
                matches!(fs.add_dir(bad, 0o755), Err(InitramfsError::BadName(_))),
                "{bad:?} accepted"
            );
        }
        fs.add_file("x", 0o644, vec![]).unwrap();
        assert!(matches!(
            fs.add_file("x", 0o644, vec![]),
            Err(InitramfsError::Duplicate(_))
        ));
        // An explicit directory over an implicit parent only changes its mode.
        fs.add_file("d/f", 0o644, vec![]).unwrap();
        fs.add_dir("d", 0o700).unwrap();
        assert_eq!(parse(&fs.to_bytes())[1].1, S_IFDIR | 0o700);
    }

    #[test]
    fn missing_source_file_names_the_path() {
        let err = Initramfs::new()
            .add_file_from("init", 0o755, Path::new("/nonexistent/guest-init"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/guest-init"), "{err}");
    }
}
