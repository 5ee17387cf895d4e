//! vCPU threads: each runs KVM_RUN in a loop and dispatches port I/O and MMIO exits to the
//! buses. A guest access nobody claims is logged and ignored; KVM failures and exits that end
//! the VM go to the VMM as a [`VcpuEvent`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::devices::bus::Bus;
use crate::event_channel::EventSender;
use crate::thread::{self, ThreadSpec};

/// Why a vCPU stopped running the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest triple-faulted: on a PC that resets the CPU; for us it ends the VM.
    TripleFault { cpu: u8, rip: Option<u64> },
    /// KVM could not run or emulate guest code (on a nested /dev/kvm: unsupported instructions).
    Fatal { cpu: u8, reason: String },
}

/// The buses a vCPU dispatches its exits to.
#[derive(Clone)]
pub struct VcpuBuses {
    pub io: Arc<Bus>,
    pub mmio: Arc<Bus>,
}

/// The signal used to kick a vCPU out of KVM_RUN when the VM stops.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_signal_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for [`kick_signal`]: its only job is to make KVM_RUN return
/// EINTR so the vCPU thread sees that the VM is stopping.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), noop_signal_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Pausing the vCPUs: the VMM sets `requested` and kicks every vCPU out of KVM_RUN; each
/// parks here until resumed or stopped, and the VMM waits until all have parked.
#[derive(Default)]
pub struct PauseControl {
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    parked: usize,
}

