//! `vmc port-forward list|add|remove`: the container ports chunneld forwards to the host's
//! localhost (automatically, the ones garcon reports listening; by hand, with `add`).

use anyhow::bail;
use clap::Subcommand;
use cros_messages::chunneld::{ChunneldReply, ChunneldRequest, ForwardState, PortForward};
use cros_messages::{Addr, Body};

use crate::client::{Client, DEFAULT_TIMEOUT};

#[derive(Subcommand)]
pub enum PortForwardCmd {
    /// List forwarded ports: container, container port, host port, state, how it was made.
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Only this VM's [default: every VM of yours].
        vm: Option<String>,
    },
    /// Forward a container's TCP port to 127.0.0.1:HOSTPORT (and [::1]:HOSTPORT) on the host,
    /// kept until removed whatever the container listens on.
    Add {
        /// The VM, e.g. termina.
        vm: String,
        /// The container, e.g. penguin.
        container: String,
        /// The container's TCP port (1-65535).
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// The host port [default: PORT]; below 1024 only for an administrator.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        host_port: Option<u16>,
    },
    /// Stop forwarding a container's port (an automatic forward comes back when the
    /// container's listening ports next change).
    Remove {
        vm: String,
        container: String,
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    },
}

fn chunneld() -> Addr {
    Addr::host("chunneld")
}

fn ask(client: &mut Client, req: ChunneldRequest) -> anyhow::Result<ChunneldReply> {
    let what = <&'static str>::from(&req);
    match client.call(&chunneld(), Body::Chunneld(req), DEFAULT_TIMEOUT)? {
        Body::ChunneldReply(r) => Ok(r),
        other => bail!("unexpected reply to {what}: {}", other.type_name()),
    }
}

/// Runs one `vmc port-forward` command.
pub fn run(client: &mut Client, cmd: PortForwardCmd) -> anyhow::Result<()> {
    match cmd {
        PortForwardCmd::List { json, vm } => {
            let req = ChunneldRequest::ListForwards {
                vm: vm.unwrap_or_default(),
            };
            let ChunneldReply::Forwards { forwards } = ask(client, req)? else {
                bail!("unexpected reply to ListForwards");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&forwards)?);
            } else {
                print(&forwards);
            }
        }
        PortForwardCmd::Add {
            vm,
            container,
            port,
            host_port,
        } => {
            let req = ChunneldRequest::AddForward {
                vm,
                container,
                port,
                host_port: host_port.unwrap_or(port),
            };
            let ChunneldReply::Added { forward } = ask(client, req)? else {
                bail!("unexpected reply to AddForward");
            };
            println!(
                "forwarding port {} of {} in {}: {}",
                forward.container_port,
                forward.container,
                forward.vm,
                state(&forward)
            );
        }
        PortForwardCmd::Remove {
            vm,
            container,
            port,
        } => {
            let req = ChunneldRequest::RemoveForward {
                vm,
                container,
                port,
            };
            let ChunneldReply::Removed { forward } = ask(client, req)? else {
                bail!("unexpected reply to RemoveForward");
            };
            println!(
                "port {} of {} in {} is no longer forwarded (host port {})",
                forward.container_port, forward.container, forward.vm, forward.host_port
            );
        }
    }
    Ok(())
}

/// The STATE column: where it listens, or why it cannot.
fn state(f: &PortForward) -> String {
    match &f.state {
        ForwardState::Listening { addrs } => format!("listening on {}", addrs.join(", ")),
        ForwardState::Taken { reason } => format!("taken: {reason}"),
    }
}

pub fn print(forwards: &[PortForward]) {
    if forwards.is_empty() {
        println!("no forwarded ports");
        return;
    }
    println!(
        "{:<12} {:<16} {:>6} {:>6}  {:<9} STATE",
        "VM", "CONTAINER", "PORT", "HOST", "HOW"
    );
    for f in forwards {
        println!(
            "{:<12} {:<16} {:>6} {:>6}  {:<9} {}",
            f.vm,
            f.container,
            f.container_port,
            f.host_port,
            if f.manual { "manual" } else { "automatic" },
            state(f)
        );
    }
}
