//! `crosvm`: the crosd virtual machine monitor process and its device backends.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cros_messages::crosvm::{CrosvmReply, CrosvmRequest};
use cros_vmm::devices::vsock::VsockConfig;
use cros_vmm::vhost_user::blk::BlkConfig;

#[derive(Parser)]
#[command(
    name = "crosvm",
    version,
    about = "crosd's virtual machine monitor and its device backends"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a VM on KVM: load a kernel (ELF or bzImage), describe the devices in ACPI, run the
    /// vCPUs until the guest powers off (ACPI S5: Linux `poweroff`) or resets (ACPI reset
    /// register or i8042: Linux `reboot`); then exit 0.
    ///
    /// A stop request (`crosvm stop CTRL`), SIGTERM or SIGINT presses the guest's ACPI power
    /// button and waits up to --stop-timeout for it to power off; a guest that did exits 0,
    /// one that did not is forced off and the VMM exits 3.
    ///
    /// Fatal errors (no /dev/kvm, a kernel that cannot be loaded, a guest that KVM cannot run)
    /// end with a message on stderr and a non-zero status.
    Run(RunArgs),
    /// Check whether this host's /dev/kvm can boot a stock Linux kernel with `crosvm run`:
    /// runs the instructions a kernel needs early in boot in a tiny VM. Exits 0 when it can;
    /// otherwise prints which instruction failed and why, and exits 1.
    Probe,
    /// Stop the VM served on the control socket CTRL (`crosvm run --socket CTRL`): press its
    /// ACPI power button, then wait until the VMM has exited (the VMM forces the guest off
    /// after its --stop-timeout).
    Stop {
        #[arg(value_name = "CTRL")]
        socket: PathBuf,
        /// Give up waiting for the VMM to exit after SECS seconds (exit 1).
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        timeout: u64,
    },
    /// Pause the VM's vCPUs (returns once all are parked).
    Pause {
        #[arg(value_name = "CTRL")]
        socket: PathBuf,
    },
    /// Let a paused VM run again.
    Resume {
        #[arg(value_name = "CTRL")]
        socket: PathBuf,
    },
    /// Print the VM's state (running or paused), the VMM's pid, vCPUs and memory, as JSON.
    Status {
        #[arg(value_name = "CTRL")]
        socket: PathBuf,
    },
    /// Serve a virtio-vsock device to a vhost-user frontend (QEMU's vhost-user-vsock-device),
    /// with a hybrid (Unix socket) host side.
    ///
    /// Host → guest: connect to UDS, write `CONNECT <port>\n`, read `OK <hostport>\n`, then the
    /// stream reaches the guest listener on <port> (no guest listener: the socket is closed).
    /// Guest → host: a guest connect to cid 2 port P reaches the Unix socket `UDS_P`.
    /// Prints `listening on VHOST_USER_SOCK` once QEMU can connect; exits 0 when QEMU
    /// disconnects.
    VhostUserVsock {
        /// vhost-user socket this backend listens on (QEMU: `-chardev socket,path=...`).
        /// A stale socket file is replaced; any other existing file is an error.
        #[arg(long, value_name = "VHOST_USER_SOCK")]
        socket: PathBuf,
        /// Host side of the vsock device: the Unix socket host clients connect to, and the
        /// prefix of `UDS_<port>` sockets that guest connections reach.
        #[arg(long, value_name = "UDS")]
        uds_path: PathBuf,
        /// Context id of the guest (3 or more; 2 is the host).
        #[arg(long, value_name = "CID", value_parser = clap::value_parser!(u64).range(3..u64::from(u32::MAX)))]
        guest_cid: u64,
        /// Serve without the seccomp filter that confines every thread of this process once
        /// the frontend has connected (for debugging a backend stopped with "crosvm: seccomp:
        /// ... denied"; exit status 159).
        #[arg(long)]
        no_seccomp: bool,
    },
    /// Serve a virtio-blk disk backed by a raw image to a vhost-user frontend (QEMU 7.2 on
    /// microvm: `-chardev socket,id=blk0,path=SOCK -device vhost-user-blk,chardev=blk0`, with
    /// a shared memory backend and `-global virtio-mmio.force-legacy=false`).
    ///
    /// Requests are served by the same code as `crosvm run --block`: read, write, flush,
    /// get-id, discard and write-zeroes (hole punching keeps sparse images sparse). The
    /// capacity is the image's size rounded down to 512-byte sectors, read once at start.
    /// Prints `listening on SOCK` once QEMU can connect; exits 0 when QEMU disconnects.
    VhostUserBlk {
        /// vhost-user socket this backend listens on (QEMU: `-chardev socket,path=...`).
        /// A stale socket file is replaced; any other existing file is an error.
        #[arg(long, value_name = "SOCK")]
        socket: PathBuf,
        /// The raw disk image to serve (a regular file, opened read-write unless --read-only).
        #[arg(long, value_name = "IMAGE")]
        path: PathBuf,
        /// Serve the image read-only: the guest sees a read-only disk (VIRTIO_BLK_F_RO), and
        /// writes and discards fail with an I/O error whatever the driver does.
        #[arg(long)]
        read_only: bool,
        /// What the guest reads as the disk's id (/sys/block/vdX/serial,
        /// /dev/disk/by-id/virtio-SERIAL): 1 to 20 printable ASCII characters. Defaults to the
        /// image's device and inode numbers.
        #[arg(long, value_name = "SERIAL")]
        serial: Option<String>,
        /// Serve without the seccomp filter that confines every thread of this process once
        /// the frontend has connected (for debugging a backend stopped with "crosvm: seccomp:
        /// ... denied"; exit status 159).
        #[arg(long)]
        no_seccomp: bool,
    },
    /// Serve a virtio-net device on a tap interface to a vhost-user frontend (QEMU 7.2 on
    /// microvm: `-chardev socket,id=n0,path=SOCK -netdev vhost-user,id=net0,chardev=n0
    /// -device virtio-net-device,netdev=net0`, with a shared memory backend and
    /// `-global virtio-mmio.force-legacy=false`).
    ///
    /// Frames are moved by the same code as `crosvm run --net`: one rx/tx queue pair,
    /// checksum and segmentation offloads as the guest driver accepts them (the tap's
    /// TUNSETOFFLOAD follows), mergeable rx buffers. QEMU owns the MAC (`-device
    /// ...,mac=`). Prints `listening on SOCK` once QEMU can connect; exits 0 when QEMU
    /// disconnects.
    VhostUserNet {
        /// vhost-user socket this backend listens on (QEMU: `-chardev socket,path=...`).
        /// A stale socket file is replaced; any other existing file is an error.
        #[arg(long, value_name = "SOCK")]
        socket: PathBuf,
        /// The tap interface (opened, or created, in this process's network namespace).
        #[arg(long, value_name = "NAME")]
        tap: String,
        /// Serve without the seccomp filter that confines every thread of this process once
        /// the frontend has connected (for debugging a backend stopped with "crosvm: seccomp:
        /// ... denied"; exit status 159).
        #[arg(long)]
        no_seccomp: bool,
    },
    /// Tell the VM on control socket CTRL that its disk INDEX (the order of `--block` flags,
    /// from 0) now has SIZE bytes: the image file must already have been resized (e.g. with
    /// `truncate -s`). The guest is told through a configuration-change interrupt. Refused for
    /// a read-only disk, a bad index, or a size that is not a multiple of 512.
    ResizeDisk {
        #[arg(value_name = "CTRL")]
        socket: PathBuf,
        /// The disk's position among `crosvm run`'s `--block` flags, from 0.
        #[arg(value_name = "INDEX")]
        index: u32,
        /// The new size in bytes (a multiple of 512, at most the image file's size).
        #[arg(value_name = "SIZE")]
        size: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Number of vCPUs (1 to 254).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    cpus: u8,
    /// Guest RAM in MiB (at least 2). RAM beyond 3.25 GiB is placed above 4 GiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    mem: u64,
    /// Kernel to boot: an ELF (vmlinux or a freestanding payload) entered in 64-bit mode, or a
    /// bzImage entered at its 64-bit entry point.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk, loaded at the top of RAM below 3.25 GiB.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (for Linux, add `reboot=k` so that reboot/poweroff end the VM).
    #[arg(long, value_name = "PARAMS", default_value = "")]
    params: String,
    /// Append the guest's serial console (COM1) to FILE instead of writing it to stdout.
    /// Without it the console is interactive: stdin goes to the guest's serial port.
    #[arg(long, value_name = "FILE")]
    serial_log: Option<PathBuf>,
    /// Add a virtio-blk disk backed by the raw image PATH; `,ro=true` makes it read-only
    /// (writes fail with an I/O error); `,serial=NAME` (up to 20 printable characters) is what
    /// the guest reads as its id (/dev/disk/by-id/virtio-NAME). Repeat for more disks; they get
    /// the first virtio-mmio windows, in order.
    #[arg(long, value_name = "PATH[,ro=true][,serial=NAME]")]
    block: Vec<cros_vmm::run::BlockConfig>,
    /// Add a virtio-pmem device backed by the raw image PATH (size a multiple of 2 MiB), mapped
    /// into guest memory above RAM; `,ro=true` maps it read-only (guest writes are dropped).
    /// Repeat for more; their windows follow the disks'.
    #[arg(long, value_name = "PATH[,ro=true]")]
    pmem: Vec<cros_vmm::run::BlockConfig>,
    /// Add the hybrid virtio-vsock device with guest context id CID (3 or more); needs
    /// --vsock-uds.
    #[arg(long, value_name = "CID", requires = "vsock_uds",
          value_parser = clap::value_parser!(u64).range(3..u64::from(u32::MAX)))]
    cid: Option<u64>,
    /// Host side of the vsock device: host clients connect to this Unix socket and write
    /// `CONNECT <port>`; guest connections to the host reach `<PATH>_<port>`. Needs --cid.
    #[arg(long, value_name = "PATH", requires = "cid")]
    vsock_uds: Option<PathBuf>,
    /// Add a virtio-net device on the tap interface NAME (opened, or created, in this
    /// process's network namespace, with vnet headers; checksum and segmentation offloads as
    /// the guest driver accepts them), with the guest MAC MAC if given (else the guest picks a
    /// random one). Repeat for more; their windows follow the vsock device's.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<cros_vmm::run::NetConfig>,
    /// Add N virtio-rng devices, each in its own virtio-mmio window described in the DSDT.
    #[arg(long, value_name = "N", default_value_t = 0)]
    virtio_rng: usize,
    /// Listen for control requests on the Unix socket CTRL (mode 0600; `crosvm stop|pause|
    /// resume|status CTRL`). A stale socket file there is replaced.
    #[arg(long, value_name = "CTRL")]
    socket: Option<PathBuf>,
    /// Run the VMM's threads (vCPUs, devices, control socket, console, and the main thread's
    /// event loop) without their seccomp filters (for debugging
    /// a VMM stopped with "crosvm: seccomp: ... denied"; exit status 159).
    #[arg(long)]
    no_seccomp: bool,
    /// After a stop request presses the ACPI power button, wait up to SECS seconds for the
    /// guest to power off on its own, then force it off (the VMM then exits 3). 0 forces it
    /// off at once.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stop_timeout: u64,
}

