//! Loading kernel modules from files with finit_module(2), without modprobe or module tools.
//!
//! Modules are loaded in an explicit order (dependencies first): the guest image carries a
//! `load-order` file beside the .ko files (written by tools/scripts/guest-kernel.sh from the
//! kernel's modules.dep), so no dependency resolution happens in the guest.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the file, beside the modules, listing module files in load order.
pub const LOAD_ORDER_FILE: &str = "load-order";

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("cannot open kernel module '{path}': {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("kernel refused module '{path}': {source}{hint}")]
    Load {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    #[error("module parameters for '{path}' contain a NUL byte")]
    BadParams { path: PathBuf },
    #[error("cannot read the module load order '{path}': {source}")]
    LoadOrder { path: PathBuf, source: io::Error },
    #[error("module load order '{path}' names '{entry}', which is not a plain .ko file name")]
    BadLoadOrderEntry { path: PathBuf, entry: String },
}

/// What loading one module did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Loaded,
    /// The kernel already had it (EEXIST): loaded earlier or built in under the same name.
    AlreadyLoaded,
}

/// Loads the module in file `path` (an uncompressed .ko) with parameters `params`
/// (e.g. "" or "debug=1").
pub fn load_module(path: &Path, params: &str) -> Result<Loaded, KmodError> {
    let file = File::open(path).map_err(|source| KmodError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let params = CString::new(params).map_err(|_| KmodError::BadParams {
        path: path.to_path_buf(),
    })?;
    // SAFETY: finit_module reads the open fd and the NUL-terminated params string, both alive
    // for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(Loaded::Loaded);
    }
    let err = io::Error::last_os_error();
    let hint = match err.raw_os_error() {
        Some(libc::EEXIST) => return Ok(Loaded::AlreadyLoaded),
        Some(libc::ENOENT) => " (a symbol it needs is missing: is a dependency not loaded yet?)",
        Some(libc::ENOEXEC) => {
            " (not a module for this kernel: compressed, or built for another kernel release?)"
        }
        Some(libc::EPERM) => " (needs CAP_SYS_MODULE, or module loading is disabled)",
        _ => "",
    };
    Err(KmodError::Load {
        path: path.to_path_buf(),
        source: err,
        hint,
    })
}

/// The module files of `dir`, in the order of its `load-order` file.
pub fn load_order(dir: &Path) -> Result<Vec<PathBuf>, KmodError> {
    let order_path = dir.join(LOAD_ORDER_FILE);
    let text = std::fs::read_to_string(&order_path).map_err(|source| KmodError::LoadOrder {
        path: order_path.clone(),
        source,
    })?;
    parse_load_order(&text, &order_path)
        .map(|names| names.into_iter().map(|n| dir.join(n)).collect())
}

fn parse_load_order(text: &str, path: &Path) -> Result<Vec<String>, KmodError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|entry| {
            let plain = !entry.contains('/') && entry != ".." && entry.ends_with(".ko");
            if plain {
                Ok(entry.to_string())
            } else {
                Err(KmodError::BadLoadOrderEntry {
                    path: path.to_path_buf(),
                    entry: entry.to_string(),
                })
            }
        })
        .collect()
}

/// Loads every module of `dir` in its load order; stops at the first failure. Returns each
/// module's file and outcome.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, Loaded)>, KmodError> {
    load_order(dir)?
        .into_iter()
        .map(|path| load_module(&path, "").map(|outcome| (path, outcome)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_keeps_order_and_skips_comments() {
        let names = parse_load_order(
            "# deps first\nvirtio_ring.ko\n\n virtio.ko \nvsock.ko\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(names, ["virtio_ring.ko", "virtio.ko", "vsock.ko"]);
    }

    #[test]
    fn load_order_rejects_paths_and_other_files() {
        for bad in ["../evil.ko", "/lib/x.ko", "sub/x.ko", "x.ko.xz"] {
            let err = parse_load_order(bad, Path::new("/m/load-order")).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn missing_module_file_names_the_file() {
        let err = load_module(Path::new("/nonexistent/vsock.ko"), "").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vsock.ko"), "{err}");
    }

    /// A file that is not a module is refused by the real syscall, with the module named.
    /// (In an unprivileged build container the kernel answers EPERM instead of ENOEXEC; both are
    /// errors naming the file, which is what is asserted.)
    #[test]
    fn non_module_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake.ko");
        std::fs::write(&fake, b"not an ELF module").unwrap();
        let err = load_module(&fake, "").unwrap_err();
        assert!(matches!(err, KmodError::Load { .. }), "{err}");
        assert!(err.to_string().contains("fake.ko"), "{err}");
    }

    #[test]
    fn missing_load_order_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("load-order"), "{err}");
    }
}
