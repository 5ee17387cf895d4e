//! One VM's life: boot through a hypervisor backend, wait for maitred's VmReady, StartTermina;
//! stop through maitred, then the VMM's own stop, SIGTERM and SIGKILL (REFERENCE.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cros_hypervisor::{DiskSpec, Hypervisor, VmHandle, VmSpec, VsockSpec};
use cros_messages::concierge::StartVm;
use cros_messages::imageloader::{ImageloaderReply, ImageloaderRequest, LoadedComponent};
use cros_messages::maitred::{MaitredReply, MaitredRequest};
use cros_messages::termina::{ROOTFS_SERIAL, STATEFUL_SERIAL, TOOLS_SERIAL};
use cros_messages::{Addr, Body, CrosError, ErrorKind, ports};

use crate::bridge::GuestBridges;
use crate::bus::BusHandle;

/// The component concierge boots.
pub const TERMINA_COMPONENT: &str = "cros-termina";
/// How long maitred may take to shut the guest down cleanly, and the VMM to exit afterwards.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const EXIT_AFTER_SHUTDOWN: Duration = Duration::from_secs(10);
/// SIGTERM → SIGKILL grace for the VMM.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// Console lines quoted in boot errors.
const CONSOLE_TAIL_LINES: usize = 15;

/// What StartVm asked for, checked, with what concierge chose for it.
#[derive(Debug, Clone)]
pub struct BootPlan {
    pub request: StartVm,
    pub cid: u32,
    pub run_dir: PathBuf,
    pub stateful: PathBuf,
    pub timeout: Duration,
    /// StartVm's extra disks, checked, attached after the stateful disk.
    pub extra_disks: Vec<DiskSpec>,
}

impl BootPlan {
    pub fn name(&self) -> &str {
        &self.request.name
    }
    pub fn vsock_uds(&self) -> PathBuf {
        self.run_dir.join("vsock.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }
}

/// Checks user-supplied kernel parameters: words without whitespace or control characters,
/// not touching the parameters crosd sets itself.
pub fn check_kernel_params(params: &[String]) -> Result<(), CrosError> {
    for p in params {
        if p.is_empty() || p.len() > 256 || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(CrosError::invalid(format!(
                "kernel parameter {p:?} must be one word of at most 256 characters"
            )));
        }
        if p.starts_with("crosd.") || p.starts_with("console=") || p.starts_with("init=") {
            return Err(CrosError::invalid(format!(
                "kernel parameter {p:?} is set by crosd and cannot be overridden"
            )));
        }
    }
    Ok(())
}

/// Where the stateful disk is in the VM's disk list (after the rootfs and tools disks).
pub const STATEFUL_DISK_INDEX: usize = 2;

/// How a VM's hypervisor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    pub success: bool,
    pub detail: String,
}

/// What concierge asks of the thread that owns a VM's processes.
enum WatcherCommand {
    /// SIGTERM, SIGKILL after the grace period.
    Stop(Duration),
    /// The ACPI power button.
    RequestShutdown(tokio::sync::oneshot::Sender<Result<(), String>>),
    ResizeDisk {
        index: usize,
        size: u64,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Owns the VM's processes on a thread of its own (process waits block) and reports the exit.
pub struct VmWatcher {
    commands: std::sync::mpsc::Sender<WatcherCommand>,
    exited: tokio::sync::watch::Receiver<Option<VmExit>>,
    pub pid: u32,
}

impl VmWatcher {
    /// Starts the VM on a thread of its own, which then watches it until it exits. The thread
    /// that starts the VM's processes lives exactly as long as they do, so the backend can tie
    /// their lives to it (PR_SET_PDEATHSIG): a crosd killed outright takes its VMs along rather
    /// than leaving a VM that a restarted crosd would boot a second time on the same disk.
    pub async fn start(
        hypervisor: Arc<dyn Hypervisor>,
        spec: VmSpec,
        console: PathBuf,
        on_exit: impl FnOnce(VmExit) + Send + 'static,
    ) -> Result<VmWatcher, CrosError> {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (commands, command_rx) = std::sync::mpsc::channel();
        let (exit_tx, exited) = tokio::sync::watch::channel(None);
        let name = spec.name.clone();
        let backend = hypervisor.name();
        std::thread::Builder::new()
            .name(format!("vm-{name}"))
            .spawn(move || {
                let handle = match hypervisor.start(&spec) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(handle.pid()));
                watch(handle, command_rx, exit_tx, console, on_exit);
            })
            .map_err(|e| {
                CrosError::internal(format!("cannot start a thread for VM {name}: {e}"))
            })?;
        match started.await {
            Ok(Ok(pid)) => Ok(VmWatcher {
                commands,
                exited,
                pid,
            }),
            Ok(Err(e)) => Err(CrosError::unavailable(format!(
                "cannot start VM {name} with {backend}: {e}"
            ))),
            Err(_) => Err(CrosError::internal(format!(
                "the start of VM {name} ended without a result"
            ))),
        }
    }

    /// Asks the watcher to stop the VMM: SIGTERM, SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) {
        let _ = self.commands.send(WatcherCommand::Stop(grace));
    }

