//! vmc: start, stop, list VMs, manage their disks and read their logs through crosd (as
//! ChromeOS's `vmc`).
//!
//! Every file vmc names to crosd (export target, import stream, digest, extra disks) is opened
//! here, with the user's own access, and passed over the socket; crosd never opens a user's
//! path. An export writes into `FILE.partial` (created new, so two exports never share it) and
//! vmc renames it to FILE once the export is done, never over an existing FILE unless
//! `--force`; a failed, cancelled or interrupted export leaves neither behind.

use std::fs::File;
use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cros_messages::concierge::{
    ConciergeEvent, ConciergeReply, ConciergeRequest, DiskImageStatus, DiskOpInfo, DiskOpState,
    DiskSpec, StartVm, VmInfo,
};
use cros_messages::vmlog::{VmlogReply, VmlogRequest};
use cros_messages::{Addr, Body};
use cros_tools::client::{self, Client, DEFAULT_TIMEOUT};
use cros_tools::vmc_container::{self, ContainerArgs, ImageSource};
use cros_tools::vmc_port_forward::{self, PortForwardCmd};
use cros_tools::vmc_share;

#[derive(Parser)]
#[command(
    name = "vmc",
    about = "Manage crosd's virtual machines, their disks and their containers (start, stop, list, create, destroy, export, import, logs, container, port-forward)."
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
        /// Do not start LXD in the VM (a VM that runs no containers, e.g. with its own
        /// --extra-disk).
        #[arg(long)]
        no_start_lxd: bool,
        /// Seconds to wait for the VM to be ready.
        #[arg(long, default_value_t = 120)]
        timeout: u32,
        /// Extra kernel command-line parameter (repeatable).
        #[arg(long = "kernel-param")]
        kernel_params: Vec<String>,
        /// Version of the termina component to boot [default: the newest verified one].
        #[arg(long)]
        component_version: Option<String>,
        /// Attach this image as an extra disk, read-only, or read-write as `PATH,rw`
        /// (repeatable; the guest sees them in order, serials crosd-extra0, 1, ...).
        #[arg(long = "disk", visible_alias = "extra-disk", value_parser = parse_disk)]
        disks: Vec<ExtraDisk>,
        /// VM name, e.g. termina.
        name: String,
    },
    /// Shut the VM down (maitred Shutdown, then the hypervisor is stopped).
    Stop { name: String },
    /// Share a host folder with the VM at /mnt/shared/NAME (read-only unless --writable).
    Share {
        #[arg(long)]
        writable: bool,
        vm: String,
        path: PathBuf,
    },
    /// Stop sharing a folder (its host path or its name under /mnt/shared).
    Unshare { vm: String, path: String },
    /// List running VMs and the disk images crosd holds.
    List {
        /// Print JSON for scripts: {"vms": [...], "disks": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Create the VM's disk image (sparse) unless it exists.
    Create {
        /// Disk size: bytes, or with a K, M, G or T suffix (powers of 1024), e.g. 10G, 512M
        /// [default: auto, 90% of the free and used space of the disk's filesystem].
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        name: String,
    },
    /// Delete the VM's disk image, stopping the VM first if it runs. Asks first unless -y.
    Destroy {
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(short = 'y', long = "yes")]
        yes: bool,
        name: String,
    },
    /// Grow or shrink the VM's disk to SIZE. A running VM's filesystem follows online; a stopped
    /// VM's disk can only grow (its filesystem grows at the next start). Shrinking is refused
    /// below what the filesystem can shrink to, with that minimum in the message.
    Resize {
        name: String,
        /// New size: bytes, or with a K, M, G or T suffix (powers of 1024), e.g. 20G.
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Write the VM's disk to FILE as a zstd stream, showing progress until it is done. An
    /// existing FILE is not replaced unless --force.
    Export {
        /// Also write the SHA-256 of FILE here, in `sha256sum` format.
        #[arg(long)]
        digest: Option<PathBuf>,
        /// Replace an existing FILE (and digest), and export even while the VM runs (the copy
        /// may then be inconsistent).
        #[arg(long)]
        force: bool,
        name: String,
        file: PathBuf,
    },
    /// Replace the VM's disk with the export in FILE once the whole stream checked out; the VM
    /// must be stopped. Shows progress until it is done.
    Import {
        /// Check FILE against this SHA-256 file (as written by `vmc export --digest`) first.
        #[arg(long)]
        digest: Option<PathBuf>,
        name: String,
        file: PathBuf,
    },
    /// Print the state of a disk export, import or resize by its operation id.
    DiskOpStatus {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        id: String,
    },
    /// Print the guest log (kernel and syslog) that vm_syslog shipped for the VM.
    Logs { name: String },
    /// Create a container in the VM (unless it exists) from an image server or a rootfs and
    /// metadata tarball pair, set up your user in it, start it and open a shell in it.
    ///
    /// Without an image: debian/bookworm from https://images.lxd.canonical.com. LXD in the VM
    /// downloads the image itself, through crosd.
    Container {
        /// Make the container privileged (its root is the VM's root).
        #[arg(long)]
        privileged: bool,
        /// Seconds to wait for the container to be created and started.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Do not open a shell.
        #[arg(long)]
        no_shell: bool,
        /// Name of the container's user (uid 1000) [default: yours; "user" for root].
        #[arg(long)]
        user: Option<String>,
        /// The VM, e.g. termina.
        vm: String,
        /// The container, e.g. penguin.
        name: String,
        /// IMAGE_SERVER ALIAS (e.g. http://127.0.0.1:8080 busybox) or ROOTFS METADATA
        /// (absolute paths of the two tarballs).
        #[arg(num_args = 0..=2, value_name = "IMAGE")]
        image: Vec<String>,
    },
    /// List the containers of a VM and their state.
    ContainerList { vm: String },
    /// Stop a container.
    ContainerStop { vm: String, name: String },
    /// Delete a container (stopping it first).
    ContainerDelete { vm: String, name: String },
    /// The container ports forwarded to the host's localhost: those a container listens on
    /// (automatically, as garcon reports them) and those added by hand.
    PortForward {
        #[command(subcommand)]
        cmd: PortForwardCmd,
    },
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
            no_start_lxd,
            timeout,
            kernel_params,
            component_version,
            disks,
            name,
        } => {
            // Open the extra disks first: a path the user cannot open fails before anything.
            let extra = disks
                .iter()
                .map(ExtraDisk::open)
                .collect::<anyhow::Result<Vec<_>>>()?;
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
            let req = StartVm {
                cpus,
                memory_mib: mem,
                kernel_params,
                timeout_secs: timeout,
                component_version,
                disks: disks
                    .iter()
                    .map(|d| {
                        Ok(DiskSpec {
                            path: absolute(&d.path)?,
                            writable: d.writable,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
                ..StartVm::named(&name)
            };
            let files: Vec<BorrowedFd> = extra.iter().map(|f| f.as_fd()).collect();
            let info = start_vm(&mut client, req, &files)?;
            progress(&format!(
                "{name} is running (cid {}, pid {}, {})",
                info.cid, info.pid, info.hypervisor
            ));
            if !no_start_lxd {
                vmc_container::start_lxd(&mut client, &name)?;
            }
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
        Cmd::Share { writable, vm, path } => {
            let name = vmc_share::share(&mut client, &vm, &path, writable)?;
            println!("{}", vmc_share::describe(&vm, &name, writable));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unshare { vm, path } => {
            let name = vmc_share::unshare(&mut client, &vm, &path)?;
            println!("{name} is no longer shared with {vm}");
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
            let disks = match client.call(
                &concierge(),
                Body::Concierge(ConciergeRequest::ListVmDisks {}),
                DEFAULT_TIMEOUT,
            )? {
                Body::ConciergeReply(ConciergeReply::Disks { disks }) => disks,
                other => bail!("unexpected reply to ListVmDisks: {}", other.type_name()),
            };
            let shares = vmc_share::list(&mut client);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"vms": vms, "disks": disks, "shares": shares})
                    )?
                );
                return Ok(ExitCode::SUCCESS);
            }
            if vms.is_empty() {
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
                    if !vm.detail.is_empty() {
                        println!("  {}", vm.detail);
                    }
                }
            }
            println!();
            if disks.is_empty() {
                println!("no disk images");
            } else {
                println!(
                    "{:<16} {:>10} {:>10} {:>10}  PATH",
                    "DISK", "SIZE", "USED", "MIN SIZE"
                );
                for d in disks {
                    println!(
                        "{:<16} {:>10} {:>10} {:>10}  {}",
                        d.name,
                        human_size(d.size),
                        human_size(d.allocated),
                        human_size(d.min_size),
                        d.path
                    );
                }
            }
            vmc_share::print(&shares);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Create { size, name } => {
            let req = Body::Concierge(ConciergeRequest::CreateDiskImage {
                name: name.clone(),
                owner_id: String::new(),
                size: size.unwrap_or(0),
            });
            match client.call(&concierge(), req, DEFAULT_TIMEOUT)? {
                Body::ConciergeReply(ConciergeReply::DiskImage { status, path, size }) => {
                    let what = match status {
                        DiskImageStatus::Created => "created",
                        DiskImageStatus::Exists => "already exists",
                    };
                    println!("disk of {name} {what}: {path} ({})", human_size(size));
                }
                other => bail!("unexpected reply to CreateDiskImage: {}", other.type_name()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Destroy { yes, name } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "not destroying the disk of {name} without -y: stdin is not a terminal to ask on"
                    );
                }
                eprint!("vmc: destroy the disk of {name} (stopping {name} if it runs)? [y/N] ");
                std::io::stderr().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
                    progress("not destroyed");
                    return Ok(ExitCode::FAILURE);
                }
            }
            let req = Body::Concierge(ConciergeRequest::DestroyDiskImage {
                name: name.clone(),
                owner_id: String::new(),
            });
            client
                .call(&concierge(), req, Duration::from_secs(120))
                .with_context(|| format!("cannot destroy the disk of {name}"))?;
            progress(&format!("disk of {name} destroyed"));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export {
            digest,
            force,
            name,
            file,
        } => {
            let req = ConciergeRequest::ExportDiskImage {
                name: name.clone(),
                owner_id: String::new(),
                path: absolute(&file)?,
                digest_path: digest.as_deref().map(absolute).transpose()?,
                force,
            };
            // Before the partial files exist: a Ctrl-C from here on cancels and removes them.
            catch_sigint();
            let mut targets = vec![file.clone()];
            targets.extend(digest.clone());
            let partial = PartialExport::create(&targets, force)?;
            let files: Vec<BorrowedFd> = partial.files.iter().map(|f| f.as_fd()).collect();
            let op = run_disk_op(
                &mut client,
                cli.socket.as_deref(),
                req,
                &files,
                &format!("exporting {name} to {}", file.display()),
            )?;
            if op.state == DiskOpState::Done {
                partial.commit()?;
            }
            finish_disk_op(&op)
        }
        Cmd::Resize { name, size } => {
            let req = ConciergeRequest::ResizeDiskImage {
                name: name.clone(),
                owner_id: String::new(),
                size,
            };
            let op = run_disk_op(
                &mut client,
                cli.socket.as_deref(),
                req,
                &[],
                &format!("resizing the disk of {name} to {}", human_size(size)),
            )?;
            finish_disk_op(&op)
        }
        Cmd::Import { digest, name, file } => {
            let req = ConciergeRequest::ImportDiskImage {
                name: name.clone(),
                owner_id: String::new(),
                path: absolute(&file)?,
                digest_path: digest.as_deref().map(absolute).transpose()?,
            };
            let mut opened = vec![open_for_reading(&file)?];
            if let Some(d) = &digest {
                opened.push(open_for_reading(d)?);
            }
            let files: Vec<BorrowedFd> = opened.iter().map(|f| f.as_fd()).collect();
            let op = run_disk_op(
                &mut client,
                cli.socket.as_deref(),
                req,
                &files,
                &format!("importing {} into {name}", file.display()),
            )?;
            finish_disk_op(&op)
        }
        Cmd::DiskOpStatus { json, id } => {
            let op = disk_op_status(&mut client, &id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&op)?);
            } else {
                println!(
                    "{} {} of {} ({}): {} {}% ({} of {}){}",
                    op.uuid,
                    op.kind,
                    op.name,
                    op.path,
                    op.state,
                    op.percent,
                    human_size(op.processed_bytes),
                    human_size(op.total_bytes),
                    if op.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", op.message)
                    }
                );
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
        Cmd::Container {
            privileged,
            timeout,
            no_shell,
            user,
            vm,
            name,
            image,
        } => {
            let args = ContainerArgs {
                source: ImageSource::from_args(&image)?,
                vm,
                name,
                privileged,
                timeout: Duration::from_secs(timeout),
                user: user.clone(),
            };
            vmc_container::create_and_start(&mut client, &args)?;
            if no_shell {
                return Ok(ExitCode::SUCCESS);
            }
            let vsh = std::env::current_exe()?.with_file_name("vsh");
            let mut cmd = std::process::Command::new(&vsh);
            cmd.arg("--vm_name")
                .arg(&args.vm)
                .arg("--target_container")
                .arg(&args.name);
            if let Some(u) = &user {
                cmd.arg("--user").arg(u);
            }
            if let Some(s) = &cli.socket {
                cmd.arg("--crosd-socket").arg(s);
            }
            let err = cmd.exec();
            bail!("cannot run {}: {err}", vsh.display())
        }
        Cmd::ContainerList { vm } => {
            vmc_container::list(&mut client, &vm)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ContainerStop { vm, name } => {
            vmc_container::stop_or_delete(&mut client, &vm, &name, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ContainerDelete { vm, name } => {
            vmc_container::stop_or_delete(&mut client, &vm, &name, true)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::PortForward { cmd } => {
            vmc_port_forward::run(&mut client, cmd)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn start_vm(client: &mut Client, req: StartVm, files: &[BorrowedFd]) -> anyhow::Result<VmInfo> {
    let StartVm {
        cpus,
        memory_mib,
        timeout_secs,
        ..
    } = req;
    let name = req.name.as_str();
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
    let name = name.to_string();
    let req = Body::Concierge(ConciergeRequest::StartVm(req));
    let timeout = client::request_timeout(&req);
    let reply = client.call_with_files(&concierge(), req, files, timeout);
    done.store(true, Ordering::SeqCst);
    let _ = ticker.join();
    match reply.with_context(|| format!("cannot start {name}"))? {
        Body::ConciergeReply(ConciergeReply::VmStarted { vm_info }) => Ok(vm_info),
        other => bail!("unexpected reply to StartVm: {}", other.type_name()),
    }
}

/// "10G", "512M", "64k", "1T" (powers of 1024, an optional trailing "B" or "iB") or plain bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "bad size {text:?}: unknown unit {c:?} (use K, M, G or T)"
                    ));
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!("bad size {text:?}: expected a number with an optional K, M, G or T")
    })?;
    n.checked_mul(1u64 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("bad size {text:?}: must be more than 0 and fit in 64 bits"))
}

