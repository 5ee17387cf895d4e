//! Builds a VM from a [`VmConfig`], as Firecracker's builder does: the KVM VM (in-kernel
//! irqchip and PIT) and guest memory ([`VmBuilder::new`]), the legacy devices on the I/O bus,
//! one `attach_*` per virtio device kind (each device in its own virtio-mmio window, with
//! its interrupt line, its QueueNotify ioeventfds and its device thread), then the boot state
//! — kernel, command line, initrd, ACPI tables describing the attached devices, zero page —
//! and the vCPUs ([`VmBuilder::build`]). The result is a [`Vm`], ready to run. A step that
//! fails drops what the earlier steps made (device threads stop when dropped).

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig, MmioDeviceInfo};
use crate::arch::x86_64::{cpuid, interrupts, msr, regs, zero_page};
use crate::config::{BlockConfig, CaptureWriter, SerialOutput, VIRTIO_IRQ_BASE, VmConfig};
use crate::devices::bus::Bus;
use crate::devices::legacy::EventFdTrigger;
use crate::devices::legacy::acpi_pm::{ACPI_PM_PORT, ACPI_PM_PORT_LEN, AcpiPm};
use crate::devices::legacy::ged::{GED_IRQ, GED_PORT, GED_PORT_LEN, Ged};
use crate::devices::legacy::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::legacy::serial::{COM1_IRQ, COM1_PORT, COM1_PORT_LEN, SerialDevice};
use crate::devices::net::NetConfig;
use crate::devices::virtio::VirtioInterrupt;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::{self, MMIO_WINDOW_SIZE, MmioTransport};
use crate::devices::virtio::net_mmio::NetMmio;
use crate::devices::virtio::pmem::{PMEM_ALIGNMENT, Pmem};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock_mmio::VsockMmio;
use crate::devices::virtio::worker::{DeviceWorker, SharedVirtioDevice};
use crate::devices::vsock::VsockConfig;
use crate::error::{VmmError, io_err, kvm_err};
use crate::event_channel::event_channel;
use crate::loader;
use crate::memory::{self, MMIO_HOLE_START};
use crate::seccomp::{Filters, ThreadKind};
use crate::signals::StopSignals;
use crate::thread::ThreadSpec;
use crate::vcpu::VcpuBuses;
use crate::vm::{LegacyDevices, VirtioDevices, Vm};

/// KVM's TSS must sit in guest physical space outside RAM and MMIO; Firecracker's address.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Builds the VM `config` describes, with every device it names.
pub fn build_vm(config: &VmConfig) -> Result<Vm, VmmError> {
    let mut builder = VmBuilder::new(config)?;
    // Disks come first, so device i < block.len() is disk i (for ResizeDisk).
    for disk in &config.block {
        builder.attach_block(disk)?;
    }
    for image in &config.pmem {
        builder.attach_pmem(image)?;
    }
    if let Some(vsock) = &config.vsock {
        builder.attach_vsock(vsock)?;
    }
    for net in &config.net {
        builder.attach_net(net)?;
    }
    for _ in 0..config.virtio_rng {
        builder.attach_rng()?;
    }
    builder.build()
}

/// A VM being built: KVM, memory and legacy devices are in place; virtio devices are attached
/// one by one; [`VmBuilder::build`] adds the boot state and the vCPUs.
pub struct VmBuilder<'a> {
    config: &'a VmConfig,
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
    filters: Filters,
    signals: StopSignals,
    io_bus: Bus,
    mmio_bus: Bus,
    legacy: LegacyDevices,
    virtio: VirtioDevices,
    /// Where the next pmem image goes: above RAM and 4 GiB, 2 MiB aligned.
    next_pmem_addr: u64,
}

impl<'a> VmBuilder<'a> {
    /// Checks `config`, builds every seccomp filter (so no thread starts before each is
    /// known to compile), blocks the stop signals, creates the KVM VM and its memory, and
    /// puts the legacy devices on the I/O bus.
    pub fn new(config: &'a VmConfig) -> Result<Self, VmmError> {
        config.validate()?;
        let kvm = open_kvm()?;
        let filters = Filters::build(config.seccomp)?;
        let signals = StopSignals::block().map_err(|e| VmmError::Io {
            what: "cannot block SIGTERM and SIGINT for the event loop",
            source: e.into(),
        })?;
        let vm = create_vm(&kvm)?;
        let mem_size = config.mem_mib.checked_mul(1 << 20).ok_or_else(|| {
            VmmError::Config(format!("--mem {} MiB is too large", config.mem_mib))
        })?;
        let mem = memory::create_guest_memory(mem_size)?;
        register_memory(&vm, &mem)?;
        let mut io_bus = Bus::new();
        let legacy = attach_legacy_devices(&vm, &mut io_bus, &config.serial)?;
        let (failures_tx, failures) =
            event_channel().map_err(io_err("cannot create the device-error channel"))?;
        let next_pmem_addr = (mem.last_addr().0 + 1)
            .max(memory::HIGH_RAM_START)
            .next_multiple_of(PMEM_ALIGNMENT);
        Ok(Self {
            config,
            kvm,
            vm,
            mem,
            filters,
            signals,
            io_bus,
            mmio_bus: Bus::new(),
            legacy,
            virtio: VirtioDevices::new(failures_tx, failures),
            next_pmem_addr,
        })
    }

