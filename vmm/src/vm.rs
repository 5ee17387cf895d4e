//! A built VM and its run: [`Vm::run`] starts the vCPU threads, the serial console and the
//! control socket, then drives one epoll loop on the calling thread over every source that
//! can change the VM's course — the guest's reset and power-off eventfds, vCPU exits,
//! control requests, device failures and the stop signals (SIGTERM, SIGINT) — and tears the
//! VM down in order once it ends. No thread only relays one of those into another channel.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::MmioDeviceInfo;
use crate::config::VmConfig;
use crate::control::{ControlRequest, ControlServer};
use crate::devices::legacy::console::forward_stdin;
use crate::devices::legacy::ged::{Ged, GedEvent};
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::block::resize::BlockDevices;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::pmem::PmemMapping;
use crate::devices::virtio::worker::{DeviceFailure, DeviceWorker};
use crate::error::{VmmError, io_err};
use crate::event_channel::{EventReceiver, EventSender, event_channel};
use crate::seccomp::{self, Filters, ThreadKind};
use crate::signals::{StopSignals, signal_name};
use crate::thread::{self, ThreadSpec};
use crate::vcpu::{self, PauseControl, VcpuBuses, VcpuEvent, VcpuHandle};
use cros_messages::CrosError;
use cros_messages::crosvm::{CrosvmReply, CrosvmRequest, VmRunState};

/// How a VM that ran ended without a VMM error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine: the i8042 pulse-reset command (Linux `reboot=k`, our
    /// payloads) or the ACPI reset register (Linux `reboot`).
    GuestReset,
    /// The guest entered ACPI S5 through the sleep control register (Linux `poweroff`): on
    /// its own, or in answer to the power button a Stop request (or SIGTERM) pressed.
    GuestPowerOff,
    /// A Stop request (or SIGTERM) pressed the power button and the guest did not power off
    /// (or reset) within the stop timeout, so the VMM ended it.
    StopForced,
}

/// The legacy devices the event loop talks to: COM1 (for the console and the last flush),
/// the GED (the power button), and the eventfds the guest ends the VM through.
pub struct LegacyDevices {
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) ged: Arc<Mutex<Ged>>,
    pub(crate) reset_evt: EventFd,
    pub(crate) power_off_evt: EventFd,
}

/// The virtio devices: one window, transport and device thread each, in window order.
pub struct VirtioDevices {
    pub(crate) windows: Vec<MmioDeviceInfo>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    workers: Vec<DeviceWorker>,
    /// The `--block` disks, for ResizeDisk.
    pub(crate) disks: BlockDevices,
    /// pmem images mapped into guest memory; unmapped only after the vCPUs have stopped.
    pub(crate) pmem_maps: Vec<PmemMapping>,
    failure_tx: EventSender<DeviceFailure>,
    failures: EventReceiver<DeviceFailure>,
}

impl VirtioDevices {
    pub(crate) fn new(
        failure_tx: EventSender<DeviceFailure>,
        failures: EventReceiver<DeviceFailure>,
    ) -> Self {
        Self {
            windows: Vec::new(),
            transports: Vec::new(),
            workers: Vec::new(),
            disks: BlockDevices::default(),
            pmem_maps: Vec::new(),
            failure_tx,
            failures,
        }
    }

    /// Where a device thread reports a failure.
    pub(crate) fn failure_sender(&self) -> EventSender<DeviceFailure> {
        self.failure_tx.clone()
    }

    pub(crate) fn push(
        &mut self,
        info: MmioDeviceInfo,
        transport: Arc<Mutex<MmioTransport>>,
        worker: DeviceWorker,
    ) {
        self.windows.push(info);
        self.transports.push(transport);
        self.workers.push(worker);
    }

    /// A device thread reset its device after a failure (already logged): the driver is told
    /// to reset it too.
    fn device_failed(&self, failure: &DeviceFailure) {
        tracing::warn!(
            device = failure.device,
            "{}; the guest's driver must reset the device",
            failure.reason
        );
        if let Some(transport) = self.transports.get(failure.device) {
            let mut transport = transport.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = transport.device_failed() {
                tracing::warn!("cannot tell the driver the device needs a reset: {e}");
            }
        }
    }

