//! The vsock device thread for our own VMM: one thread, one epoll set on the queue kick
//! eventfds, the muxer's host-socket epoll fd and an exit eventfd. It never blocks anywhere but
//! in `epoll_wait`.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use seccompiler::BpfProgram;
use tracing::error;
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::{DeviceEvent, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE, VsockDevice};
use super::error::VsockError;
use crate::seccomp::{self, ThreadKind};

/// How the device tells the guest a queue has used buffers (an irqfd, an MMIO interrupt
/// status update, or a test's eventfd).
pub trait GuestInterrupt: Send {
    fn signal_used_queue(&self, queue_index: usize) -> io::Result<()>;
}

/// The three queues, activated by the transport.
pub struct VsockQueues {
    pub rx: Queue,
    pub tx: Queue,
    pub event: Queue,
}

const TOKEN_HOST: u64 = NUM_QUEUES as u64;
const TOKEN_EXIT: u64 = NUM_QUEUES as u64 + 1;

/// A running device thread; dropping it stops the thread.
pub struct DeviceThread {
    exit: EventFd,
    handle: Option<JoinHandle<Result<(), VsockError>>>,
}

impl DeviceThread {
    /// Starts the device thread. `kicks[i]` is the queue-notify eventfd of queue `i`
    /// (rx, tx, event). With `seccomp`, the thread confines itself with that filter (built
    /// for [`ThreadKind::Vsock`]) before it touches the guest's queues.
    pub fn spawn<M>(
        mut device: VsockDevice,
        mem: M,
        mut queues: VsockQueues,
        kicks: [EventFd; NUM_QUEUES],
        interrupt: Box<dyn GuestInterrupt>,
        seccomp: Option<BpfProgram>,
    ) -> Result<Self, VsockError>
    where
        M: GuestAddressSpace + Send + 'static,
    {
        // `exit` outlives the thread: `stop` (or drop) joins before it is closed.
        let exit = EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd)?;
        let epoll = epoll_set(&device, &kicks, &exit)?;

        let handle = std::thread::Builder::new()
            .name(format!("vsock-cid{}", device.guest_cid()))
            .spawn(move || {
                if let Some(filter) = &seccomp {
                    seccomp::install(ThreadKind::Vsock, filter)?;
                }
                let result = run_loop(&mut device, &mem, &mut queues, &kicks, &epoll, &*interrupt);
                if let Err(e) = &result {
                    error!("vsock device thread stopped: {e}");
                }
                result
            })
            .map_err(VsockError::SpawnThread)?;
        Ok(DeviceThread {
            exit,
            handle: Some(handle),
        })
    }

    /// Stops the thread and returns how it ended.
    pub fn stop(mut self) -> Result<(), VsockError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), VsockError> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        self.exit.write(1).map_err(VsockError::EventFd)?;
        handle.join().unwrap_or_else(|_| {
            Err(VsockError::SpawnThread(io::Error::other(
                "vsock device thread panicked",
            )))
        })
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// The epoll set of a device thread: the queue kicks, the host sockets and the exit event.
fn epoll_set(
    device: &VsockDevice,
    kicks: &[EventFd; NUM_QUEUES],
    exit: &EventFd,
) -> Result<Epoll, VsockError> {
    let epoll = Epoll::new().map_err(VsockError::Epoll)?;
    let add = |fd, token| {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(VsockError::Epoll)
    };
    for (i, kick) in kicks.iter().enumerate() {
        add(kick.as_raw_fd(), i as u64)?;
    }
    add(device.host_events_fd(), TOKEN_HOST)?;
    add(exit.as_raw_fd(), TOKEN_EXIT)?;
    Ok(epoll)
}

/// Runs the device on the calling thread until `exit` is signalled or the device fails: for
/// a thread that outlives one activation (our virtio-mmio adapter's).
pub fn serve<M: GuestAddressSpace>(
    device: &mut VsockDevice,
    mem: &M,
    queues: &mut VsockQueues,
    kicks: &[EventFd; NUM_QUEUES],
    exit: &EventFd,
    interrupt: &dyn GuestInterrupt,
) -> Result<(), VsockError> {
    let epoll = epoll_set(device, kicks, exit)?;
    run_loop(device, mem, queues, kicks, &epoll, interrupt)
}

fn run_loop<M: GuestAddressSpace>(
    device: &mut VsockDevice,
    mem: &M,
    queues: &mut VsockQueues,
    kicks: &[EventFd; NUM_QUEUES],
    epoll: &Epoll,
    interrupt: &dyn GuestInterrupt,
) -> Result<(), VsockError> {
    let mut events = [EpollEvent::default(); 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VsockError::Epoll(e)),
        };
        for ev in &events[..n] {
            let event = match ev.data() {
                TOKEN_EXIT => return Ok(()),
                TOKEN_HOST => DeviceEvent::HostSockets,
                q => {
                    // Drain the kick; a failed read only means no new kick.
                    let _ = kicks[q as usize].read();
                    match q as usize {
                        RX_QUEUE => DeviceEvent::RxKick,
                        TX_QUEUE => DeviceEvent::TxKick,
                        EVENT_QUEUE => DeviceEvent::EventKick,
                        _ => continue,
                    }
                }
            };
            let guard = mem.memory();
            let used = device.handle_event(event, &*guard, &mut queues.rx, &mut queues.tx)?;
            if used.tx {
                interrupt
                    .signal_used_queue(TX_QUEUE)
                    .map_err(VsockError::Interrupt)?;
            }
            if used.rx {
                interrupt
                    .signal_used_queue(RX_QUEUE)
                    .map_err(VsockError::Interrupt)?;
            }
        }
    }
}