    /// A virtio-blk disk.
    pub fn attach_block(&mut self, disk: &BlockConfig) -> Result<(), VmmError> {
        let mut block = Block::open(&disk.path, disk.read_only)?;
        if let Some(serial) = &disk.serial {
            block = block.with_serial(serial)?;
        }
        let block = Arc::new(Mutex::new(block));
        let transport = self.attach_virtio("blk", ThreadKind::Device, block.clone())?;
        self.virtio.disks.push(block, transport);
        Ok(())
    }

    /// A virtio-pmem image, mapped above RAM in its own KVM memory slot.
    pub fn attach_pmem(&mut self, image: &BlockConfig) -> Result<(), VmmError> {
        let addr = self.next_pmem_addr;
        let (device, map) = Pmem::open(&image.path, image.read_only, addr)?;
        let region = kvm_userspace_memory_region {
            slot: (self.mem.num_regions() + self.virtio.pmem_maps.len()) as u32,
            guest_phys_addr: addr,
            memory_size: map.size,
            userspace_addr: map.host_addr,
            flags: if map.read_only { KVM_MEM_READONLY } else { 0 },
        };
        // SAFETY: the mapping lives in the VM's device list until every vCPU thread has been
        // joined.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (pmem)"))?;
        self.next_pmem_addr += map.size;
        self.virtio.pmem_maps.push(map);
        self.attach_virtio("pmem", ThreadKind::Device, Arc::new(Mutex::new(device)))?;
        Ok(())
    }

    /// The hybrid vsock device; its host socket is bound here, on the building thread,
    /// since its device thread's filter allows no bind().
    pub fn attach_vsock(&mut self, vsock: &VsockConfig) -> Result<(), VmmError> {
        let device = Arc::new(Mutex::new(VsockMmio::new(vsock)?));
        self.attach_virtio("vsock", ThreadKind::Vsock, device)?;
        Ok(())
    }

    /// A virtio-net device on the tap `net.tap`, opened here, on the building thread, since
    /// its device thread's filter allows no open().
    pub fn attach_net(&mut self, net: &NetConfig) -> Result<(), VmmError> {
        let device = Arc::new(Mutex::new(NetMmio::new(net)?));
        self.attach_virtio("net", ThreadKind::Net, device)?;
        Ok(())
    }

    /// A virtio-rng device.
    pub fn attach_rng(&mut self) -> Result<(), VmmError> {
        self.attach_virtio("rng", ThreadKind::Device, Arc::new(Mutex::new(Rng::new())))?;
        Ok(())
    }