    /// Stops every device thread.
    fn stop(&mut self) {
        self.workers.drain(..).for_each(DeviceWorker::stop);
    }
}

/// A VM ready to run (see [`crate::builder`]).
pub struct Vm {
    pub(crate) config: VmConfig,
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) buses: VcpuBuses,
    pub(crate) legacy: LegacyDevices,
    pub(crate) virtio: VirtioDevices,
    pub(crate) filters: Filters,
    pub(crate) signals: StopSignals,
    pub(crate) confine_event_loop: bool,
    /// Guest RAM: outlives every vCPU thread.
    pub(crate) _mem: GuestMemoryMmap,
    pub(crate) _vm: VmFd,
}

/// The event loop's sources, as epoll tokens.
#[derive(Clone, Copy)]
enum Source {
    GuestReset,
    GuestPowerOff,
    Vcpu,
    Control,
    DeviceFailure,
    Signal,
}

const SOURCES: [Source; 6] = [
    Source::GuestReset,
    Source::GuestPowerOff,
    Source::Vcpu,
    Source::Control,
    Source::DeviceFailure,
    Source::Signal,
];

/// The threads of a running VM, and what the event loop keeps between events.
struct Running {
    vcpus: Vec<VcpuHandle>,
    stop: Arc<AtomicBool>,
    pause: Arc<PauseControl>,
    vcpu_events: EventReceiver<VcpuEvent>,
    control: Option<(ControlServer, EventReceiver<ControlRequest>)>,
    console: Option<(JoinHandle<()>, EventFd)>,
    /// Set by the first Stop request or signal: when the power button was pressed, and when
    /// the guest's time to power off runs out.
    stopping: Option<(Instant, Instant)>,
}

impl Vm {
    /// Also confine the thread that calls [`Vm::run`] (with the event loop's filter, once the
    /// VM's threads have started): for a process whose life is this VM (`crosvm run`), not
    /// for a caller that goes on after it (tests, the KVM probe).
    pub fn confine_event_loop(&mut self) {
        self.confine_event_loop = true;
    }

    /// Runs the VM until the guest resets or powers it off, a stop ends it, or a vCPU fails.
    pub fn run(mut self) -> Result<VmExit, VmmError> {
        let mut running = self.start()?;
        let outcome = self.event_loop(&mut running);
        self.teardown(running);
        outcome
    }

    /// Starts the vCPU threads, then the console and the control socket.
    fn start(&mut self) -> Result<Running, VmmError> {
        vcpu::install_kick_handler()
            .map_err(io_err("cannot install the vCPU kick signal handler"))?;
        let (vcpu_tx, vcpu_events) =
            event_channel().map_err(io_err("cannot create the vCPU event channel"))?;
        let mut running = Running {
            vcpus: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            pause: Arc::new(PauseControl::default()),
            vcpu_events,
            control: None,
            console: None,
            stopping: None,
        };
        let vcpus = std::mem::take(&mut self.vcpus);
        for (cpu, vcpu) in vcpus.into_iter().enumerate() {
            let spec = ThreadSpec::new(format!("vcpu{cpu}"), ThreadKind::Vcpu, &self.filters);
            match vcpu::spawn_vcpu(
                cpu as u8,
                vcpu,
                self.buses.clone(),
                running.stop.clone(),
                running.pause.clone(),
                vcpu_tx.clone(),
                spec,
            ) {
                Ok(handle) => running.vcpus.push(handle),
                Err(e) => {
                    self.teardown(running);
                    return Err(io_err("cannot start a vCPU thread")(e));
                }
            }
        }
        tracing::info!(
            cpus = self.config.cpus,
            mem_mib = self.config.mem_mib,
            "VM started"
        );
        if let Err(e) = self.start_console_and_control(&mut running) {
            self.teardown(running);
            return Err(e);
        }
        Ok(running)
    }

