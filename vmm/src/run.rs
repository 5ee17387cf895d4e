//! `crosvm run`: builds a VM from a [`VmConfig`] — KVM VM with in-kernel irqchip and PIT,
//! guest memory, kernel, command line, initrd, legacy devices, virtio-mmio devices, ACPI
//! tables, zero page, vCPUs — runs it, and returns why it ended.

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig, MmioDeviceInfo};
use crate::arch::x86_64::{cpuid, interrupts, msr, regs, zero_page};
use crate::config::CaptureWriter;
pub use crate::config::{BlockConfig, MAX_VCPUS, SerialOutput, VIRTIO_IRQ_BASE, VmConfig};
use crate::control::{ControlRequest, ControlServer};
use crate::devices::bus::Bus;
use crate::devices::legacy::EventFdTrigger;
use crate::devices::legacy::acpi_pm::{ACPI_PM_PORT, ACPI_PM_PORT_LEN, AcpiPm};
use crate::devices::legacy::console::forward_stdin;
use crate::devices::legacy::ged::{GED_IRQ, GED_PORT, GED_PORT_LEN, Ged, GedEvent};
use crate::devices::legacy::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::legacy::serial::{COM1_IRQ, COM1_PORT, COM1_PORT_LEN, SerialDevice};
use crate::devices::virtio::VirtioInterrupt;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::block::resize::BlockDevices;
use crate::devices::virtio::mmio::{self, MMIO_WINDOW_SIZE, MmioTransport};
use crate::devices::virtio::pmem::{PMEM_ALIGNMENT, Pmem};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock_mmio::VsockMmio;
use crate::devices::virtio::worker::{DeviceWorker, SharedVirtioDevice};
pub use crate::error::VmmError;
use crate::error::{io_err, kvm_err};
use crate::loader;
use crate::memory::{self, MMIO_HOLE_START};
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::{self, VcpuBuses, VcpuEvent};
use cros_messages::crosvm::{CrosvmReply, CrosvmRequest, VmRunState};
use seccompiler::BpfProgram;

/// KVM's TSS must sit in guest physical space outside RAM and MMIO; Firecracker's address.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// How a VM that ran ended without a VMM error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine: the i8042 pulse-reset command (Linux `reboot=k`, our
    /// payloads) or the ACPI reset register (Linux `reboot`).
    GuestReset,
    /// The guest entered ACPI S5 through the sleep control register (Linux `poweroff`): on
    /// its own, or in answer to the power button a Stop request pressed.
    GuestPowerOff,
    /// A Stop request pressed the power button and the guest did not power off (or reset)
    /// within the stop timeout, so the VMM ended it.
    StopForced,
}

fn open_kvm() -> Result<Kvm, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
    for cap in [
        Cap::Irqchip,
        Cap::Ioeventfd,
        Cap::Irqfd,
        Cap::UserMemory,
        Cap::SetTssAddr,
        Cap::Pit2,
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmmError::MissingCapability(cap));
        }
    }
    Ok(kvm)
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| {
                VmmError::Config(format!("guest memory region has no host mapping: {e}"))
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM: `run`
        // keeps it until every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn serial_writer(output: &SerialOutput) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match output {
        SerialOutput::Stdout => Box::new(LineWriter::new(std::io::stdout())),
        SerialOutput::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| VmmError::SerialLog {
                    path: path.clone(),
                    source,
                })?;
            Box::new(LineWriter::new(file))
        }
        SerialOutput::Capture(buffer) => Box::new(CaptureWriter(buffer.clone())),
    })
}