    /// Puts `device` in the next virtio-mmio window: an interrupt line (irqfd), an
    /// ioeventfd per queue, and its device thread of `kind`.
    fn attach_virtio(
        &mut self,
        name: &str,
        kind: ThreadKind,
        device: SharedVirtioDevice,
    ) -> Result<Arc<Mutex<MmioTransport>>, VmmError> {
        let index = self.virtio.windows.len();
        let info = MmioDeviceInfo {
            base: MMIO_HOLE_START + index as u64 * MMIO_WINDOW_SIZE,
            len: MMIO_WINDOW_SIZE,
            irq: VIRTIO_IRQ_BASE + index as u32,
        };
        let irqfd = EventFd::new(0).map_err(io_err("cannot create a virtio irqfd"))?;
        self.vm
            .register_irqfd(&irqfd, info.irq)
            .map_err(kvm_err("KVM_IRQFD (virtio)"))?;
        let transport = MmioTransport::new(device, self.mem.clone(), VirtioInterrupt::new(irqfd))
            .map_err(io_err("cannot create virtio queue eventfds"))?;
        let mut queue_events = Vec::new();
        for (q, evt) in transport.queue_events().iter().enumerate() {
            // A 32-bit write of the queue index to QueueNotify signals the eventfd in KVM.
            self.vm
                .register_ioevent(
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
        let spec = ThreadSpec::new(format!("virtio-{name}{index}"), kind, &self.filters);
        let worker = DeviceWorker::spawn(
            spec,
            transport.device(),
            queue_events,
            self.virtio.failure_sender(),
            index,
        )
        .map_err(io_err("cannot start a virtio device thread"))?;
        let transport = Arc::new(Mutex::new(transport));
        self.mmio_bus
            .insert(transport.clone(), info.base, info.len)?;
        self.virtio.push(info, transport.clone(), worker);
        Ok(transport)
    }

    /// Loads the kernel, command line and initrd, writes the ACPI tables (which describe the
    /// attached devices) and the zero page, creates the vCPUs: the VM is ready to run.
    pub fn build(self) -> Result<Vm, VmmError> {
        let config = self.config;
        let kernel = loader::load_kernel(&self.mem, &config.kernel)?;
        let cmdline_len = loader::load_command_line(&self.mem, &config.params)?;
        let initrd = match &config.initrd {
            Some(path) => Some(loader::load_initrd(&self.mem, path, kernel.end)?),
            None => None,
        };
        let rsdp_addr = acpi::create_acpi_tables(
            &self.mem,
            &AcpiConfig {
                cpus: config.cpus,
                virtio_mmio: self.virtio.windows.clone(),
            },
        )?;
        let params = zero_page::build_boot_params(
            &zero_page::ZeroPageConfig {
                setup_header: kernel.setup_header,
                cmdline_len,
                initrd,
                rsdp_addr,
            },
            &memory::e820_map(config.mem_mib << 20)?,
        )?;
        zero_page::write_zero_page(&self.mem, &params)?;
        let vcpus = create_vcpus(&self.kvm, &self.vm, &self.mem, config.cpus, kernel.entry)?;
        tracing::debug!(entry = kernel.entry, "VM built");
        Ok(Vm {
            config: config.clone(),
            vcpus,
            buses: VcpuBuses {
                io: Arc::new(self.io_bus),
                mmio: Arc::new(self.mmio_bus),
            },
            legacy: self.legacy,
            virtio: self.virtio,
            filters: self.filters,
            signals: self.signals,
            confine_event_loop: false,
            _mem: self.mem,
            _vm: self.vm,
        })
    }
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

/// The KVM VM with its TSS, in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
fn create_vm(kvm: &Kvm) -> Result<VmFd, VmmError> {
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
    Ok(vm)
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
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM: the
        // `Vm` keeps it until every vCPU thread has been joined.
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

/// An eventfd and a second handle on it, for a device that signals what the VMM waits on.
fn eventfd_pair(what: &'static str) -> Result<(EventFd, EventFdTrigger), VmmError> {
    let evt = EventFd::new(0).map_err(io_err(what))?;
    let trigger = EventFdTrigger(evt.try_clone().map_err(io_err(what))?);
    Ok((evt, trigger))
}

/// COM1, the i8042 (its reset line), the ACPI PM registers (S5 and the reset register) and
/// the ACPI GED (the power button), on the I/O bus.
fn attach_legacy_devices(
    vm: &VmFd,
    io_bus: &mut Bus,
    serial_output: &SerialOutput,
) -> Result<LegacyDevices, VmmError> {
    let (com1_evt, com1_irq) = eventfd_pair("cannot create the COM1 eventfd")?;
    vm.register_irqfd(&com1_evt, COM1_IRQ)
        .map_err(kvm_err("KVM_IRQFD (COM1)"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        com1_irq,
        serial_writer(serial_output)?,
    )));
    io_bus.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
    let (reset_evt, reset) = eventfd_pair("cannot create the reset eventfd")?;
    let i8042 = I8042::new(
        reset
            .try_clone()
            .map_err(io_err("cannot clone the reset eventfd"))?,
    );
    io_bus.insert(Arc::new(Mutex::new(i8042)), I8042_PORT, I8042_PORT_LEN)?;
    let (power_off_evt, power_off) = eventfd_pair("cannot create the power-off eventfd")?;
    let acpi_pm = AcpiPm::new(power_off, reset);
    io_bus.insert(
        Arc::new(Mutex::new(acpi_pm)),
        ACPI_PM_PORT,
        ACPI_PM_PORT_LEN,
    )?;
    let (ged_evt, ged_irq) = eventfd_pair("cannot create the GED irqfd")?;
    vm.register_irqfd(&ged_evt, GED_IRQ)
        .map_err(kvm_err("KVM_IRQFD (GED)"))?;
    let ged = Arc::new(Mutex::new(Ged::new(ged_irq)));
    io_bus.insert(ged.clone(), GED_PORT, GED_PORT_LEN)?;
    Ok(LegacyDevices {
        serial,
        ged,
        reset_evt,
        power_off_evt,
    })
}

/// The vCPUs: all get CPUID, MSRs, FPU and LAPIC; only the boot CPU gets the entry state, the
/// others wait in the in-kernel LAPIC for the guest's INIT/SIPI.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    cpus: u8,
    entry: u64,
) -> Result<Vec<VcpuFd>, VmmError> {
    let supported = cpuid::supported_cpuid(kvm).map_err(|e| VmmError::VcpuSetup {
        cpu: 0,
        what: "CPUID",
        source: e.into(),
    })?;
    let mut vcpus = Vec::new();
    for cpu in 0..cpus {
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
        cpuid::setup_cpuid(&vcpu, &supported, cpu, cpus).map_err(|e| setup("CPUID")(e.into()))?;
        msr::setup_msrs(&vcpu).map_err(|e| setup("MSRs")(e.into()))?;
        vcpu.set_fpu(&regs::boot_fpu())
            .map_err(|e| setup("KVM_SET_FPU")(e.into()))?;
        interrupts::setup_lapic(&vcpu).map_err(|e| setup("LAPIC")(e.into()))?;
        if cpu == 0 {
            regs::setup_boot_vcpu(&vcpu, mem, entry)
                .map_err(|e| setup("boot registers")(e.into()))?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}