    fn start_console_and_control(&self, running: &mut Running) -> Result<(), VmmError> {
        if self.config.serial_input {
            let stop = EventFd::new(0).map_err(io_err("cannot create the console eventfd"))?;
            let thread_stop = stop
                .try_clone()
                .map_err(io_err("cannot clone the console eventfd"))?;
            let serial = self.legacy.serial.clone();
            let spec = ThreadSpec::new("serial-input", ThreadKind::Console, &self.filters);
            let thread = thread::spawn(spec, |_| {}, move || forward_stdin(&serial, &thread_stop))
                .map_err(io_err("cannot start the serial input thread"))?;
            running.console = Some((thread, stop));
        }
        if let Some(path) = &self.config.control_socket {
            let (tx, requests) =
                event_channel().map_err(io_err("cannot create the control channel"))?;
            let spec = ThreadSpec::new("control", ThreadKind::Control, &self.filters);
            running.control = Some((ControlServer::start(path, tx, spec)?, requests));
        }
        Ok(())
    }

    /// The epoll set over every source, for this run.
    fn event_sources(&self, running: &Running) -> Result<Epoll, VmmError> {
        let epoll = Epoll::new().map_err(io_err("cannot create the VMM's epoll"))?;
        for source in SOURCES {
            let fd: Option<RawFd> = match source {
                Source::GuestReset => Some(self.legacy.reset_evt.as_raw_fd()),
                Source::GuestPowerOff => Some(self.legacy.power_off_evt.as_raw_fd()),
                Source::Vcpu => Some(running.vcpu_events.as_raw_fd()),
                Source::Control => running.control.as_ref().map(|(_, rx)| rx.as_raw_fd()),
                Source::DeviceFailure => Some(self.virtio.failures.as_raw_fd()),
                Source::Signal => Some(self.signals.as_raw_fd()),
            };
            if let Some(fd) = fd {
                epoll
                    .ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, source as u64),
                    )
                    .map_err(io_err("cannot add an event source to the VMM's epoll"))?;
            }
        }
        Ok(epoll)
    }

    fn event_loop(&mut self, running: &mut Running) -> Result<VmExit, VmmError> {
        let epoll = self.event_sources(running)?;
        if self.confine_event_loop
            && let Some(filter) = self.filters.get(ThreadKind::EventLoop)
        {
            seccomp::install(ThreadKind::EventLoop, &filter)?;
        }
        let mut events = [EpollEvent::default(); SOURCES.len()];
        loop {
            let timeout = match running.stopping {
                None => -1,
                Some((_, deadline)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // Rounded up, so the loop never wakes just before the deadline.
                    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            };
            let n = match epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("the VMM's epoll failed")(e)),
            };
            if n == 0 && running.stopping.is_some_and(|(_, d)| Instant::now() >= d) {
                tracing::warn!(
                    timeout_ms = self.config.stop_timeout.as_millis() as u64,
                    "the guest did not power off within the stop timeout after the power \
                     button; forcing the VM off"
                );
                return Ok(VmExit::StopForced);
            }
            for event in &events[..n] {
                let source = SOURCES[event.data() as usize];
                if let Some(outcome) = self.handle(source, running) {
                    return outcome;
                }
            }
        }
    }

    /// What `source` being ready means; `Some` once the VM ends.
    fn handle(
        &mut self,
        source: Source,
        running: &mut Running,
    ) -> Option<Result<VmExit, VmmError>> {
        match source {
            Source::GuestReset | Source::GuestPowerOff => {
                if let Some((pressed, _)) = running.stopping {
                    tracing::info!(
                        after_ms = pressed.elapsed().as_millis() as u64,
                        "the guest shut down in answer to the power button"
                    );
                }
                Some(Ok(match source {
                    Source::GuestReset => VmExit::GuestReset,
                    _ => VmExit::GuestPowerOff,
                }))
            }
            Source::Vcpu => running
                .vcpu_events
                .drain()
                .into_iter()
                .next()
                .map(|event| Err(vcpu_error(event))),
            Source::Control => {
                let requests = running.control.as_ref()?.1.drain();
                requests
                    .into_iter()
                    .find_map(|request| self.control_request(request, running))
                    .map(Ok)
            }
            Source::DeviceFailure => {
                for failure in self.virtio.failures.drain() {
                    self.virtio.device_failed(&failure);
                }
                None
            }
            Source::Signal => {
                let signals = self.signals.take();
                let signo = *signals.first()?;
                tracing::info!(
                    "{} received: stopping the VM as a Stop request does",
                    signal_name(signo)
                );
                self.begin_stop(running).map(Ok)
            }
        }
    }

    /// Carries out a control request and answers it; `Some` when it ends the VM.
    fn control_request(
        &mut self,
        ControlRequest { request, reply }: ControlRequest,
        running: &mut Running,
    ) -> Option<VmExit> {
        let answer: Result<CrosvmReply, CrosError> = match request {
            CrosvmRequest::Status {} => Ok(self.status(&running.pause)),
            CrosvmRequest::Pause {} => {
                running.pause_vcpus();
                Ok(CrosvmReply::Ack {})
            }
            CrosvmRequest::Resume {} => {
                running.pause.resume();
                Ok(CrosvmReply::Ack {})
            }
            CrosvmRequest::Stop {} => {
                // Answered at once: `crosvm stop` waits for the process to exit, and the
                // control socket stays up for status requests meanwhile.
                let _ = reply.send(Ok(CrosvmReply::Ack {}));
                return self.begin_stop(running);
            }
            CrosvmRequest::ResizeDisk { index, size } => self
                .virtio
                .disks
                .resize(index, size)
                .map(|()| CrosvmReply::Ack {}),
        };
        let _ = reply.send(answer);
        None
    }

    fn status(&self, pause: &PauseControl) -> CrosvmReply {
        CrosvmReply::Status {
            state: if pause.is_paused() {
                VmRunState::Paused
            } else {
                VmRunState::Running
            },
            pid: std::process::id(),
            vcpus: u32::from(self.config.cpus),
            memory_mib: u32::try_from(self.config.mem_mib).unwrap_or(u32::MAX),
        }
    }

    /// A Stop request or a stop signal: presses the power button and gives the guest its
    /// stop timeout; `Some` when the VM ends at once (no timeout, or no button to press).
    fn begin_stop(&self, running: &mut Running) -> Option<VmExit> {
        if running.stopping.is_some() {
            return None;
        }
        if self.config.stop_timeout.is_zero() {
            tracing::info!("stop requested with no stop timeout: forcing the VM off");
            return Some(VmExit::StopForced);
        }
        // A paused guest could not answer the power button.
        running.pause.resume();
        let pressed = Instant::now();
        let press = self
            .legacy
            .ged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify(GedEvent::PowerButton);
        if let Err(e) = press {
            tracing::error!("{e}; forcing the VM off");
            return Some(VmExit::StopForced);
        }
        tracing::info!(
            timeout_ms = self.config.stop_timeout.as_millis() as u64,
            "stop requested: pressed the ACPI power button, waiting for the guest to power off"
        );
        running.stopping = Some((pressed, pressed + self.config.stop_timeout));
        None
    }

    /// Stops every thread (vCPUs first: a device may still be serving their last requests),
    /// flushes the console, and only then lets guest memory go.
    fn teardown(&mut self, running: Running) {
        // Parked vCPUs must wake to see the stop.
        running.pause.resume();
        running.stop.store(true, Ordering::Release);
        running
            .vcpus
            .into_iter()
            .for_each(VcpuHandle::stop_and_join);
        if let Some((thread, stop)) = running.console {
            let _ = stop.write(1);
            let _ = thread.join();
        }
        drop(running.control);
        self.virtio.stop();
        self.legacy
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush();
    }
}

impl Running {
    /// Parks every running vCPU: kicks until all have (a kick that lands just before
    /// KVM_RUN is lost, so it is repeated).
    fn pause_vcpus(&self) {
        self.pause.request_pause();
        while self.pause.parked() < self.vcpus.iter().filter(|h| !h.is_finished()).count() {
            self.vcpus.iter().for_each(VcpuHandle::kick);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn vcpu_error(event: VcpuEvent) -> VmmError {
    match event {
        VcpuEvent::TripleFault { cpu, rip } => VmmError::TripleFault {
            cpu,
            rip: rip.map_or_else(|| "unknown".into(), |r| format!("{r:#x}")),
        },
        VcpuEvent::Fatal { cpu, reason } => VmmError::VcpuFatal { cpu, reason },
    }
}