/// 1536 -> "1.5 KiB".
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `--disk PATH` or `--disk PATH,rw`.
#[derive(Clone)]
struct ExtraDisk {
    path: PathBuf,
    writable: bool,
}

fn parse_disk(text: &str) -> Result<ExtraDisk, String> {
    let (path, writable) = match text.rsplit_once(',') {
        Some((p, "rw")) => (p, true),
        Some((p, "ro")) => (p, false),
        _ => (text, false),
    };
    if path.is_empty() {
        return Err(format!("bad disk {text:?}: expected PATH or PATH,rw"));
    }
    Ok(ExtraDisk {
        path: PathBuf::from(path),
        writable,
    })
}

impl ExtraDisk {
    /// Opened by this user, in the mode the VM gets it.
    fn open(&self) -> anyhow::Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(self.writable)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&self.path)
            .with_context(|| format!("cannot open the disk image {}", self.path.display()))
    }
}

/// Opens a file crosd is to read. Non-blocking, so a FIFO cannot hang the open; crosd refuses
/// anything but a regular file.
fn open_for_reading(path: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The `.partial` files an export writes, removed unless [`PartialExport::commit`] renamed
/// them over their targets.
struct PartialExport {
    /// `(partial, target)`, as the files are passed: the export, then the digest.
    paths: Vec<(PathBuf, PathBuf)>,
    files: Vec<File>,
    force: bool,
    committed: bool,
}

impl PartialExport {
    /// Creates `<target>.partial` for each target, refusing an existing target (or partial
    /// file, which may be another export's) unless `force`.
    fn create(targets: &[PathBuf], force: bool) -> anyhow::Result<Self> {
        let mut partial = Self {
            paths: Vec::new(),
            files: Vec::new(),
            force,
            committed: false,
        };
        for target in targets {
            if !force && target.exists() {
                bail!(
                    "{} exists: not replacing it without --force",
                    target.display()
                );
            }
            let mut p = target.as_os_str().to_owned();
            p.push(".partial");
            let p = PathBuf::from(p);
            let mut open = std::fs::OpenOptions::new();
            open.write(true).mode(0o644);
            if force {
                open.create(true).truncate(true);
            } else {
                open.create_new(true);
            }
            let file = open.open(&p).with_context(|| {
                if p.exists() && !force {
                    format!(
                        "cannot create {}: it exists (another export, or a stale one: remove it                          or use --force)",
                        p.display()
                    )
                } else {
                    format!("cannot create {}", p.display())
                }
            })?;
            partial.paths.push((p, target.clone()));
            partial.files.push(file);
        }
        Ok(partial)
    }

    /// Renames each partial file over its target (not over an existing one unless forced).
    fn commit(mut self) -> anyhow::Result<()> {
        use nix::fcntl::{RenameFlags, renameat2};
        let flags = if self.force {
            RenameFlags::empty()
        } else {
            RenameFlags::RENAME_NOREPLACE
        };
        // The digest last: it names a complete export.
        for (partial, target) in self.paths.iter().rev() {
            renameat2(None, partial, None, target, flags).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    partial.display(),
                    target.display()
                )
            })?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialExport {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (partial, _) in &self.paths {
            let _ = std::fs::remove_file(partial);
        }
    }
}

