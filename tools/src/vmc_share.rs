//! `vmc share`, `vmc unshare` and the shares `vmc list` shows.
//!
//! The folder is opened here, with the user's own access (O_PATH, a directory, following the
//! path as the user's shell would), and passed to seneschal with the request; crosd never
//! opens a user's path. In the VM the share is `/mnt/shared/<name>`, and in each container
//! `/mnt/chromeos/<name>` (LXD's profile maps /mnt/shared there).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, bail};
use cros_messages::seneschal::{SeneschalReply, SeneschalRequest, ServerInfo};
use cros_messages::{Addr, Body};

use crate::client::{Client, DEFAULT_TIMEOUT};

/// Where shares appear in the VM.
pub const VM_MOUNT: &str = "/mnt/shared";
/// Where they appear in containers.
pub const CONTAINER_MOUNT: &str = "/mnt/chromeos";

fn seneschal() -> Addr {
    Addr::host("seneschal")
}

/// The folder as an O_PATH directory descriptor, and its absolute, canonical path (the share's
/// label and what the next boot shares again).
fn open_folder(path: &Path) -> anyhow::Result<(OwnedFd, String)> {
    let canonical =
        std::fs::canonicalize(path).with_context(|| format!("cannot share {}", path.display()))?;
    let fd = nix::fcntl::open(
        &canonical,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("cannot share {}: not a folder you can open", path.display()))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let label = canonical
        .to_str()
        .with_context(|| format!("cannot share {}: the path is not UTF-8", path.display()))?
        .to_string();
    Ok((fd, label))
}

/// Shares `path` with VM `vm`; returns the share's name under /mnt/shared.
pub fn share(client: &mut Client, vm: &str, path: &Path, writable: bool) -> anyhow::Result<String> {
    let (fd, label) = open_folder(path)?;
    let req = SeneschalRequest::SharePath {
        vm: vm.to_string(),
        path: label,
        writable,
    };
    match client.call_with_files(
        &seneschal(),
        Body::Seneschal(req),
        &[fd.as_fd()],
        DEFAULT_TIMEOUT,
    )? {
        Body::SeneschalReply(SeneschalReply::PathShared { path }) => Ok(path),
        other => bail!("unexpected reply to SharePath: {}", other.type_name()),
    }
}

/// Withdraws a share, named by its host folder or its name under /mnt/shared.
pub fn unshare(client: &mut Client, vm: &str, path: &str) -> anyhow::Result<String> {
    // A host folder is named as it was shared (canonical); a share name is taken as it is.
    let label = match std::fs::canonicalize(path) {
        Ok(p) if path.contains('/') => p.to_string_lossy().into_owned(),
        _ => path.to_string(),
    };
    let req = SeneschalRequest::UnsharePath {
        vm: vm.to_string(),
        path: label,
    };
    match client.call(&seneschal(), Body::Seneschal(req), DEFAULT_TIMEOUT)? {
        Body::SeneschalReply(SeneschalReply::PathUnshared { path }) => Ok(path),
        other => bail!("unexpected reply to UnsharePath: {}", other.type_name()),
    }
}

/// The 9P servers (with their shares) the user may see; none when seneschal cannot say.
pub fn list(client: &mut Client) -> Vec<ServerInfo> {
    match client.call(
        &seneschal(),
        Body::Seneschal(SeneschalRequest::ListServers {}),
        DEFAULT_TIMEOUT,
    ) {
        Ok(Body::SeneschalReply(SeneschalReply::Servers { servers })) => servers,
        _ => Vec::new(),
    }
}

/// `vmc list`'s shares table.
pub fn print(servers: &[ServerInfo]) {
    let shares: Vec<_> = servers
        .iter()
        .flat_map(|s| s.shares.iter().map(move |sh| (s, sh)))
        .collect();
    println!();
    if shares.is_empty() {
        println!("no shared folders");
        return;
    }
    println!(
        "{:<16} {:<24} {:<3}  FOLDER",
        "VM", "SHARE (/mnt/shared/)", "RW"
    );
    for (server, share) in shares {
        println!(
            "{:<16} {:<24} {:<3}  {}",
            server.vm,
            share.name,
            if share.writable { "rw" } else { "ro" },
            share.path
        );
    }
}

/// What `vmc share` prints.
pub fn describe(vm: &str, name: &str, writable: bool) -> String {
    format!(
        "shared with {vm} ({}) at {VM_MOUNT}/{name} (in its containers: {CONTAINER_MOUNT}/{name})",
        if writable { "writable" } else { "read-only" }
    )
}
