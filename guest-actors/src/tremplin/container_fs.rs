//! A container's files through LXD's SFTP endpoint, for SetUpUser: the whole set-up (four
//! account files read and written, a home directory, the linger flag) is one SFTP conversation,
//! one `lxd forkfile` process in the VM, where LXD's file API starts one per request.
//!
//! Ids and paths are the container's: LXD's SFTP server works inside the container's view of
//! its filesystem, running or stopped, as its file API does.

use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::AsyncWriteExt;

use super::lxd_client::{LxdClient, LxdError};

/// How long one SFTP request may take before the conversation is given up.
const REQUEST_TIMEOUT_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("opening LXD's SFTP connection to {instance}: {source}")]
    Connect {
        instance: String,
        #[source]
        source: LxdError,
    },
    #[error("starting the SFTP conversation with {instance}: {source}")]
    Handshake {
        instance: String,
        #[source]
        source: SftpError,
    },
    #[error("{op} {path}: {source}")]
    Op {
        op: &'static str,
        path: String,
        #[source]
        source: SftpError,
    },
}

/// Who owns a file, and its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

pub struct ContainerFs {
    sftp: SftpSession,
}

fn is_missing(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

impl ContainerFs {
    pub async fn open(lxd: &LxdClient, instance: &str) -> Result<Self, FsError> {
        let stream = lxd
            .sftp(instance)
            .await
            .map_err(|source| FsError::Connect {
                instance: instance.to_string(),
                source,
            })?;
        let sftp = SftpSession::new(stream)
            .await
            .map_err(|source| FsError::Handshake {
                instance: instance.to_string(),
                source,
            })?;
        sftp.set_timeout(REQUEST_TIMEOUT_SECS);
        Ok(Self { sftp })
    }

    fn op<'a>(op: &'static str, path: &'a str) -> impl FnOnce(SftpError) -> FsError + 'a {
        move |source| FsError::Op {
            op,
            path: path.to_string(),
            source,
        }
    }

    /// A file's bytes, or `None` when it does not exist.
    pub async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, FsError> {
        match self.sftp.read(path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(Self::op("reading", path)(e)),
        }
    }

    pub async fn exists(&self, path: &str) -> Result<bool, FsError> {
        self.sftp
            .try_exists(path)
            .await
            .map_err(Self::op("stat", path))
    }

    /// Writes `contents` over the existing file at `path`, in place: it keeps its owner and mode.
    pub async fn overwrite(&self, path: &str, contents: &[u8]) -> Result<(), FsError> {
        let mut file = self
            .sftp
            .open_with_flags(
                path,
                OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
            )
            .await
            .map_err(Self::op("opening", path))?;
        file.write_all(contents)
            .await
            .map_err(|e| Self::op("writing", path)(SftpError::IO(e.to_string())))?;
        file.shutdown()
            .await
            .map_err(|e| Self::op("closing", path)(SftpError::IO(e.to_string())))
    }

    /// Writes the file at `path` (created when missing) and gives it `owner`.
    pub async fn create(&self, path: &str, contents: &[u8], owner: Owner) -> Result<(), FsError> {
        self.overwrite(path, contents).await?;
        self.set_owner(path, owner).await
    }

    /// Creates a directory (an existing one is left as it is) owned by `owner`.
    pub async fn mkdir(&self, path: &str, owner: Owner) -> Result<(), FsError> {
        if let Err(e) = self.sftp.create_dir(path).await {
            // SFTP v3 reports an existing directory as a plain failure: look.
            if self.exists(path).await.unwrap_or(false) {
                return Ok(());
            }
            return Err(Self::op("creating", path)(e));
        }
        self.set_owner(path, owner).await
    }

    /// Owner and mode in two SETSTATs: LXD 5.0's SFTP server (Go's pkg/sftp of its time) reads
    /// a SETSTAT's permissions before its uid and gid, against the protocol's order, so one
    /// request carrying both is misread (the uid becomes the mode, the mode the gid).
    async fn set_owner(&self, path: &str, owner: Owner) -> Result<(), FsError> {
        let ids = FileAttributes {
            uid: Some(owner.uid),
            gid: Some(owner.gid),
            ..FileAttributes::empty()
        };
        let mode = FileAttributes {
            permissions: Some(owner.mode),
            ..FileAttributes::empty()
        };
        self.sftp
            .set_metadata(path, ids)
            .await
            .map_err(Self::op("setting the owner of", path))?;
        self.sftp
            .set_metadata(path, mode)
            .await
            .map_err(Self::op("setting the mode of", path))
    }
}