/// crosd runs elsewhere (another working directory): it gets absolute paths.
fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::path::absolute(p)
        .with_context(|| format!("cannot make {} absolute", p.display()))?
        .display()
        .to_string())
}

fn disk_op_status(client: &mut Client, id: &str) -> anyhow::Result<DiskOpInfo> {
    let req = Body::Concierge(ConciergeRequest::DiskImageStatus {
        uuid: id.to_string(),
    });
    match client.call(&concierge(), req, DEFAULT_TIMEOUT)? {
        Body::ConciergeReply(ConciergeReply::DiskOperation { op }) => Ok(op),
        other => bail!("unexpected reply to DiskImageStatus: {}", other.type_name()),
    }
}

/// Starts an export or import and follows it to its end: a progress bar on a terminal, a
/// line per progress event otherwise.
fn run_disk_op(
    client: &mut Client,
    socket: Option<&std::path::Path>,
    req: ConciergeRequest,
    files: &[BorrowedFd],
    what: &str,
) -> anyhow::Result<DiskOpInfo> {
    catch_sigint();
    // Subscribe first so that no progress event is missed.
    client.subscribe(
        vec!["ConciergeEvent::DiskImageProgress".into()],
        DEFAULT_TIMEOUT,
    )?;
    let kind: &'static str = (&req).into();
    let uuid =
        match client.call_with_files(&concierge(), Body::Concierge(req), files, DEFAULT_TIMEOUT)? {
            Body::ConciergeReply(ConciergeReply::DiskImageOperation { uuid }) => uuid,
            other => bail!("unexpected reply to {kind}: {}", other.type_name()),
        };
    progress(&format!("{what} (operation {uuid})"));
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos:>3}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            return cancel_disk_op(socket, &uuid);
        }
        // Ask for the state when the operation says 100% (its end) and otherwise every quarter
        // second, so that a failure or a crosd restart is seen without an event.
        let event = match client.next_event(Duration::from_millis(250)) {
            Ok(e) => e,
            Err(_) if INTERRUPTED.load(Ordering::SeqCst) => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(env) = event {
            if let Body::ConciergeEvent(ConciergeEvent::DiskImageProgress { uuid: u, percent }) =
                env.body
                && u == uuid
            {
                match &bar {
                    Some(bar) => bar.set_position(u64::from(percent)),
                    None => progress(&format!("{percent}%")),
                }
                if percent < 100 {
                    continue;
                }
            } else {
                continue;
            }
        }
        let op = disk_op_status(client, &uuid)?;
        if op.state != DiskOpState::Running {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(op);
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C while an export or import runs cancels it (its partial output is removed) rather
/// than leaving it running behind an exited vmc.
fn catch_sigint() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    if let Err(e) = unsafe { sigaction(Signal::SIGINT, &action) } {
        progress(&format!("Ctrl-C will not cancel the operation: {e}"));
    }
}

/// Cancels on a fresh connection (an interrupted read may have left the first one unusable)
/// and waits for the operation to end.
fn cancel_disk_op(socket: Option<&std::path::Path>, uuid: &str) -> anyhow::Result<DiskOpInfo> {
    progress(&format!("interrupted: cancelling operation {uuid}"));
    let mut client = Client::connect_default(socket)?;
    let req = Body::Concierge(ConciergeRequest::CancelDiskImageOperation {
        uuid: uuid.to_string(),
    });
    client.call(&concierge(), req, DEFAULT_TIMEOUT)?;
    loop {
        let op = disk_op_status(&mut client, uuid)?;
        if op.state != DiskOpState::Running {
            return Ok(op);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finish_disk_op(op: &DiskOpInfo) -> anyhow::Result<ExitCode> {
    match op.state {
        DiskOpState::Done => {
            progress(&format!("{} of {} done: {}", op.kind, op.name, op.path));
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!(
            "{} of {} {}: {}",
            op.kind,
            op.name,
            op.state.to_string().to_lowercase(),
            op.message
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_refuse_nonsense() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "G", "10X", "-1", "0", "99999999999T", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn disks_are_read_only_unless_rw() {
        let d = parse_disk("/x/a.img").unwrap();
        assert_eq!((d.path, d.writable), (PathBuf::from("/x/a.img"), false));
        let d = parse_disk("/x/a,b.img,rw").unwrap();
        assert_eq!((d.path, d.writable), (PathBuf::from("/x/a,b.img"), true));
        assert!(parse_disk(",rw").is_err());
    }

    #[test]
    fn an_export_never_replaces_a_file_unless_forced_and_cleans_up_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.zst");
        std::fs::write(&target, b"precious").unwrap();
        let err = PartialExport::create(std::slice::from_ref(&target), false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--force"), "{err}");
        let fresh = dir.path().join("new.zst");
        let partial = PartialExport::create(std::slice::from_ref(&fresh), false).unwrap();
        let partial_path = dir.path().join("new.zst.partial");
        assert!(partial_path.exists());
        // A second export to the same file while the first runs is refused.
        assert!(PartialExport::create(std::slice::from_ref(&fresh), false).is_err());
        drop(partial);
        assert!(
            !partial_path.exists() && !fresh.exists(),
            "a failed export leaves nothing"
        );
        let forced = PartialExport::create(std::slice::from_ref(&target), true).unwrap();
        std::io::Write::write_all(&mut &forced.files[0], b"new export").unwrap();
        forced.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new export");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(100), "100 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(10 << 30), "10.0 GiB");
    }
}
