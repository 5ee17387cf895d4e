//! crosd: the host daemon. Runs the actor bus and the host actors behind a Unix control socket.

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use cros_actors::patchpanel::pool::{Pool, PoolError};
use cros_actors::{HypervisorConfig, HypervisorKind, NetworkConfig};
use cros_tools::daemon::{
    DEFAULT_MAX_CLIENTS, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR, Daemon, DaemonConfig, SOCKET_NAME,
    limits::raise_fd_limit, termination_signal,
};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// `--hypervisor`: which backend boots VMs.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum HypervisorArg {
    /// crosvm where /dev/kvm can boot a stock kernel, else qemu.
    Auto,
    /// QEMU microvm (TCG, or KVM where it works) with crosd's vhost-user devices.
    Qemu,
    /// crosd's own VMM.
    Crosvm,
}

impl From<HypervisorArg> for HypervisorKind {
    fn from(a: HypervisorArg) -> Self {
        match a {
            HypervisorArg::Auto => HypervisorKind::Auto,
            HypervisorArg::Qemu => HypervisorKind::Qemu,
            HypervisorArg::Crosvm => HypervisorKind::Crosvm,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The crosd host daemon: the actor bus and the host actors (imageloader, concierge, cicerone,
/// seneschal, vmlog_forwarder) behind a Unix control socket that crosmsg, vmc and vsh use.
///
/// Logging follows RUST_LOG (default: info), e.g. RUST_LOG=debug or RUST_LOG=cros_actors=debug.
/// SIGTERM or SIGINT stops it gracefully: no new connections, in-flight requests finish, every
/// VM is stopped in order as `vmc stop` does (within --vm-stop-timeout), the socket is removed.
/// One crosd per state directory: STATE/crosd.lock is held while it runs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Persistent state: components, disks, logs. Created 0700 when missing; locked
    /// (STATE/crosd.lock) so that a second crosd on it exits at once.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Runtime state: the control socket and per-VM runtime directories. Created 0700 (0710
    /// with the socket group, with --socket-group) when missing.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Control socket path [default: RUN_DIR/crosd.sock]. Refuses to start when another crosd
    /// answers there; a stale socket file is replaced.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Let members of GROUP use the socket (mode 0660, group GROUP); without it the socket is
    /// 0600 and only root and crosd's own user may connect.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Record every routed envelope to FILE (created or truncated); read it with
    /// `crosmsg trace show|stats|replay FILE`.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Hypervisor backend that boots VMs.
    #[arg(long, value_enum, default_value_t = HypervisorArg::Auto)]
    hypervisor: HypervisorArg,
    /// Directory holding the `crosvm` binary (VMM and vhost-user backends) [default: beside crosd].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// At SIGTERM/SIGINT, the seconds the running VMs get, all together and in parallel, to stop
    /// in order (maitred Shutdown, then the power button, then the VMM) before they are killed.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    vm_stop_timeout: u64,
    /// Control connections served at once; more are refused with an error saying so.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS)]
    max_clients: usize,
    /// Give every VM a tap, an address from --network-pool and NAT to the host's uplinks
    /// (needs root and /dev/net/tun). Off unless asked for: the guest side has not yet been
    /// checked end to end (issue 14), and it changes the host's network.
    #[arg(long, conflicts_with = "no_network")]
    network: bool,
    /// Start VMs without a network device (the default).
    #[arg(long)]
    no_network: bool,
    /// The range the VMs' /30s come from.
    #[arg(long, value_name = "CIDR", default_value = "100.115.92.0/24")]
    network_pool: Pool,
    /// The range each VM's containers' /28 (lxdbr0 in the VM, routed through the VM's /30)
    /// comes from.
    #[arg(long, value_name = "CIDR", default_value = "100.115.93.0/24")]
    container_pool: Pool,
    /// The hosts file in which crosd keeps the running containers' names
    /// (`<container>.<vm>.linux.test`, `penguin.linux.test`) in a block of its own (with
    /// --network only).
    #[arg(long, value_name = "PATH", default_value = "/etc/hosts")]
    hosts_file: PathBuf,
    /// The name servers the VMs use (repeat for more), instead of the host's non-loopback
    /// ones from /etc/resolv.conf.
    #[arg(long, value_name = "ADDRESS")]
    network_dns: Vec<std::net::IpAddr>,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // A panicking actor is restarted by the supervisor; route the panic report through the log
    // instead of a bare stderr line.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(target: "panic", "{info}");
    }));
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    if args.network && !NetworkConfig::can_make_taps() {
        eprintln!("crosd: --network needs root and /dev/net/tun (to make a tap per VM)");
        return ExitCode::from(2);
    }
    if args.container_pool.overlaps(&args.network_pool) {
        eprintln!(
            "crosd: {}",
            PoolError::Overlap(args.container_pool, args.network_pool)
        );
        return ExitCode::from(2);
    }
    raise_fd_limit();
    let config = DaemonConfig {
        socket: args
            .socket
            .clone()
            .unwrap_or_else(|| args.run_dir.join(SOCKET_NAME)),
        state_dir: args.state_dir,
        run_dir: args.run_dir,
        socket_group: args.socket_group,
        trace: args.trace,
        hypervisor: HypervisorConfig {
            kind: args.hypervisor.into(),
            bin_dir: args.bin_dir,
            backend: None,
        },
        vm_stop_timeout: std::time::Duration::from_secs(args.vm_stop_timeout),
        max_clients: args.max_clients,
        network: NetworkConfig {
            enabled: args.network && !args.no_network,
            pool: args.network_pool,
            container_pool: args.container_pool,
            hosts_file: args.hosts_file,
            dns: (!args.network_dns.is_empty())
                .then(|| args.network_dns.iter().map(|a| a.to_string()).collect()),
        },
    };
    let system = actix::System::new();
    let result = system.block_on(async {
        let stop = termination_signal().context("cannot install signal handlers")?;
        let daemon = Daemon::start(&config).await?;
        daemon.run_until(stop).await;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
