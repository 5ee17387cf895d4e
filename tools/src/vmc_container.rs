//! `vmc`'s container commands (REFERENCE.md, "vmc"): LXD's start after `vmc start`, and
//! `vmc container` = CreateLxdContainer (wait for LxdContainerCreated) → SetUpLxdContainerUser →
//! StartLxdContainer (wait for ContainerStarted) → a shell, with progress while it waits.

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cros_messages::cicerone::{
    CiceroneEvent, CiceroneReply, CiceroneRequest, ContainerStatus, PrivilegeLevel,
};
use cros_messages::envelope::START_LXD_TIMEOUT;
use cros_messages::{Addr, Body};

use crate::client::{Client, DEFAULT_TIMEOUT};

/// Where the image of a new container comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A simplestreams server and an alias on it.
    Server { url: String, alias: String },
    /// A rootfs and a metadata tarball on this host, streamed into the VM.
    Tarballs { rootfs: PathBuf, metadata: PathBuf },
}

impl ImageSource {
    /// `[SERVER ALIAS | ROOTFS METADATA]`: two words that are both absolute paths are tarballs,
    /// anything else a server and alias; none is the default server and alias.
    pub fn from_args(args: &[String]) -> anyhow::Result<Self> {
        match args {
            [] => Ok(Self::Server {
                url: cros_actors::cicerone::DEFAULT_IMAGE_SERVER.into(),
                alias: cros_actors::cicerone::DEFAULT_IMAGE_ALIAS.into(),
            }),
            [a, b] if a.starts_with('/') && b.starts_with('/') => Ok(Self::Tarballs {
                rootfs: a.into(),
                metadata: b.into(),
            }),
            [url, alias] => Ok(Self::Server {
                url: url.clone(),
                alias: alias.clone(),
            }),
            _ => bail!(
                "expected IMAGE_SERVER ALIAS or ROOTFS METADATA (two absolute paths) after the \
                 container name, got {} argument(s)",
                args.len()
            ),
        }
    }
}

/// What `vmc container` was asked.
pub struct ContainerArgs {
    pub vm: String,
    pub name: String,
    pub source: ImageSource,
    pub privileged: bool,
    pub timeout: Duration,
    pub user: Option<String>,
}

fn cicerone() -> Addr {
    Addr::host("cicerone")
}

fn progress(msg: &str) {
    eprintln!("vmc: {msg}");
}

