//! `crosimg`: builds and verifies the termina component (ARCHITECTURE.md, "The termina
//! component and disks"), and builds and serves container images for LXD (container.rs,
//! simplestreams.rs, serve.rs).

pub mod container;
pub mod elf;
pub mod install;
pub mod kernel;
pub mod rootfs;
pub mod rootfs_config;
pub mod serve;
pub mod simplestreams;
pub mod staging;
pub mod termina;

/// What can go wrong building an image; every variant names the file or tool involved.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run {tool}: {source} (is it installed? tools/scripts/up.sh installs it)")]
    MissingTool {
        tool: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Manifest(#[from] cros_actors::imageloader::manifest::ManifestError),
    #[error(transparent)]
    Initramfs(#[from] cros_hypervisor::initramfs::InitramfsError),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a tool and returns its stdout; a non-zero exit is an error carrying its stderr.
pub(crate) fn run_tool(cmd: &mut std::process::Command) -> Result<String, ImageError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| ImageError::MissingTool {
        tool: tool.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