/// The line a vhost-user backend prints once its socket accepts connections, for scripts
/// and tests that start one by hand.
fn announce_listening(socket: &std::path::Path) {
    println!("listening on {}", socket.display());
    let _ = std::io::stdout().flush();
}

/// The seccomp filter of a vhost-user backend process, unless `--no-seccomp`; with it, the
/// handler that reports a denied call.
fn vhost_user_filter(no_seccomp: bool) -> anyhow::Result<Option<cros_vmm::seccomp::BpfProgram>> {
    if no_seccomp {
        return Ok(None);
    }
    use cros_vmm::seccomp::{ThreadKind, filter_for, install_sigsys_handler};
    let filter = filter_for(ThreadKind::VhostUser)?;
    install_sigsys_handler()?;
    Ok(Some(filter))
}

/// A bzImage is most likely Linux: say up front when this /dev/kvm cannot run it, rather than
/// leave the user watching a VM that makes no progress.
fn warn_if_no_stock_kernel_boot(kernel: &std::path::Path) {
    if cros_vmm::loader::is_elf(kernel).unwrap_or(true) {
        return;
    }
    if let Err(e) = cros_vmm::probe::probe_stock_kernel_boot() {
        tracing::warn!(
            "{e}: a Linux kernel will probably not boot here (expect an emulation error, or no \
             progress); QEMU with TCG can run it"
        );
    }
}