/// Starts LXD in the VM (tremplin has to have reported first; cicerone waits for it).
pub fn start_lxd(client: &mut Client, vm: &str) -> anyhow::Result<()> {
    progress(&format!("starting LXD in {vm}"));
    let started = Instant::now();
    let req = Body::Cicerone(CiceroneRequest::StartLxd { vm: vm.into() });
    client
        .call(&cicerone(), req, START_LXD_TIMEOUT)
        .with_context(|| format!("cannot start LXD in {vm}"))?;
    progress(&format!(
        "LXD is ready in {vm} ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The user the container's uid 1000 is named for: the invoking user's login name ("user"
/// for root, whose name the container's root already has).
pub fn default_username() -> String {
    let uid = nix::unistd::getuid();
    let name = std::env::var("SUDO_USER")
        .ok()
        .filter(|n| !n.is_empty() && uid.is_root())
        .or_else(|| {
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_default();
    if name.is_empty() || name == "root" {
        "user".into()
    } else {
        name
    }
}

/// Waits for the container's event that `done` picks out, showing download progress; `done`
/// returns Some(Ok) when finished, Some(Err) on failure.
fn wait_for(
    client: &mut Client,
    deadline: Instant,
    what: &str,
    mut done: impl FnMut(&CiceroneEvent) -> Option<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{wide_bar}] {pos:>3}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message("downloading");
        bar
    });
    let mut last_line = None;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(anyhow::anyhow!("timed out waiting for {what}"));
        }
        let Some(env) = client.next_event(left)? else {
            continue;
        };
        let Body::CiceroneEvent(event) = env.body else {
            continue;
        };
        if let CiceroneEvent::LxdContainerDownloading { percent, .. } = &event {
            match &bar {
                Some(bar) => bar.set_position(u64::from(*percent)),
                // A line per 10% off a terminal, not one per event.
                None if last_line != Some(percent / 10) => {
                    last_line = Some(percent / 10);
                    progress(&format!("downloading: {percent}%"));
                }
                None => {}
            }
        }
        if let Some(r) = done(&event) {
            break r;
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// Creates (unless it exists), sets up and starts the container. Returns when garcon in it
/// reported, so a shell can be opened.
pub fn create_and_start(client: &mut Client, args: &ContainerArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.timeout;
    let (vm, name) = (args.vm.as_str(), args.name.as_str());
    // Subscribe first so that no event is missed.
    client.subscribe(vec!["CiceroneEvent".into()], DEFAULT_TIMEOUT)?;
    let ours = |v: &str, c: &str| v == vm && c == name;

    let (req, files) = match &args.source {
        ImageSource::Server { url, alias } => {
            progress(&format!("creating {name} in {vm} from {alias} on {url}"));
            (
                CiceroneRequest::CreateLxdContainer {
                    vm: vm.into(),
                    container: name.into(),
                    image_server: url.clone(),
                    image_alias: alias.clone(),
                    rootfs_path: String::new(),
                    metadata_path: String::new(),
                },
                Vec::new(),
            )
        }
        ImageSource::Tarballs { rootfs, metadata } => {
            progress(&format!(
                "creating {name} in {vm} from {} and {}",
                rootfs.display(),
                metadata.display()
            ));
            let open =
                |p: &PathBuf| File::open(p).with_context(|| format!("cannot open {}", p.display()));
            (
                CiceroneRequest::CreateLxdContainer {
                    vm: vm.into(),
                    container: name.into(),
                    image_server: String::new(),
                    image_alias: String::new(),
                    rootfs_path: rootfs.display().to_string(),
                    metadata_path: metadata.display().to_string(),
                },
                vec![open(rootfs)?, open(metadata)?],
            )
        }
    };
    let fds: Vec<BorrowedFd> = files.iter().map(|f| f.as_fd()).collect();
    let started = Instant::now();
    let status = match client
        .call_with_files(&cicerone(), Body::Cicerone(req), &fds, DEFAULT_TIMEOUT)
        .with_context(|| format!("cannot create container {name} in {vm}"))?
    {
        Body::CiceroneReply(CiceroneReply::ContainerStatus { status, .. }) => status,
        other => bail!(
            "unexpected reply to CreateLxdContainer: {}",
            other.type_name()
        ),
    };
    drop(files);
    if status == ContainerStatus::Exists {
        progress(&format!("{name} exists"));
    } else {
        wait_for(
            client,
            deadline,
            "the container to be created",
            |e| match e {
                CiceroneEvent::LxdContainerCreated {
                    vm: v,
                    container: c,
                    status,
                    failure_reason,
                } if ours(v, c) => Some(match status {
                    ContainerStatus::Created | ContainerStatus::Exists => Ok(()),
                    _ => Err(anyhow::anyhow!(
                        "cannot create container {name} in {vm}: {failure_reason}"
                    )),
                }),
                _ => None,
            },
        )?;
        progress(&format!(
            "{name} created ({:.1} s)",
            started.elapsed().as_secs_f64()
        ));
    }

    let username = args.user.clone().unwrap_or_else(default_username);
    let req = CiceroneRequest::SetUpLxdContainerUser {
        vm: vm.into(),
        container: name.into(),
        username: username.clone(),
    };
    match client
        .call(&cicerone(), Body::Cicerone(req), Duration::from_secs(120))
        .with_context(|| format!("cannot set up user {username} in {name}"))?
    {
        Body::CiceroneReply(CiceroneReply::UserSetUp { username, .. }) => {
            progress(&format!("user {username} is set up in {name}"));
        }
        other => bail!(
            "unexpected reply to SetUpLxdContainerUser: {}",
            other.type_name()
        ),
    }

    progress(&format!("starting {name}"));
    let req = CiceroneRequest::StartLxdContainer {
        vm: vm.into(),
        container: name.into(),
        privilege_level: if args.privileged {
            PrivilegeLevel::Privileged
        } else {
            PrivilegeLevel::Unchanged
        },
    };
    let status = match client
        .call(&cicerone(), Body::Cicerone(req), DEFAULT_TIMEOUT)
        .with_context(|| format!("cannot start container {name} in {vm}"))?
    {
        Body::CiceroneReply(CiceroneReply::ContainerStatus { status, .. }) => status,
        other => bail!(
            "unexpected reply to StartLxdContainer: {}",
            other.type_name()
        ),
    };
    if status != ContainerStatus::Running {
        wait_for(
            client,
            deadline,
            "the container's garcon to report",
            |e| match e {
                CiceroneEvent::ContainerStarted {
                    vm: v,
                    container: c,
                    ..
                } if ours(v, c) => Some(Ok(())),
                CiceroneEvent::LxdContainerStarting {
                    vm: v,
                    container: c,
                    status: ContainerStatus::Failed,
                    failure_reason,
                } if ours(v, c) => Some(Err(anyhow::anyhow!(
                    "cannot start container {name} in {vm}: {failure_reason}"
                ))),
                _ => None,
            },
        )?;
    }
    progress(&format!(
        "{name} is running ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `vmc container-list VM`.
pub fn list(client: &mut Client, vm: &str) -> anyhow::Result<()> {
    let req = Body::Cicerone(CiceroneRequest::ListContainers { vm: vm.into() });
    match client.call(&cicerone(), req, DEFAULT_TIMEOUT)? {
        Body::CiceroneReply(CiceroneReply::Containers { containers }) => {
            if containers.is_empty() {
                println!("no containers in {vm}");
            }
            for c in containers {
                println!("{:<24} {}", c.name, c.status);
            }
            Ok(())
        }
        other => bail!("unexpected reply to ListContainers: {}", other.type_name()),
    }
}

/// `vmc container-stop` and `vmc container-delete`.
pub fn stop_or_delete(
    client: &mut Client,
    vm: &str,
    name: &str,
    delete: bool,
) -> anyhow::Result<()> {
    let (req, verb) = if delete {
        (
            CiceroneRequest::DeleteLxdContainer {
                vm: vm.into(),
                container: name.into(),
            },
            "deleted",
        )
    } else {
        (
            CiceroneRequest::StopLxdContainer {
                vm: vm.into(),
                container: name.into(),
            },
            "stopped",
        )
    };
    let timeout = crate::client::request_timeout(&Body::Cicerone(req.clone()));
    client
        .call(&cicerone(), Body::Cicerone(req), timeout)
        .with_context(|| format!("container {name} in {vm} was not {verb}"))?;
    progress(&format!("{name} {verb}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sources_from_the_words_after_the_name() {
        assert!(matches!(
            ImageSource::from_args(&[]).unwrap(),
            ImageSource::Server { url, alias } if url.contains("images.lxd.canonical.com") && alias == "debian/bookworm"
        ));
        assert_eq!(
            ImageSource::from_args(&["http://127.0.0.1:8080".into(), "busybox".into()]).unwrap(),
            ImageSource::Server {
                url: "http://127.0.0.1:8080".into(),
                alias: "busybox".into()
            }
        );
        assert_eq!(
            ImageSource::from_args(&["/a/rootfs.tar.xz".into(), "/a/meta.tar.xz".into()]).unwrap(),
            ImageSource::Tarballs {
                rootfs: "/a/rootfs.tar.xz".into(),
                metadata: "/a/meta.tar.xz".into()
            }
        );
        let err = ImageSource::from_args(&["only-one".into()]).unwrap_err();
        assert!(err.to_string().contains("got 1 argument"), "{err}");
    }
}
