//! A component's `manifest.json`: its name, version and the size and SHA-256 of every file.
//! imageloader refuses a component whose files do not match, naming the file.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
/// Manifest format version written by this build.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the component directory (no directories).
    pub name: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    /// `uname -r` of the kernel in the component.
    pub kernel_release: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("component file {name} is missing from {dir}")]
    Missing { name: String, dir: PathBuf },
    #[error("component file {name} has {actual} bytes, the manifest says {expected}")]
    Size {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "component file {name} does not match its SHA-256 in the manifest (tampered or corrupt)"
    )]
    Hash { name: String },
    #[error("manifest lists {name:?}, which is not a plain file name")]
    BadName { name: String },
}

/// SHA-256 of a file's contents, lower-case hex, and its length.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let digest = hasher.finalize();
    Ok((digest.iter().map(|b| format!("{b:02x}")).collect(), len))
}

fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl Manifest {
    /// Hashes `files` (names inside `dir`) into a manifest.
    pub fn build(
        dir: &Path,
        name: &str,
        version: &str,
        kernel_release: &str,
        files: &[&str],
    ) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::new();
        for &f in files {
            if !plain_name(f) {
                return Err(ManifestError::BadName {
                    name: f.to_string(),
                });
            }
            let path = dir.join(f);
            let (sha256, size) =
                sha256_file(&path).map_err(|source| ManifestError::Read { path, source })?;
            entries.push(ManifestFile {
                name: f.to_string(),
                size,
                sha256,
            });
        }
        Ok(Manifest {
            format: MANIFEST_FORMAT,
            name: name.into(),
            version: version.into(),
            kernel_release: kernel_release.into(),
            files: entries,
        })
    }

    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(ManifestError::Parse {
                path,
                reason: format!("format {} (this build reads {MANIFEST_FORMAT})", m.format),
            });
        }
        if let Some(bad) = m.files.iter().find(|f| !plain_name(&f.name)) {
            return Err(ManifestError::BadName {
                name: bad.name.clone(),
            });
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text + "\n").map_err(|source| ManifestError::Write { path, source })
    }

    /// Checks every listed file's size and hash.
    pub fn verify(&self, dir: &Path) -> Result<(), ManifestError> {
        for f in &self.files {
            let path = dir.join(&f.name);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ManifestError::Missing {
                        name: f.name.clone(),
                        dir: dir.to_path_buf(),
                    });
                }
                Err(source) => return Err(ManifestError::Read { path, source }),
            };
            // The size check is cheap and catches truncation before hashing gigabytes.
            if meta.len() != f.size {
                return Err(ManifestError::Size {
                    name: f.name.clone(),
                    expected: f.size,
                    actual: meta.len(),
                });
            }
            let (sha, _) =
                sha256_file(&path).map_err(|source| ManifestError::Read { path, source })?;
            if sha != f.sha256 {
                return Err(ManifestError::Hash {
                    name: f.name.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn has_file(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.name == name)
    }
}

/// Loads `dir`'s manifest and verifies every file.
pub fn verify_component(dir: &Path) -> Result<Manifest, ManifestError> {
    let m = Manifest::load(dir)?;
    m.verify(dir)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vm_kernel"), b"kernel bytes").unwrap();
        std::fs::write(dir.path().join("vm_rootfs.img"), vec![7u8; 3 << 20]).unwrap();
        let m = Manifest::build(
            dir.path(),
            "cros-termina",
            "1.0",
            "6.1.0-test",
            &["vm_kernel", "vm_rootfs.img"],
        )
        .unwrap();
        m.write(dir.path()).unwrap();
        (dir, m)
    }

    #[test]
    fn round_trip_and_verify() {
        let (dir, m) = component();
        assert_eq!(verify_component(dir.path()).unwrap(), m);
        // Known digest: SHA-256("kernel bytes").
        let (sha, len) = sha256_file(&dir.path().join("vm_kernel")).unwrap();
        assert_eq!(len, 12);
        assert_eq!(sha.len(), 64);
        assert_eq!(m.files[0].sha256, sha);
    }

    #[test]
    fn tampered_file_is_named() {
        let (dir, _) = component();
        let p = dir.path().join("vm_rootfs.img");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        let err = verify_component(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Hash { .. }), "{err}");
        assert!(err.to_string().contains("vm_rootfs.img"), "{err}");
    }

    #[test]
    fn truncated_and_missing_files_are_named() {
        let (dir, _) = component();
        std::fs::write(dir.path().join("vm_kernel"), b"short").unwrap();
        let err = verify_component(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("vm_kernel") && err.to_string().contains("12"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("vm_kernel")).unwrap();
        assert!(matches!(
            verify_component(dir.path()).unwrap_err(),
            ManifestError::Missing { .. }
        ));
    }

    #[test]
    fn manifest_with_path_names_is_refused() {
        let (dir, mut m) = component();
        m.files[0].name = "../../etc/passwd".into();
        m.write(dir.path()).unwrap();
        assert!(matches!(
            verify_component(dir.path()).unwrap_err(),
            ManifestError::BadName { .. }
        ));
        std::fs::write(dir.path().join(MANIFEST_FILE), "{not json").unwrap();
        assert!(matches!(
            verify_component(dir.path()).unwrap_err(),
            ManifestError::Parse { .. }
        ));
    }
}