/// Exit status of `crosvm run` when a stop request had to force the guest off.
const EXIT_STOP_FORCED: i32 = 3;

/// Sends one control request and prints the reply (JSON for a status).
fn control(socket: &std::path::Path, request: CrosvmRequest) -> anyhow::Result<()> {
    let what: &'static str = (&request).into();
    let reply = cros_vmm::control::send_request(socket, request)
        .with_context(|| format!("crosvm {} {}", what.to_lowercase(), socket.display()))?;
    match reply {
        CrosvmReply::Status {
            state,
            pid,
            vcpus,
            memory_mib,
        } => println!(
            "{}",
            serde_json::json!({"state": state.to_string(), "pid": pid, "vcpus": vcpus, "memory_mib": memory_mib})
        ),
        CrosvmReply::Ack {} => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crosvm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Stop { socket, timeout } => {
            cros_vmm::control::stop_and_wait(&socket, std::time::Duration::from_secs(timeout))
                .with_context(|| format!("crosvm stop {}", socket.display()))
        }
        Command::Pause { socket } => control(&socket, CrosvmRequest::Pause {}),
        Command::Resume { socket } => control(&socket, CrosvmRequest::Resume {}),
        Command::Status { socket } => control(&socket, CrosvmRequest::Status {}),
        Command::ResizeDisk {
            socket,
            index,
            size,
        } => control(&socket, CrosvmRequest::ResizeDisk { index, size }),
        Command::Probe => {
            cros_vmm::probe::probe_stock_kernel_boot().context("crosvm probe")?;
            println!("ok: this host's /dev/kvm can run a stock Linux kernel's early boot code");
            Ok(())
        }
        Command::Run(args) => {
            warn_if_no_stock_kernel_boot(&args.kernel);
            let serial_input = args.serial_log.is_none();
            let config = cros_vmm::run::VmConfig {
                cpus: args.cpus,
                mem_mib: args.mem,
                kernel: args.kernel,
                initrd: args.initrd,
                params: args.params,
                serial: args.serial_log.map_or(
                    cros_vmm::run::SerialOutput::Stdout,
                    cros_vmm::run::SerialOutput::File,
                ),
                block: args.block,
                pmem: args.pmem,
                vsock: args
                    .cid
                    .zip(args.vsock_uds)
                    .map(|(guest_cid, uds_path)| VsockConfig {
                        guest_cid,
                        uds_path,
                    }),
                net: args.net,
                virtio_rng: args.virtio_rng,
                seccomp: !args.no_seccomp,
                serial_input,
                control_socket: args.socket,
                stop_timeout: std::time::Duration::from_secs(args.stop_timeout),
            };
            let mut vm = cros_vmm::builder::build_vm(&config).context("crosvm run")?;
            // This process ends with the VM: its main thread, which runs the event loop, is
            // confined too once the VM's threads have started.
            vm.confine_event_loop();
            match vm.run().context("crosvm run")? {
                cros_vmm::run::VmExit::StopForced => {
                    tracing::warn!(
                        "VM ended: forced off, the guest did not power off within {} s of \
                         the stop request",
                        args.stop_timeout
                    );
                    std::process::exit(EXIT_STOP_FORCED);
                }
                exit => tracing::info!("VM ended: {exit:?}"),
            }
            Ok(())
        }
        Command::VhostUserVsock {
            socket,
            uds_path,
            guest_cid,
            no_seccomp,
        } => {
            let config = VsockConfig {
                guest_cid,
                uds_path: uds_path.clone(),
            };
            let filter = vhost_user_filter(no_seccomp)?;
            cros_vmm::vhost_user::vsock::serve(
                &socket,
                &config,
                || announce_listening(&socket),
                filter.as_ref(),
            )
            .with_context(|| {
                format!(
                    "vhost-user-vsock (socket {}, uds {}, cid {guest_cid})",
                    socket.display(),
                    uds_path.display()
                )
            })
        }
        Command::VhostUserNet {
            socket,
            tap,
            no_seccomp,
        } => {
            let config = cros_vmm::run::NetConfig {
                tap: tap.clone(),
                mac: None,
            };
            let filter = vhost_user_filter(no_seccomp)?;
            cros_vmm::vhost_user::net::serve(
                &socket,
                &config,
                || announce_listening(&socket),
                filter.as_ref(),
            )
            .with_context(|| format!("vhost-user-net (socket {}, tap {tap})", socket.display()))
        }
        Command::VhostUserBlk {
            socket,
            path,
            read_only,
            serial,
            no_seccomp,
        } => {
            let config = BlkConfig {
                path: path.clone(),
                read_only,
                serial,
            };
            let filter = vhost_user_filter(no_seccomp)?;
            cros_vmm::vhost_user::blk::serve(
                &socket,
                &config,
                || announce_listening(&socket),
                filter.as_ref(),
            )
            .with_context(|| {
                format!(
                    "vhost-user-blk (socket {}, image {})",
                    socket.display(),
                    path.display()
                )
            })
        }
    }
}
