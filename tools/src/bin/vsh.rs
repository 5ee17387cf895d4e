//! vsh: a shell (or one command) in a VM, over vsock to its vshd. Exits with the remote
//! command's exit code (123 when none came).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use cros_messages::cicerone::CiceroneRequest;
use cros_messages::concierge::{ConciergeReply, ConciergeRequest, VmStatus};
use cros_messages::vsh::NO_EXIT_STATUS;
use cros_messages::{Addr, Body, ports};
use cros_tools::client;
use cros_tools::vsh_client::{self, DEFAULT_SETUP_TIMEOUT, Endpoint, ShellRequest};

/// Opens a shell, or runs one command, in a crosd VM.
///
/// With a terminal on stdin the session gets a pty (raw local terminal, window size and
/// signals forwarded); otherwise stdin, stdout and stderr are plain pipes.
#[derive(Parser, Debug)]
#[command(name = "vsh", version)]
struct Args {
    /// The VM to reach: crosd's concierge says where its vsock is (GetVmInfo), unless --socket
    /// names the socket directly.
    #[arg(long = "vm_name")]
    vm_name: String,
    /// Owner of the VM (crosd's per-user namespace); empty for the default owner.
    #[arg(long = "owner_id", default_value = "")]
    owner_id: String,
    /// Open the shell in this container of the VM instead of the VM itself.
    #[arg(long = "target_container", default_value = "")]
    target_container: String,
    /// User to run as (default: vshd's default, root in the VM).
    #[arg(long, default_value = "")]
    user: String,
    /// Working directory for the command (default: the user's home).
    #[arg(long, default_value = "")]
    cwd: String,
    /// Reach vshd directly: a VM's hybrid-vsock socket path (joined to guest port --port with
    /// CONNECT), or `unix:PATH` for a vshd listening on a Unix socket.
    #[arg(long, visible_alias = "uds", value_name = "UDS")]
    socket: Option<String>,
    /// crosd's control socket, for resolving --vm_name [default: $CROSD_SOCKET, else
    /// /run/crosd/crosd.sock].
    #[arg(long = "crosd-socket", value_name = "PATH")]
    crosd_socket: Option<std::path::PathBuf>,
    /// Guest vsock port of vshd (with a hybrid-vsock --socket).
    #[arg(long, default_value_t = ports::VSHD)]
    port: u32,
    /// Force a pty even when stdin is not a terminal.
    #[arg(short = 't', long, conflicts_with = "no_pty")]
    pty: bool,
    /// Never allocate a pty: plain pipes, stdout and stderr kept apart.
    #[arg(short = 'T', long = "no-pty")]
    no_pty: bool,
    /// The command and its arguments; a login shell when empty.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn run(args: Args) -> anyhow::Result<i32> {
    let stream = if args.target_container.is_empty() {
        let endpoint = match &args.socket {
            Some(socket) => Endpoint::parse(socket, args.port),
            None => resolve_vm(&args)?,
        };
        endpoint
            .connect(DEFAULT_SETUP_TIMEOUT)
            .with_context(|| format!("cannot reach vshd of VM '{}'", args.vm_name))?
    } else {
        container_shell(&args)?
    };
    let shell = ShellRequest {
        target_container: args.target_container.clone(),
        user: args.user,
        cwd: args.cwd,
        argv: args.command,
        pty: match (args.pty, args.no_pty) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
    };
    let exit = vsh_client::run_on_local_terminal(stream, &shell)?;
    if !exit.reported {
        eprintln!("vsh: the connection ended without an exit status");
    }
    Ok(exit.code)
}

/// A shell in a container, as Crostini's vsh gets one: cicerone asks the container's garcon to
/// start vshd, which dials the host back. crosd accepts that connection (it is in the VM's run
/// directory, which a user does not see) and relays it to our end of a socket pair passed with
/// the request, so any user reaches the containers of their own VMs.
fn container_shell(args: &Args) -> anyhow::Result<std::os::unix::net::UnixStream> {
    if args.socket.is_some() {
        bail!("--socket reaches a VM's own vshd; leave it out with --target_container");
    }
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().context("cannot make a socket pair")?;
    let mut crosd =
        client::Client::connect_default(args.crosd_socket.as_deref()).with_context(|| {
            format!(
                "cannot reach crosd for container '{}'",
                args.target_container
            )
        })?;
    let request = Body::Cicerone(CiceroneRequest::LaunchVshd {
        vm: args.vm_name.clone(),
        container: args.target_container.clone(),
        port: 0,
    });
    let cicerone = Addr::host("cicerone");
    crosd
        .call_with_files(
            &cicerone,
            request,
            &[std::os::fd::AsFd::as_fd(&theirs)],
            client::DEFAULT_TIMEOUT,
        )
        .with_context(|| {
            format!(
                "cannot open a shell in container '{}' of VM '{}'",
                args.target_container, args.vm_name
            )
        })?;
    Ok(ours)
}

/// Asks crosd's concierge where the VM's vsock lives (GetVmInfo), as Crostini's vsh asks
/// concierge for the VM's cid.
fn resolve_vm(args: &Args) -> anyhow::Result<Endpoint> {
    let owner = if args.owner_id.is_empty() {
        String::new()
    } else {
        format!(" of owner '{}'", args.owner_id)
    };
    let mut crosd = client::Client::connect_default(args.crosd_socket.as_deref())
        .with_context(|| format!("cannot look up VM '{}'{owner}", args.vm_name))?;
    let concierge = Addr::host("concierge");
    let request = Body::Concierge(ConciergeRequest::GetVmInfo {
        name: args.vm_name.clone(),
        owner_id: args.owner_id.clone(),
    });
    let vm = match crosd
        .call(&concierge, request, client::DEFAULT_TIMEOUT)
        .with_context(|| format!("cannot look up VM '{}'{owner}", args.vm_name))?
    {
        Body::ConciergeReply(ConciergeReply::VmInfo { vm_info }) => vm_info,
        other => bail!(
            "concierge answered GetVmInfo for '{}' with {}",
            args.vm_name,
            other.type_name()
        ),
    };
    if vm.status != VmStatus::Running {
        bail!("VM '{}'{owner} is {:?}, not running", vm.name, vm.status);
    }
    if vm.vsock_socket.is_empty() {
        bail!(
            "crosd knows VM '{}' (cid {}) but reports no vsock socket for it; pass --socket",
            vm.name,
            vm.cid
        );
    }
    Ok(Endpoint::HybridVsock {
        path: vm.vsock_socket.into(),
        port: args.port,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        // Exit codes outside 0..=255 cannot be a process status; clamp to 255 like a shell.
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("vsh: {e:#}");
            ExitCode::from(NO_EXIT_STATUS as u8)
        }
    }
}