impl PauseControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the vCPUs to park (they do at their next exit or kick).
    pub fn request_pause(&self) {
        self.lock().requested = true;
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.lock().requested = false;
        self.changed.notify_all();
    }

    /// Whether a pause is requested.
    pub fn is_paused(&self) -> bool {
        self.lock().requested
    }

    /// How many vCPUs are parked now.
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Called by a vCPU thread between KVM_RUN calls: parks while a pause is requested.
    fn park_if_requested(&self, stop: &AtomicBool) {
        let mut state = self.lock();
        if !state.requested {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.requested && !stop.load(Ordering::Acquire) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub cpu: u8,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// Sends the kick signal once (KVM_RUN returns EINTR).
    pub fn kick(&self) {
        let _ = self.thread.kill(kick_signal());
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the thread: `stop` must already be set. Signals it until it leaves KVM_RUN (a
    /// signal sent just before it re-enters KVM_RUN would be lost, so we repeat it).
    pub fn stop_and_join(self) {
        while !self.thread.is_finished() {
            let _ = self.thread.kill(kick_signal());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if self.thread.join().is_err() {
            tracing::error!(cpu = self.cpu, "vCPU thread panicked");
        }
    }
}

/// Starts the thread of vCPU `cpu` (`spec`: its name and filter). A failed filter or a
/// panic ends the VM with a [`VcpuEvent::Fatal`].
pub fn spawn_vcpu(
    cpu: u8,
    mut vcpu: VcpuFd,
    buses: VcpuBuses,
    stop: Arc<AtomicBool>,
    pause: Arc<PauseControl>,
    events: EventSender<VcpuEvent>,
    spec: ThreadSpec,
) -> std::io::Result<VcpuHandle> {
    let failures = events.clone();
    let on_failure = move |reason| {
        failures.send(VcpuEvent::Fatal { cpu, reason });
    };
    let thread = thread::spawn(spec, on_failure, move || {
        if let Some(event) = run_loop(cpu, &mut vcpu, &buses, &stop, &pause) {
            events.send(event);
        }
    })?;
    Ok(VcpuHandle { cpu, thread })
}

fn run_loop(
    cpu: u8,
    vcpu: &mut VcpuFd,
    buses: &VcpuBuses,
    stop: &AtomicBool,
    pause: &PauseControl,
) -> Option<VcpuEvent> {
    while !stop.load(Ordering::Acquire) {
        pause.park_if_requested(stop);
        if stop.load(Ordering::Acquire) {
            break;
        }
        match vcpu.run() {
            Ok(exit) => match handle_exit(cpu, exit, buses) {
                ExitAction::Continue => {}
                ExitAction::TripleFault => {
                    let rip = vcpu.get_regs().ok().map(|r| r.rip);
                    return Some(VcpuEvent::TripleFault { cpu, rip });
                }
                ExitAction::InternalError => {
                    let reason = internal_error_reason(vcpu);
                    return Some(fatal_at_rip(cpu, vcpu, reason));
                }
                ExitAction::Fatal(reason) => return Some(fatal_at_rip(cpu, vcpu, reason)),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                return Some(VcpuEvent::Fatal {
                    cpu,
                    reason: format!("KVM_RUN failed: {e}"),
                });
            }
        }
    }
    None
}

/// A fatal exit, with the guest's RIP when KVM still gives it.
fn fatal_at_rip(cpu: u8, vcpu: &VcpuFd, reason: String) -> VcpuEvent {
    let reason = match vcpu.get_regs() {
        Ok(regs) => format!("{reason} (guest rip {:#x})", regs.rip),
        Err(_) => reason,
    };
    VcpuEvent::Fatal { cpu, reason }
}

enum ExitAction {
    Continue,
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR: the details are in kvm_run, read once the exit is released.
    InternalError,
    Fatal(String),
}

/// Describes KVM_EXIT_INTERNAL_ERROR from the vCPU's kvm_run: the sub-error and, for an
/// emulation failure, the instruction bytes KVM could not emulate.
fn internal_error_reason(vcpu: &mut VcpuFd) -> String {
    use kvm_bindings::{
        KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
        KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    };
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, for which KVM fills `internal`
    // (and, for emulation failures, the `emulation_failure` layout over the same bytes).
    let (suberror, flags, insn) = unsafe {
        let failure = run.__bindgen_anon_1.emulation_failure;
        let bytes = failure.__bindgen_anon_1.__bindgen_anon_1;
        (
            run.__bindgen_anon_1.internal.suberror,
            failure.flags,
            (bytes.insn_size, bytes.insn_bytes),
        )
    };
    match suberror {
        KVM_INTERNAL_ERROR_EMULATION => {
            let mut reason = String::from("KVM could not emulate a guest instruction");
            if flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0 {
                let n = usize::from(insn.0).min(insn.1.len());
                let hex: Vec<String> = insn.1[..n].iter().map(|b| format!("{b:02x}")).collect();
                reason.push_str(&format!(" (bytes {})", hex.join(" ")));
            }
            reason
        }
        KVM_INTERNAL_ERROR_SIMUL_EX => "KVM internal error: exception during exception".into(),
        KVM_INTERNAL_ERROR_DELIVERY_EV => "KVM internal error: event delivery failed".into(),
        other => format!("KVM internal error (sub-error {other})"),
    }
}

fn handle_exit(cpu: u8, exit: VcpuExit<'_>, buses: &VcpuBuses) -> ExitAction {
    // An access no device claims is logged by the bus and otherwise ignored.
    let _claimed = match exit {
        VcpuExit::IoIn(port, data) => buses.io.read(u64::from(port), data),
        VcpuExit::IoOut(port, data) => buses.io.write(u64::from(port), data),
        VcpuExit::MmioRead(addr, data) => buses.mmio.read(addr, data),
        VcpuExit::MmioWrite(addr, data) => buses.mmio.write(addr, data),
        other => return other_exit(cpu, other),
    };
    ExitAction::Continue
}

/// An exit that is not a device access.
fn other_exit(cpu: u8, exit: VcpuExit<'_>) -> ExitAction {
    match exit {
        // With the in-kernel LAPIC, HLT waits in the kernel; a HLT exit means the vCPU halted
        // with interrupts it can never get, which we report rather than spin on.
        VcpuExit::Hlt => ExitAction::Fatal("guest halted with no way to wake up".into()),
        VcpuExit::Shutdown => ExitAction::TripleFault,
        VcpuExit::FailEntry(reason, _) => ExitAction::Fatal(format!(
            "KVM could not enter the guest (hardware entry failure reason {reason:#x})"
        )),
        VcpuExit::InternalError => ExitAction::InternalError,
        VcpuExit::SystemEvent(kind, _) => {
            ExitAction::Fatal(format!("unexpected KVM system event {kind}"))
        }
        other => {
            tracing::debug!(cpu, "ignored vCPU exit {other:?}");
            ExitAction::Continue
        }
    }
}