    /// Presses the VM's ACPI power button (see `VmHandle::request_shutdown`).
    pub async fn request_shutdown(&self) -> Result<(), String> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.command(WatcherCommand::RequestShutdown(done), result)
            .await
    }

    /// Tells the VMM that disk `index` now has `size` bytes (see `VmHandle::resize_disk`).
    pub async fn resize_disk(&self, index: usize, size: u64) -> Result<(), String> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.command(WatcherCommand::ResizeDisk { index, size, done }, result)
            .await
    }

    async fn command(
        &self,
        command: WatcherCommand,
        result: tokio::sync::oneshot::Receiver<Result<(), String>>,
    ) -> Result<(), String> {
        if self.commands.send(command).is_err() {
            return Err("the VM has exited".into());
        }
        result
            .await
            .unwrap_or_else(|_| Err("the VM exited before the request was carried out".into()))
    }

    /// Like [`VmWatcher::wait_exit`], for callers outside the async runtime (shutdown).
    pub fn wait_exit_blocking(&self, timeout: Duration) -> Option<VmExit> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.exited.borrow().clone() {
                return Some(e);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits at most `timeout` for the hypervisor to exit.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<VmExit> {
        let mut rx = self.exited.clone();
        let exited = async {
            loop {
                if let Some(e) = rx.borrow_and_update().clone() {
                    return Some(e);
                }
                if rx.changed().await.is_err() {
                    return rx.borrow().clone();
                }
            }
        };
        tokio::time::timeout(timeout, exited).await.ok().flatten()
    }
}

/// The watcher thread's work once the VM runs: carries out concierge's commands, waits for the
/// VMM (or a dead device backend) and reports how the VM ended.
fn watch(
    mut handle: VmHandle,
    command_rx: std::sync::mpsc::Receiver<WatcherCommand>,
    exit_tx: tokio::sync::watch::Sender<Option<VmExit>>,
    console: PathBuf,
    on_exit: impl FnOnce(VmExit),
) {
    let pid = handle.pid();
    let status = 'watch: loop {
        loop {
            let command = match command_rx.try_recv() {
                Ok(command) => command,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                // Nobody holds the VM's watcher any more (its boot was lost with a crashed
                // concierge): nobody could ever stop it, so stop it now.
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    tracing::warn!(pid, "the VM's watcher was dropped: stopping the VM");
                    break 'watch handle.stop(KILL_GRACE);
                }
            };
            match command {
                WatcherCommand::Stop(grace) => break 'watch handle.stop(grace),
                WatcherCommand::RequestShutdown(done) => {
                    let _ = done.send(handle.request_shutdown().map_err(|e| e.to_string()));
                }
                WatcherCommand::ResizeDisk { index, size, done } => {
                    let _ = done.send(handle.resize_disk(index, size).map_err(|e| e.to_string()));
                }
            }
        }
        match handle.wait_timeout(Duration::from_millis(100)) {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if let Some((what, status, log)) = handle.exited_helper() {
            tracing::warn!(pid, what, %status, log = %log.display(), "a device backend of the VM exited; stopping the VM");
            break handle.stop(KILL_GRACE);
        }
    };
    let exit = match status {
        Ok(s) => VmExit {
            success: s.success(),
            detail: format!("hypervisor {s}"),
        },
        Err(e) => VmExit {
            success: false,
            detail: format!("waiting for the hypervisor: {e}"),
        },
    };
    let exit = if exit.success {
        exit
    } else {
        VmExit {
            detail: format!("{}; console:\n{}", exit.detail, console_tail(&console)),
            ..exit
        }
    };
    let _ = exit_tx.send(Some(exit.clone()));
    on_exit(exit);
}

/// The last lines of the console log, for error messages.
pub fn console_tail(console: &Path) -> String {
    cros_hypervisor::console::tail(console, CONSOLE_TAIL_LINES)
}

async fn load_component(
    bus: &BusHandle,
    version: Option<String>,
) -> Result<LoadedComponent, CrosError> {
    let req = Body::Imageloader(ImageloaderRequest::LoadComponent {
        name: TERMINA_COMPONENT.into(),
        version,
    });
    match bus
        .request(&Addr::host("concierge"), &Addr::host("imageloader"), req)
        .await?
    {
        Body::ImageloaderReply(ImageloaderReply::Loaded { component }) => Ok(component),
        other => Err(CrosError::internal(format!(
            "imageloader answered LoadComponent with {}",
            other.type_name()
        ))),
    }
}