/// Builds and runs the VM until the guest resets it through the i8042 or something fails.
pub fn run(config: &VmConfig) -> Result<VmExit, VmmError> {
    config.validate()?;
    let kvm = open_kvm()?;
    // Built up front, so no thread starts before every filter is known to compile.
    let mut filters = std::collections::HashMap::new();
    if config.seccomp {
        for kind in ThreadKind::ALL {
            filters.insert(kind, seccomp::filter_for(kind)?);
        }
        seccomp::install_sigsys_handler()?;
    }
    let filter = |kind| -> Option<BpfProgram> { filters.get(&kind).cloned() };
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("KVM_CREATE_PIT2"))?;

    let mem_size = config
        .mem_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| VmmError::Config(format!("--mem {} MiB is too large", config.mem_mib)))?;
    let mem = memory::create_guest_memory(mem_size)?;
    register_memory(&vm, &mem)?;

    let kernel = loader::load_kernel(&mem, &config.kernel)?;
    let cmdline_len = loader::load_command_line(&mem, &config.params)?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(&mem, path, kernel.end)?),
        None => None,
    };

    // Legacy devices on the I/O bus.
    let mut io_bus = Bus::new();
    let com1_evt = EventFd::new(0).map_err(io_err("cannot create the COM1 eventfd"))?;
    vm.register_irqfd(&com1_evt, COM1_IRQ)
        .map_err(kvm_err("KVM_IRQFD (COM1)"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger(com1_evt),
        serial_writer(&config.serial)?,
    )));
    io_bus.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
    let reset_evt = EventFd::new(0).map_err(io_err("cannot create the reset eventfd"))?;
    let i8042 = I8042::new(EventFdTrigger(
        reset_evt
            .try_clone()
            .map_err(io_err("cannot clone the reset eventfd"))?,
    ));
    io_bus.insert(Arc::new(Mutex::new(i8042)), I8042_PORT, I8042_PORT_LEN)?;
    let power_off_evt = EventFd::new(0).map_err(io_err("cannot create the power-off eventfd"))?;
    let acpi_pm = AcpiPm::new(
        EventFdTrigger(
            power_off_evt
                .try_clone()
                .map_err(io_err("cannot clone the power-off eventfd"))?,
        ),
        EventFdTrigger(
            reset_evt
                .try_clone()
                .map_err(io_err("cannot clone the reset eventfd"))?,
        ),
    );
    io_bus.insert(
        Arc::new(Mutex::new(acpi_pm)),
        ACPI_PM_PORT,
        ACPI_PM_PORT_LEN,
    )?;
    // The ACPI Generic Event Device: how a Stop request presses the guest's power button.
    let ged_evt = EventFd::new(0).map_err(io_err("cannot create the GED irqfd"))?;
    vm.register_irqfd(&ged_evt, GED_IRQ)
        .map_err(kvm_err("KVM_IRQFD (GED)"))?;
    let ged = Arc::new(Mutex::new(Ged::new(EventFdTrigger(ged_evt))));
    io_bus.insert(ged.clone(), GED_PORT, GED_PORT_LEN)?;

    // virtio-mmio devices, one window and one interrupt line each.
    let mut mmio_bus = Bus::new();
    let mut windows = Vec::new();
    let mut devices: Vec<(&str, SharedVirtioDevice)> = Vec::new();
    // Disks come first, so device i < block_devices.len() is disk i (for ResizeDisk).
    let mut block_devices = Vec::new();
    for disk in &config.block {
        let block = Arc::new(Mutex::new(match &disk.serial {
            Some(serial) => Block::open(&disk.path, disk.read_only)?.with_serial(serial)?,
            None => Block::open(&disk.path, disk.read_only)?,
        }));
        block_devices.push(block.clone());
        devices.push(("blk", block));
    }
    let mut disks = BlockDevices::default();
    // pmem images go above RAM (and above 4 GiB), each in its own KVM memory slot.
    let mut pmem_maps = Vec::new();
    let ram_top = mem.last_addr().0 + 1;
    let mut pmem_addr = ram_top
        .max(memory::HIGH_RAM_START)
        .next_multiple_of(PMEM_ALIGNMENT);
    for (i, image) in config.pmem.iter().enumerate() {
        let (device, map) = Pmem::open(&image.path, image.read_only, pmem_addr)?;
        let region = kvm_userspace_memory_region {
            slot: (mem.num_regions() + i) as u32,
            guest_phys_addr: pmem_addr,
            memory_size: map.size,
            userspace_addr: map.host_addr,
            flags: if map.read_only { KVM_MEM_READONLY } else { 0 },
        };
        // SAFETY: the mapping lives in `pmem_maps` until every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (pmem)"))?;
        pmem_addr += map.size;
        pmem_maps.push(map);
        devices.push(("pmem", Arc::new(Mutex::new(device))));
    }
    if let Some(vsock) = &config.vsock {
        // The vsock device's own thread starts here, on this unconfined thread, under its
        // own filter: the vCPU that later activates the device may not start threads.
        let device = VsockMmio::new(vsock, filter(ThreadKind::Vsock))?;
        devices.push(("vsock", Arc::new(Mutex::new(device))));
    }
    for _ in 0..config.virtio_rng {
        devices.push(("rng", Arc::new(Mutex::new(Rng::new()))));
    }
    // Each device runs on its own thread; dropping a worker stops it, so an early error
    // return below leaves no thread behind.
    let mut workers = Vec::new();
    for (i, (kind, device)) in devices.into_iter().enumerate() {
        let info = MmioDeviceInfo {
            base: MMIO_HOLE_START + i as u64 * MMIO_WINDOW_SIZE,
            len: MMIO_WINDOW_SIZE,
            irq: VIRTIO_IRQ_BASE + i as u32,
        };
        let irqfd = EventFd::new(0).map_err(io_err("cannot create a virtio irqfd"))?;
        vm.register_irqfd(&irqfd, info.irq)
            .map_err(kvm_err("KVM_IRQFD (virtio)"))?;
        let transport = MmioTransport::new(device, mem.clone(), VirtioInterrupt::new(irqfd))
            .map_err(io_err("cannot create virtio queue eventfds"))?;
        let mut queue_events = Vec::new();
        for (q, evt) in transport.queue_events().iter().enumerate() {
            // A 32-bit write of the queue index to QueueNotify signals the eventfd in KVM.
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(info.base + mmio::reg::QUEUE_NOTIFY),
                q as u32,
            )
            .map_err(kvm_err("KVM_IOEVENTFD (virtio QueueNotify)"))?;
            queue_events.push(
                evt.try_clone()
                    .map_err(io_err("cannot clone a queue eventfd"))?,
            );
        }
        workers.push(
            DeviceWorker::spawn(
                format!("virtio-{kind}{i}"),
                transport.device(),
                queue_events,
                filter(ThreadKind::Device),
            )
            .map_err(io_err("cannot start a virtio device thread"))?,
        );
        let transport = Arc::new(Mutex::new(transport));
        if let Some(block) = block_devices.get(i) {
            disks.push(block.clone(), transport.clone());
        }
        mmio_bus.insert(transport, info.base, info.len)?;
        windows.push(info);
    }

    let rsdp_addr = acpi::create_acpi_tables(
        &mem,
        &AcpiConfig {
            cpus: config.cpus,
            virtio_mmio: windows,
        },
    )?;
    let params = zero_page::build_boot_params(
        &zero_page::ZeroPageConfig {
            setup_header: kernel.setup_header,
            cmdline_len,
            initrd,
            rsdp_addr,
        },
        &memory::e820_map(mem_size)?,
    )?;
    zero_page::write_zero_page(&mem, &params)?;

    // vCPUs: all get CPUID, MSRs, FPU and LAPIC; only the boot CPU gets the entry state, the
    // others wait in the in-kernel LAPIC for the guest's INIT/SIPI.
    let supported = cpuid::supported_cpuid(&kvm).map_err(|e| VmmError::VcpuSetup {
        cpu: 0,
        what: "CPUID",
        source: e.into(),
    })?;
    let mut vcpus = Vec::new();
    for cpu in 0..config.cpus {
        let setup = |what: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| VmmError::VcpuSetup {
                cpu,
                what,
                source: e,
            }
        };
        let vcpu = vm
            .create_vcpu(u64::from(cpu))
            .map_err(|e| setup("KVM_CREATE_VCPU")(e.into()))?;
        cpuid::setup_cpuid(&vcpu, &supported, cpu, config.cpus)
            .map_err(|e| setup("CPUID")(e.into()))?;
        msr::setup_msrs(&vcpu).map_err(|e| setup("MSRs")(e.into()))?;
        vcpu.set_fpu(&regs::boot_fpu())
            .map_err(|e| setup("KVM_SET_FPU")(e.into()))?;
        interrupts::setup_lapic(&vcpu).map_err(|e| setup("LAPIC")(e.into()))?;
        if cpu == 0 {
            regs::setup_boot_vcpu(&vcpu, &mem, kernel.entry)
                .map_err(|e| setup("boot registers")(e.into()))?;
        }
        vcpus.push(vcpu);
    }

    vcpu::install_kick_handler().map_err(io_err("cannot install the vCPU kick signal handler"))?;
    let buses = VcpuBuses {
        io: Arc::new(io_bus),
        mmio: Arc::new(mmio_bus),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(vcpu::PauseControl::default());
    let (events_tx, events_rx) = mpsc::channel();
    let control_events_tx = events_tx.clone();

    // Resets (i8042, ACPI reset register) and ACPI power-off arrive on eventfds; small
    // threads turn them into VM events.
    let mut waiters = Vec::new();
    for (name, evt, event) in [
        ("reset-wait", &reset_evt, Event::Reset),
        ("poweroff-wait", &power_off_evt, Event::PowerOff),
    ] {
        let evt = evt
            .try_clone()
            .map_err(io_err("cannot clone a guest exit eventfd"))?;
        waiters.push(spawn_waiter(
            name,
            evt,
            event,
            events_tx.clone(),
            stop.clone(),
            filter(ThreadKind::Helper),
        )?);
    }

    let console_stop = EventFd::new(0).map_err(io_err("cannot create the console eventfd"))?;
    let console = if config.serial_input {
        let serial = serial.clone();
        let stop = console_stop
            .try_clone()
            .map_err(io_err("cannot clone the console eventfd"))?;
        let f = filter(ThreadKind::Console);
        Some(
            std::thread::Builder::new()
                .name("serial-input".into())
                .spawn(move || {
                    if let Some(f) = &f
                        && let Err(e) = seccomp::install(ThreadKind::Console, f)
                    {
                        tracing::error!("serial input thread: {e}");
                        return;
                    }
                    forward_stdin(&serial, &stop);
                })
                .map_err(io_err("cannot start the serial input thread"))?,
        )
    } else {
        None
    };

    let mut handles = Vec::new();
    let (vcpu_tx, vcpu_rx) = mpsc::channel::<VcpuEvent>();
    for (cpu, vcpu) in vcpus.into_iter().enumerate() {
        match vcpu::spawn_vcpu(
            cpu as u8,
            vcpu,
            buses.clone(),
            stop.clone(),
            pause.clone(),
            vcpu_tx.clone(),
            filter(ThreadKind::Vcpu),
        ) {
            Ok(h) => handles.push(h),
            Err(e) => {
                stop.store(true, Ordering::Release);
                handles
                    .into_iter()
                    .for_each(vcpu::VcpuHandle::stop_and_join);
                return Err(VmmError::Io {
                    what: "cannot start a vCPU thread",
                    source: e,
                });
            }
        }
    }
    drop(vcpu_tx);
    // Forward vCPU events into the one channel the VMM waits on.
    let forwarder_filter = filter(ThreadKind::Helper);
    let forwarder = std::thread::Builder::new()
        .name("vcpu-events".into())
        .spawn(move || {
            if let Some(f) = &forwarder_filter
                && let Err(e) = seccomp::install(ThreadKind::Helper, f)
            {
                tracing::error!("vCPU event thread: {e}");
                return;
            }
            for event in vcpu_rx {
                if events_tx.send(Event::Vcpu(event)).is_err() {
                    break;
                }
            }
        })
        .map_err(io_err("cannot start the vCPU event thread"))?;
    tracing::info!(
        cpus = config.cpus,
        mem_mib = config.mem_mib,
        entry = kernel.entry,
        "VM started"
    );

    // The control socket forwards its requests into the same event channel.
    let control = match &config.control_socket {
        Some(path) => {
            let (control_tx, control_rx) = mpsc::channel::<ControlRequest>();
            let events = control_events_tx;
            let forward_filter = filter(ThreadKind::Helper);
            let forward = std::thread::Builder::new()
                .name("control-events".into())
                .spawn(move || {
                    if let Some(f) = &forward_filter
                        && let Err(e) = seccomp::install(ThreadKind::Helper, f)
                    {
                        tracing::error!("control event thread: {e}");
                        return;
                    }
                    for request in control_rx {
                        if events.send(Event::Control(request)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(io_err("cannot start the control event thread"))?;
            let server = ControlServer::start(path, control_tx, filter(ThreadKind::Control))?;
            Some((server, forward))
        }
        None => {
            drop(control_events_tx);
            None
        }
    };

    let status = |state| CrosvmReply::Status {
        state,
        pid: std::process::id(),
        vcpus: u32::from(config.cpus),
        memory_mib: u32::try_from(config.mem_mib).unwrap_or(u32::MAX),
    };
    // Set by the first Stop request: when the power button was pressed, and when the guest's
    // time to power off runs out.
    let mut stopping: Option<(Instant, Instant)> = None;
    let outcome = loop {
        let event = match stopping {
            None => events_rx
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some((_, deadline)) => {
                events_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        let event = match event {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    timeout_ms = config.stop_timeout.as_millis() as u64,
                    "the guest did not power off within the stop timeout after the power \
                     button; forcing the VM off"
                );
                break Ok(VmExit::StopForced);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(mpsc::RecvError),
            Ok(event) => Ok(event),
        };
        if let (Some((pressed, _)), Ok(Event::Reset | Event::PowerOff)) = (stopping, &event) {
            tracing::info!(
                after_ms = pressed.elapsed().as_millis() as u64,
                "the guest shut down in answer to the power button"
            );
        }
        match event {
            Ok(Event::Reset) => break Ok(VmExit::GuestReset),
            Ok(Event::PowerOff) => break Ok(VmExit::GuestPowerOff),
            Ok(Event::Vcpu(VcpuEvent::TripleFault { cpu, rip })) => {
                break Err(VmmError::TripleFault {
                    cpu,
                    rip: rip.map_or_else(|| "unknown".into(), |r| format!("{r:#x}")),
                });
            }
            Ok(Event::Vcpu(VcpuEvent::Fatal { cpu, reason })) => {
                break Err(VmmError::VcpuFatal { cpu, reason });
            }
            Ok(Event::Control(ControlRequest { request, reply })) => {
                let answer = match request {
                    CrosvmRequest::Status {} => {
                        let state = if pause.is_paused() {
                            VmRunState::Paused
                        } else {
                            VmRunState::Running
                        };
                        Ok(status(state))
                    }
                    CrosvmRequest::Pause {} => {
                        pause.request_pause();
                        // Kick until every running vCPU has parked (a kick that lands just
                        // before KVM_RUN is lost, so it is repeated).
                        while pause.parked() < handles.iter().filter(|h| !h.is_finished()).count() {
                            handles.iter().for_each(vcpu::VcpuHandle::kick);
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        Ok(CrosvmReply::Ack {})
                    }
                    CrosvmRequest::Resume {} => {
                        pause.resume();
                        Ok(CrosvmReply::Ack {})
                    }
                    CrosvmRequest::Stop {} => {
                        // Answered at once: `crosvm stop` waits for the process to exit, and
                        // the control socket stays up for status requests meanwhile.
                        let _ = reply.send(Ok(CrosvmReply::Ack {}));
                        if stopping.is_some() {
                            continue;
                        }
                        if config.stop_timeout.is_zero() {
                            tracing::info!(
                                "stop requested with no stop timeout: forcing the VM off"
                            );
                            break Ok(VmExit::StopForced);
                        }
                        // A paused guest could not answer the power button.
                        pause.resume();
                        let pressed = Instant::now();
                        match press_power_button(&ged) {
                            Ok(()) => tracing::info!(
                                timeout_ms = config.stop_timeout.as_millis() as u64,
                                "stop requested: pressed the ACPI power button, waiting for \
                                 the guest to power off"
                            ),
                            Err(e) => {
                                tracing::error!("{e}; forcing the VM off");
                                break Ok(VmExit::StopForced);
                            }
                        }
                        stopping = Some((pressed, pressed + config.stop_timeout));
                        continue;
                    }
                    CrosvmRequest::ResizeDisk { index, size } => {
                        disks.resize(index, size).map(|()| CrosvmReply::Ack {})
                    }
                };
                let _ = reply.send(answer);
            }
            Err(_) => {
                break Err(VmmError::VcpuFatal {
                    cpu: 0,
                    reason: "every vCPU thread ended without a reason".into(),
                });
            }
        }
    };

    // Parked vCPUs must wake to see the stop.
    pause.resume();
    stop.store(true, Ordering::Release);
    for handle in handles {
        handle.stop_and_join();
    }
    // Wake the reset thread if the guest never reset.
    if let Some(console) = console {
        let _ = console_stop.write(1);
        let _ = console.join();
    }
    // Wake the waiters whose event never came.
    let _ = reset_evt.write(1);
    let _ = power_off_evt.write(1);
    for waiter in waiters {
        let _ = waiter.join();
    }
    let _ = forwarder.join();
    if let Some((server, forward)) = control {
        drop(server);
        let _ = forward.join();
    }
    workers.into_iter().for_each(DeviceWorker::stop);
    serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
    drop(mem);
    drop(pmem_maps);
    outcome
}

/// Signals the power button through the GED (its interrupt wakes the guest).
fn press_power_button(ged: &Mutex<Ged>) -> Result<(), crate::devices::legacy::ged::GedError> {
    ged.lock()
        .unwrap_or_else(|p| p.into_inner())
        .notify(GedEvent::PowerButton)
}

/// Starts a thread that sends `event` once `evt` is signalled (unless the VM is stopping).
fn spawn_waiter(
    name: &str,
    evt: EventFd,
    event: Event,
    events: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
    filter: Option<BpfProgram>,
) -> Result<std::thread::JoinHandle<()>, VmmError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(f) = &filter
                && let Err(e) = seccomp::install(ThreadKind::Helper, f)
            {
                tracing::error!("guest exit thread: {e}");
                return;
            }
            if evt.read().is_ok() && !stop.load(Ordering::Acquire) {
                let _ = events.send(event);
            }
        })
        .map_err(io_err("cannot start a guest exit thread"))
}

enum Event {
    Reset,
    PowerOff,
    Vcpu(VcpuEvent),
    Control(ControlRequest),
}
