//! vmc: start, stop, list VMs and read their logs through crosd (as ChromeOS's `vmc`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cros_messages::concierge::{ConciergeReply, ConciergeRequest, DiskImageStatus, VmInfo};
use cros_messages::vmlog::{VmlogReply, VmlogRequest};
use cros_messages::{Addr, Body};
use cros_tools::client::{Client, DEFAULT_TIMEOUT};

#[derive(Parser)]
#[command(
    name = "vmc",
    about = "Manage crosd's virtual machines (start, stop, list, logs)."
)]
struct Cli {
    /// crosd's control socket [default: $CROSD_SOCKET, else /run/crosd/crosd.sock]
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the VM's disk if needed (auto size), boot it, and open a shell in it.
    Start {
        /// Virtual CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Memory in MiB.
        #[arg(long, default_value_t = 1024)]
        mem: u32,
        /// Boot only; do not open a shell.
        #[arg(long)]
        no_shell: bool,
        /// Seconds to wait for the VM to be ready.
        #[arg(long, default_value_t = 120)]
        timeout: u32,
        /// Extra kernel command-line parameter (repeatable).
        #[arg(long = "kernel-param")]
        kernel_params: Vec<String>,
        /// Version of the termina component to boot [default: the newest verified one].
        #[arg(long)]
        component_version: Option<String>,
        /// VM name, e.g. termina.
        name: String,
    },
    /// Shut the VM down (maitred Shutdown, then the hypervisor is stopped).
    Stop { name: String },
    /// List running VMs.
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print the guest log (kernel and syslog) that vm_syslog shipped for the VM.
    Logs { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmc: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(msg: &str) {
    eprintln!("vmc: {msg}");
}

fn concierge() -> Addr {
    Addr::host("concierge")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect_default(cli.socket.as_deref())?;
    match cli.command {
        Cmd::Start {
            cpus,
            mem,
            no_shell,
            timeout,
            kernel_params,
            component_version,
            name,
        } => {
            progress(&format!("creating the disk image of {name} (if needed)"));
            let req = Body::Concierge(ConciergeRequest::CreateDiskImage {
                name: name.clone(),
                owner_id: String::new(),
                size: 0,
            });
            match client.call(&concierge(), req, DEFAULT_TIMEOUT)? {
                Body::ConciergeReply(ConciergeReply::DiskImage { status, path, size }) => {
                    let what = if status == DiskImageStatus::Created {
                        "created"
                    } else {
                        "exists"
                    };
                    progress(&format!(
                        "disk {path} ({:.1} GiB, {what})",
                        size as f64 / (1u64 << 30) as f64
                    ));
                }
                other => bail!("unexpected reply to CreateDiskImage: {}", other.type_name()),
            }
            let info = start_vm(
                &mut client,
                &name,
                cpus,
                mem,
                timeout,
                kernel_params,
                component_version,
            )?;
            progress(&format!(
                "{name} is running (cid {}, pid {}, {})",
                info.cid, info.pid, info.hypervisor
            ));
            if no_shell {
                return Ok(ExitCode::SUCCESS);
            }
            let vsh = std::env::current_exe()?.with_file_name("vsh");
            let mut cmd = std::process::Command::new(&vsh);
            cmd.arg("--vm_name").arg(&name);
            if let Some(s) = &cli.socket {
                cmd.arg("--crosd-socket").arg(s);
            }
            let err = cmd.exec();
            bail!("cannot run {}: {err}", vsh.display())
        }
        Cmd::Stop { name } => {
            progress(&format!("stopping {name}"));
            let req = Body::Concierge(ConciergeRequest::StopVm {
                name: name.clone(),
                owner_id: String::new(),
            });
            client.call(&concierge(), req, Duration::from_secs(90))?;
            progress(&format!("{name} stopped"));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::List { json } => {
            let vms = match client.call(
                &concierge(),
                Body::Concierge(ConciergeRequest::ListVms {}),
                DEFAULT_TIMEOUT,
            )? {
                Body::ConciergeReply(ConciergeReply::Vms { vms }) => vms,
                other => bail!("unexpected reply to ListVms: {}", other.type_name()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&vms)?);
            } else if vms.is_empty() {
                println!("no VMs are running");
            } else {
                println!(
                    "{:<16} {:<9} {:>4} {:>8}  HYPERVISOR",
                    "NAME", "STATUS", "CID", "PID"
                );
                for vm in vms {
                    println!(
                        "{:<16} {:<9} {:>4} {:>8}  {}",
                        vm.name, vm.status, vm.cid, vm.pid, vm.hypervisor
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logs { name } => {
            let req = Body::VmlogForwarder(VmlogRequest::GetLogPath { vm: name.clone() });
            let path = match client.call(&Addr::host("vmlog_forwarder"), req, DEFAULT_TIMEOUT)? {
                Body::VmlogReply(VmlogReply::LogPath { path }) => path,
                other => bail!("unexpected reply to GetLogPath: {}", other.type_name()),
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the log of {name} at {path}"))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn start_vm(
    client: &mut Client,
    name: &str,
    cpus: u32,
    memory_mib: u32,
    timeout_secs: u32,
    kernel_params: Vec<String>,
    component_version: Option<String>,
) -> anyhow::Result<VmInfo> {
    progress(&format!(
        "starting {name} ({cpus} cpus, {memory_mib} MiB; waiting up to {timeout_secs} s for it to be ready)"
    ));
    // The request blocks until the VM is ready; say something while it does.
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (done, name) = (done.clone(), name.to_string());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut next = 10;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if start.elapsed().as_secs() >= next {
                    progress(&format!("still waiting for {name} ({next} s)"));
                    next += 10;
                }
            }
        })
    };
    let req = Body::Concierge(ConciergeRequest::StartVm {
        name: name.into(),
        owner_id: String::new(),
        disks: vec![],
        cpus,
        memory_mib,
        kernel_params,
        start_termina: true,
        timeout_secs,
        component_version,
    });
    let reply = client.call(
        &concierge(),
        req,
        Duration::from_secs(u64::from(timeout_secs) + 60),
    );
    done.store(true, Ordering::SeqCst);
    let _ = ticker.join();
    match reply.with_context(|| format!("cannot start {name}"))? {
        Body::ConciergeReply(ConciergeReply::VmStarted { vm_info }) => Ok(vm_info),
        other => bail!("unexpected reply to StartVm: {}", other.type_name()),
    }
}