/// How concierge asks maitred of VM `vm` for something: through the bus, like any actor.
pub async fn ask_maitred(
    bus: &BusHandle,
    vm: &str,
    req: MaitredRequest,
    deadline: Duration,
) -> Result<MaitredReply, CrosError> {
    let what = Body::Maitred(req.clone()).type_name();
    match bus
        .request_with_deadline(
            &Addr::host("concierge"),
            &Addr::in_vm("maitred", vm),
            Body::Maitred(req),
            deadline,
        )
        .await?
    {
        Body::MaitredReply(reply) => Ok(reply),
        other => Err(CrosError::internal(format!(
            "maitred@{vm} answered {what} with {}",
            other.type_name()
        ))),
    }
}

/// A booted VM: its processes and its bridges onto the bus.
pub struct Booted {
    pub watcher: VmWatcher,
    pub bridges: GuestBridges,
}

/// Boots the VM of `plan`; on any failure every process started is stopped again. `ready`
/// fires when maitred's VmReady reaches concierge (through the VM's bridge on port 7777).
pub async fn boot(
    plan: BootPlan,
    bus: BusHandle,
    hypervisor: Arc<dyn Hypervisor>,
    ready: tokio::sync::oneshot::Receiver<()>,
    on_exit: impl FnOnce(VmExit) + Send + 'static,
) -> Result<Booted, CrosError> {
    let name = plan.name().to_string();
    let component = load_component(&bus, plan.request.component_version.clone()).await?;
    if !plan.stateful.exists() {
        return Err(CrosError::not_found(format!(
            "VM {name} has no disk at {}: create it with CreateDiskImage first (vmc start does)",
            plan.stateful.display()
        )));
    }
    cros_hypervisor::fsutil::ensure_private_dir(&plan.run_dir)
        .map_err(|e| CrosError::internal(format!("create {}: {e}", plan.run_dir.display())))?;
    let uds = plan.vsock_uds();
    // The host ports listen before the guest can dial them.
    let bridges = GuestBridges::start(&bus, &name, &uds)?;
    let network = super::network::allocate(&bus, &name).await?;
    let mut spec = vm_spec(&plan, &component);
    spec.net = network.as_ref().map(super::network::net_spec);
    let console = plan.console_log();
    let watcher = match VmWatcher::start(hypervisor, spec, console.clone(), on_exit).await {
        Ok(watcher) => watcher,
        Err(e) => {
            super::network::release(&bus, &name);
            return Err(e);
        }
    };

    let result = async {
        tokio::select! {
            r = tokio::time::timeout(plan.timeout, ready) => match r {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CrosError::internal(format!("VM {name} was forgotten while it booted"))),
                Err(_) => return Err(CrosError::timeout(format!(
                    "VM {name} sent no VmReady within {:?}; last console lines:\n{}", plan.timeout, console_tail(&console)
                ))),
            },
            exit = watcher.wait_exit(plan.timeout + Duration::from_secs(1)) => {
                let detail = exit.map(|e| e.detail).unwrap_or_else(|| "no exit status".into());
                return Err(CrosError::unavailable(format!("VM {name} stopped before it was ready: {detail}")));
            }
        }
        tracing::info!(vm = %name, "VmReady");
        if let Some(network) = &network {
            // A VM whose guest cannot take the address still runs (without a network): its
            // disks and containers are worth more than its network.
            if let Err(e) = super::network::configure_guest(&bus, &name, network, plan.timeout).await {
                tracing::warn!(vm = %name, error = %e, "the guest did not take its network configuration");
            }
        }
        if plan.request.start_termina {
            let lxd_ipv4_subnet = network.as_ref().map(|n| n.lxd_ipv4_subnet.clone()).unwrap_or_default();
            let req = MaitredRequest::StartTermina { stateful_device: String::new(), start_tremplin: true, lxd_ipv4_subnet };
            match ask_maitred(&bus, &name, req, plan.timeout).await? {
                MaitredReply::TerminaStarted { partial_data_loss, free_bytes } => {
                    if partial_data_loss {
                        tracing::warn!(vm = %name, "stateful disk needed usebackuproot: some data may be lost");
                    }
                    tracing::info!(vm = %name, free_bytes, "termina started");
                }
                other => return Err(CrosError::internal(format!("maitred answered StartTermina with {}", Body::MaitredReply(other).type_name()))),
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        super::network::release(&bus, &name);
        watcher.stop(KILL_GRACE);
        watcher.wait_exit(KILL_GRACE + Duration::from_secs(5)).await;
        return Err(e);
    }
    Ok(Booted { watcher, bridges })
}

/// The hypervisor's view of the plan: the component's kernel and images, the stateful disk at
/// [`STATEFUL_DISK_INDEX`] (resize addresses it by index), the extra disks, vsock.
fn vm_spec(plan: &BootPlan, component: &LoadedComponent) -> VmSpec {
    let req = &plan.request;
    let mut spec = VmSpec::new(req.name.clone(), &component.kernel, &plan.run_dir);
    spec.initrd = component.initrd.as_ref().map(PathBuf::from);
    spec.cmdline = std::iter::once(format!(
        "console=ttyS0 panic=-1 quiet crosd.vm={}",
        req.name
    ))
    .chain(req.kernel_params.iter().cloned())
    .collect::<Vec<_>>()
    .join(" ");
    spec.mem_mib = req.memory_mib;
    spec.cpus = req.cpus;
    let disk = |path: PathBuf, read_only, serial: &str, online_resize| DiskSpec {
        path,
        read_only,
        serial: Some(serial.into()),
        online_resize,
    };
    spec.disks = vec![
        disk(component.rootfs.clone().into(), true, ROOTFS_SERIAL, false),
        disk(component.tools.clone().into(), true, TOOLS_SERIAL, false),
        disk(plan.stateful.clone(), false, STATEFUL_SERIAL, true),
    ];
    spec.disks.extend(plan.extra_disks.iter().cloned());
    spec.vsock = Some(VsockSpec {
        guest_cid: plan.cid,
        uds_path: plan.vsock_uds(),
    });
    spec.console_log = plan.console_log();
    spec
}

/// Stops a VM: maitred Shutdown; if maitred does not answer or the VM stays up, the ACPI power
/// button; then the VMM, SIGTERM, SIGKILL. The gentle steps get what is left of `deadline` after
/// the time the forced stop needs, so a stop asked to finish by then does (crosd's own shutdown
/// gives every VM the same bounded time). Returns how it ended.
pub async fn stop(bus: &BusHandle, name: &str, watcher: &VmWatcher, deadline: Instant) -> VmExit {
    // SIGTERM, the grace, SIGKILL and the reaping.
    let forced = KILL_GRACE + Duration::from_secs(5);
    let gentle_until = deadline.checked_sub(forced).unwrap_or_else(Instant::now);
    let left = |step: Duration| step.min(gentle_until.saturating_duration_since(Instant::now()));
    if let Some(exit) = watcher.wait_exit(Duration::ZERO).await {
        return exit;
    }
    let shutdown = left(SHUTDOWN_TIMEOUT);
    let acknowledged = !shutdown.is_zero()
        && match ask_maitred(bus, name, MaitredRequest::Shutdown {}, shutdown).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(vm = name, error = %e, "maitred Shutdown failed");
                false
            }
        };
    if acknowledged && let Some(exit) = watcher.wait_exit(left(EXIT_AFTER_SHUTDOWN)).await {
        return exit;
    }
    // A guest whose maitred is gone may still honour the power button (the kernel's ACPI
    // button driver), which is kinder to its filesystems than a signal to the VMM.
    let button = left(EXIT_AFTER_SHUTDOWN);
    if !button.is_zero() {
        match watcher.request_shutdown().await {
            Ok(()) => {
                tracing::warn!(vm = name, "pressed the VM's power button");
                if let Some(exit) = watcher.wait_exit(left(EXIT_AFTER_SHUTDOWN)).await {
                    return exit;
                }
            }
            Err(e) => tracing::warn!(vm = name, error = %e, "cannot press the VM's power button"),
        }
    }
    tracing::warn!(
        vm = name,
        "VM still running after Shutdown and the power button: SIGTERM, then SIGKILL"
    );
    watcher.stop(KILL_GRACE);
    watcher.wait_exit(forced).await.unwrap_or(VmExit {
        success: false,
        detail: "the hypervisor did not exit after SIGKILL".into(),
    })
}

/// Lowest free context id from 3 up.
pub fn allocate_cid(used: impl IntoIterator<Item = u32>) -> u32 {
    let used: std::collections::BTreeSet<u32> = used.into_iter().collect();
    (ports::FIRST_GUEST_CID..)
        .find(|c| !used.contains(c))
        .unwrap_or(ports::FIRST_GUEST_CID)
}

/// Error for a VM name already in the table.
pub fn already_running(name: &str) -> CrosError {
    CrosError::new(
        ErrorKind::AlreadyExists,
        format!("VM {name:?} is already running"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_are_reused_lowest_first() {
        assert_eq!(allocate_cid([]), 3);
        assert_eq!(allocate_cid([3, 4, 6]), 5);
    }

    #[test]
    fn kernel_params_are_checked() {
        assert!(check_kernel_params(&["quiet".into(), "loglevel=7".into()]).is_ok());
        for bad in ["two words", "", "crosd.vm=x", "init=/bin/sh", "a\nb"] {
            assert!(check_kernel_params(&[bad.to_string()]).is_err(), "{bad:?}");
        }
    }
}
