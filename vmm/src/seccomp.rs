//! Seccomp filters for the VMM's threads, one per thread kind, as Firecracker installs them:
//! each thread runs its guest-facing work with only the system calls that work needs. A
//! denied call raises SIGSYS, whose handler writes one line naming the call to stderr and ends
//! the process (exit status [`SECCOMP_EXIT_CODE`]); `crosvm run --no-seccomp` turns the filters
//! off for debugging.

use std::collections::{BTreeMap, HashMap};

pub use seccompiler::BpfProgram;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};

/// Exit status of a VMM killed for a denied system call.
pub const SECCOMP_EXIT_CODE: i32 = 159;

/// KVM_RUN and KVM_GET_REGS (the vCPU loop reads RIP for its error reports).
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// The kinds of VMM threads, each with its own allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Runs KVM_RUN and dispatches exits to devices on the buses.
    Vcpu,
    /// A virtio device's event loop: eventfds, epoll, the backing file.
    Device,
    /// Small helper threads that only wait on eventfds and channels.
    Helper,
    /// The thread that runs the VM's event loop (`crosvm run`'s main thread), once the VM's
    /// threads have started: epoll, eventfds, the signalfd, kicking and joining threads, and
    /// on the way out removing the control and vsock socket files.
    EventLoop,
    /// The control socket's thread: accepts clients and talks to them.
    Control,
    /// Forwards the VMM's stdin to the guest's serial port.
    Console,
    /// The virtio-vsock device thread: its queues and the host side's Unix sockets (accepting
    /// host clients, connecting to `UDS_<port>` for the guest). Sockets of the AF_UNIX
    /// family only; the host socket was bound before the thread started and outlives device
    /// resets, so the thread neither binds nor removes files.
    Vsock,
    /// The virtio-net device thread: its queues and the tap (read, write, and TUNSETOFFLOAD
    /// when the driver's features change the offloads). The tap was opened before the thread
    /// started and outlives device resets, so the thread opens nothing.
    Net,
    /// Every thread of a vhost-user backend process (`crosvm vhost-user-vsock|blk|net`) once it
    /// serves its frontend: the vhost-user protocol (messages carrying descriptors, guest
    /// memory mappings), the device's event loop and the device's own work (the disk image's
    /// I/O, vsock's host sockets).
    VhostUser,
    /// Every thread of a VM's 9P file server (`crosd-9s`, seneschal's), once it has confined
    /// itself: accepting the VM's connections and serving files inside its own mount
    /// namespace, so it opens, creates, renames and removes files (never sockets of its own,
    /// mounts or processes; threads only).
    FileServer,
}

impl ThreadKind {
    /// Every kind, for building all filters up front.
    pub const ALL: [ThreadKind; 10] = [
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Helper,
        ThreadKind::EventLoop,
        ThreadKind::Control,
        ThreadKind::Console,
        ThreadKind::Vsock,
        ThreadKind::Net,
        ThreadKind::VhostUser,
        ThreadKind::FileServer,
    ];
}

/// Every thread kind's filter, built once before any thread starts so that a filter that does
/// not compile stops the VM before it runs; empty with seccomp off (`--no-seccomp`).
#[derive(Clone, Default)]
pub struct Filters(HashMap<ThreadKind, BpfProgram>);

impl Filters {
    /// Builds every filter and installs the SIGSYS handler, or nothing when `!enabled`.
    pub fn build(enabled: bool) -> Result<Self, SeccompError> {
        if !enabled {
            return Ok(Self::default());
        }
        let filters = ThreadKind::ALL
            .into_iter()
            .map(|kind| Ok((kind, filter_for(kind)?)))
            .collect::<Result<_, SeccompError>>()?;
        install_sigsys_handler()?;
        Ok(Self(filters))
    }

    /// The filter of `kind`, or `None` with seccomp off.
    pub fn get(&self, kind: ThreadKind) -> Option<BpfProgram> {
        self.0.get(&kind).cloned()
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0:?} seccomp filter")]
    Build(ThreadKind, #[source] seccompiler::Error),
    #[error("cannot install the {0:?} seccomp filter")]
    Install(ThreadKind, #[source] seccompiler::Error),
    #[error("cannot install the {0:?} seccomp filter on every thread of the process")]
    InstallAllThreads(ThreadKind, #[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// What every thread needs: memory (the allocator), locks, its exit path, signals, time,
/// writing logs and guest output.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
];

/// A device thread also waits on epoll and does the backing file's I/O.
const DEVICE: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
];

/// The control thread also accepts and serves socket clients.
const CONTROL: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
];

/// The event loop waits on epoll, kicks vCPUs out of KVM_RUN (tgkill), reads a disk image's
/// size for ResizeDisk and, once the VM has ended, removes its socket files.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_tgkill,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_unlink,
];

/// The vsock thread waits on epoll (queue kicks, host sockets, its connect-timeout timerfd)
/// and serves Unix sockets on the host side (`socket` itself is allowed for AF_UNIX only).
const VSOCK: &[i64] = &[
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_timerfd_settime,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_readv,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// TUNSETOFFLOAD (`_IOW('T', 208, unsigned int)`): the one ioctl the net device makes once it
/// runs.
const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;

/// A vhost-user backend also creates its event loops' descriptors, checks the memory files
/// the frontend sends, and removes its socket files once the frontend has gone.
const VHOST_USER: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_lstat,
    libc::SYS_unlink,
];

/// A file server walks, opens and changes files by descriptor (the `p9` crate's calls), starts a
/// thread per connection and serves Unix sockets.
const FILE_SERVER: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_readlinkat,
    libc::SYS_fchmodat,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_clone,
    libc::SYS_clone3,
    // std's thread start installs its stack-overflow handler.
    libc::SYS_rt_sigaction,
];

/// glibc's malloc opens /proc/sys/vm/overcommit_memory the first time it shrinks a thread's
/// heap, which any thread may do after freeing enough memory. Under every filter that openat
/// fails with EACCES (glibc then keeps its default) instead of killing the VMM; any other
/// open is refused the same way. These instructions run before seccompiler's program.
fn refuse_openat() -> [sock_filter; 5] {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const ARCH_OFFSET: u32 = 4; // seccomp_data.arch
    const NR_OFFSET: u32 = 0; // seccomp_data.nr
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    [
        op(LD_W_ABS, 0, 0, ARCH_OFFSET),
        // Another architecture: straight to seccompiler's program, which refuses it.
        op(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        op(LD_W_ABS, 0, 0, NR_OFFSET),
        op(JEQ_K, 0, 1, libc::SYS_openat as u32),
        op(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EACCES as u32),
    ]
}

/// The BPF program for `kind`.
pub fn filter_for(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build =
        |e: seccompiler::BackendError| SeccompError::Build(kind, seccompiler::Error::Backend(e));
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|&nr| (nr, Vec::new())).collect();
    // Rust's standard library checks that a descriptor is still open (F_GETFD) when it
    // closes one in debug builds; nothing else may use fcntl.
    let arg_is = |arg: u8, value: u64| -> Result<SeccompRule, SeccompError> {
        SeccompRule::new(vec![
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                .map_err(build)?,
        ])
        .map_err(build)
    };
    rules.insert(libc::SYS_fcntl, vec![arg_is(1, libc::F_GETFD as u64)?]);
    match kind {
        ThreadKind::Vcpu => {
            let ioctl = [KVM_RUN, KVM_GET_REGS]
                .into_iter()
                .map(|request| {
                    SeccompRule::new(vec![
                        SeccompCondition::new(
                            1,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            request,
                        )
                        .map_err(build)?,
                    ])
                    .map_err(build)
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.insert(libc::SYS_ioctl, ioctl);
        }
        ThreadKind::Device => {
            rules.extend(DEVICE.iter().map(|&nr| (nr, Vec::new())));
        }
        ThreadKind::Helper => {}
        ThreadKind::EventLoop => {
            rules.extend(EVENT_LOOP.iter().map(|&nr| (nr, Vec::new())));
        }
        ThreadKind::Control => {
            rules.extend(CONTROL.iter().map(|&nr| (nr, Vec::new())));
        }
        ThreadKind::Console => {
            rules.extend([libc::SYS_poll, libc::SYS_ppoll].map(|nr| (nr, Vec::new())));
        }
        ThreadKind::Vsock => {
            rules.extend(VSOCK.iter().map(|&nr| (nr, Vec::new())));
            rules.insert(libc::SYS_socket, vec![arg_is(0, libc::AF_UNIX as u64)?]);
            // Sockets are made non-blocking with FIONBIO (std's set_nonblocking).
            rules.insert(libc::SYS_ioctl, vec![arg_is(1, libc::FIONBIO)?]);
        }
        ThreadKind::Net => {
            rules.extend(DEVICE.iter().map(|&nr| (nr, Vec::new())));
            rules.insert(libc::SYS_ioctl, vec![arg_is(1, TUNSETOFFLOAD)?]);
        }
        ThreadKind::VhostUser => {
            let allowed = DEVICE.iter().chain(VSOCK).chain(VHOST_USER);
            rules.extend(allowed.map(|&nr| (nr, Vec::new())));
            rules.insert(libc::SYS_socket, vec![arg_is(0, libc::AF_UNIX as u64)?]);
            rules.insert(
                libc::SYS_ioctl,
                vec![arg_is(1, libc::FIONBIO)?, arg_is(1, TUNSETOFFLOAD)?],
            );
            // The vhost-user crates duplicate descriptors the frontend sent.
            rules.insert(
                libc::SYS_fcntl,
                vec![
                    arg_is(1, libc::F_GETFD as u64)?,
                    arg_is(1, libc::F_DUPFD_CLOEXEC as u64)?,
                ],
            );
            // A thread the daemon started just before the filter may still be naming itself.
            rules.insert(libc::SYS_prctl, vec![arg_is(0, libc::PR_SET_NAME as u64)?]);
        }
        ThreadKind::FileServer => {
            rules.extend(FILE_SERVER.iter().map(|&nr| (nr, Vec::new())));
            // Cloning a connection's socket (std's try_clone) and a directory for readdir
            // duplicate descriptors; glibc's fdopendir checks the access mode (F_GETFL) and
            // sets close-on-exec (F_SETFD).
            rules.insert(
                libc::SYS_fcntl,
                vec![
                    arg_is(1, libc::F_GETFD as u64)?,
                    arg_is(1, libc::F_SETFD as u64)?,
                    arg_is(1, libc::F_GETFL as u64)?,
                    arg_is(1, libc::F_DUPFD_CLOEXEC as u64)?,
                ],
            );
            rules.insert(libc::SYS_prctl, vec![arg_is(0, libc::PR_SET_NAME as u64)?]);
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    let program: BpfProgram = filter.try_into().map_err(build)?;
    if kind == ThreadKind::FileServer {
        // A file server's work is opening files.
        return Ok(program);
    }
    Ok(refuse_openat().into_iter().chain(program).collect())
}

/// Installs `filter` (built for `kind`) on the calling thread, for the rest of its life.
pub fn install(kind: ThreadKind, filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(|e| SeccompError::Install(kind, e))
}

/// Installs `filter` (built for `kind`) on every thread of the process at once (TSYNC): for
/// a vhost-user backend, whose threads the vhost-user crates start.
pub fn install_all_threads(kind: ThreadKind, filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter_all_threads(filter)
        .map_err(|e| SeccompError::InstallAllThreads(kind, e))
}

/// Writes `n` in decimal into `buf`, returning the digits (no allocation: signal-safe).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo_t for SIGSYS: si_signo, si_errno, si_code, padding, then _sigsys { call_addr,
    // syscall (int), arch }: the syscall number is at byte 24.
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(24).cast::<libc::c_int>()) }
    };
    let mut digits = [0u8; 20];
    let parts: [&[u8]; 3] = [
        b"crosvm: seccomp: a VMM thread made system call ",
        decimal(u64::from(nr.unsigned_abs()), &mut digits),
        b", which its filter denies; the VMM stops (rerun with --no-seccomp to debug)\n",
    ];
    for part in parts {
        // SAFETY: write(2) of a valid buffer; async-signal-safe.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(SECCOMP_EXIT_CODE) };
}

/// Installs the process-wide SIGSYS handler that reports a denied call.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_builds() {
        for kind in ThreadKind::ALL {
            assert!(!filter_for(kind).unwrap().is_empty());
        }
    }

    #[test]
    fn decimal_formats() {
        let mut b = [0u8; 20];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(41, &mut b), b"41");
        assert_eq!(decimal(u64::MAX, &mut b), b"18446744073709551615");
    }

    /// A denied call in a filtered process is reported and ends it with SECCOMP_EXIT_CODE.
    /// Runs in a forked child (filters cannot be removed), which only makes raw system calls.
    #[test]
    fn denied_call_is_reported_and_ends_the_process() {
        let text = run_denied_call(ThreadKind::Helper, libc::SYS_socket);
        assert!(
            text.contains(&format!("system call {}", libc::SYS_socket)),
            "{text}"
        );
    }

    /// The vsock thread's filter allows its sockets but not, say, starting a process: execve
    /// there kills the VMM with the same clear line.
    #[test]
    fn vsock_thread_filter_denies_execve_with_a_clear_line() {
        let text = run_denied_call(ThreadKind::Vsock, libc::SYS_execve);
        assert!(
            text.contains(&format!(
                "crosvm: seccomp: a VMM thread made system call {}, which its filter denies",
                libc::SYS_execve
            )),
            "{text}"
        );
    }

    /// openat (glibc's malloc reads /proc/sys/vm/overcommit_memory when it trims a thread's
    /// heap) fails with EACCES under every filter rather than killing the process; the file
    /// server's filter, whose work it is, allows it.
    #[test]
    fn openat_fails_with_eacces_instead_of_killing() {
        for kind in ThreadKind::ALL {
            let expected = if kind == ThreadKind::FileServer {
                43
            } else {
                42
            };
            let filter = filter_for(kind).unwrap();
            // SAFETY: the child only makes raw system calls until it exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: raw calls in the child; the path is a NUL-terminated literal.
                unsafe {
                    if seccompiler::apply_filter(&filter).is_err() {
                        libc::_exit(3);
                    }
                    let fd = libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        c"/proc/sys/vm/overcommit_memory".as_ptr(),
                        libc::O_RDONLY,
                    );
                    let errno = *libc::__errno_location();
                    libc::_exit(if fd == -1 && errno == libc::EACCES {
                        42
                    } else if fd >= 0 {
                        43
                    } else {
                        4
                    });
                }
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == expected,
                "{kind:?}: status {status:#x}"
            );
        }
    }

    /// Every kind's filter kills on a call it does not allow, with the same line.
    #[test]
    fn every_filter_kills_on_execve_with_a_clear_line() {
        for kind in ThreadKind::ALL {
            let text = run_denied_call(kind, libc::SYS_execve);
            assert!(
                text.contains(&format!(
                    "system call {}, which its filter denies",
                    libc::SYS_execve
                )),
                "{kind:?}: {text}"
            );
        }
    }

    /// The host-socket filters take AF_UNIX sockets only: a TCP socket (or any other family)
    /// kills the process, as does removing a file on the vsock thread, which binds nothing.
    #[test]
    fn socket_filters_allow_unix_sockets_only_and_vsock_unlinks_nothing() {
        for kind in [ThreadKind::Vsock, ThreadKind::VhostUser] {
            let text = run_denied_call_with(
                kind,
                libc::SYS_socket,
                [i64::from(libc::AF_INET), i64::from(libc::SOCK_STREAM), 0],
            );
            assert!(
                text.contains(&format!("system call {}", libc::SYS_socket)),
                "{kind:?}: {text}"
            );
            assert!(
                unix_socket_allowed(kind),
                "{kind:?} refused an AF_UNIX socket"
            );
        }
        assert!(!unix_socket_allowed(ThreadKind::EventLoop));
        for nr in [libc::SYS_unlink, libc::SYS_unlinkat, libc::SYS_bind] {
            let text = run_denied_call(ThreadKind::Vsock, nr);
            assert!(text.contains(&format!("system call {nr}")), "{text}");
        }
    }

    /// Whether a child under `kind`'s filter may create an AF_UNIX stream socket (it is
    /// killed otherwise).
    fn unix_socket_allowed(kind: ThreadKind) -> bool {
        let filter = filter_for(kind).unwrap();
        // SAFETY: the child only makes raw system calls until it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw calls in the child; stderr closed so a kill stays quiet.
            unsafe {
                libc::close(2);
                if seccompiler::apply_filter(&filter).is_err() {
                    libc::_exit(3);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::_exit(if fd >= 0 { 42 } else { 4 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 42
    }

    /// In a forked child: installs `kind`'s filter, makes system call `nr` (with zero
    /// arguments), and returns what the child wrote on stderr once it ended with
    /// SECCOMP_EXIT_CODE.
    fn run_denied_call(kind: ThreadKind, nr: libc::c_long) -> String {
        run_denied_call_with(kind, nr, [0; 3])
    }

    /// [`run_denied_call`] with the call's first three arguments.
    fn run_denied_call_with(kind: ThreadKind, nr: libc::c_long, args: [i64; 3]) -> String {
        let filter = filter_for(kind).unwrap();
        install_sigsys_handler().unwrap();
        let mut pipe = [0; 2];
        // SAFETY: pipe(2) into a two-element array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes system calls until it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw calls in the child: route stderr to the pipe, filter, then make a
            // call the filter denies.
            unsafe {
                libc::dup2(pipe[1], 2);
                if seccompiler::apply_filter(&filter).is_err() {
                    libc::_exit(3);
                }
                libc::syscall(nr, args[0], args[1], args[2]);
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(pipe[1]) };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut out = vec![0u8; 512];
        // SAFETY: reading into a buffer of the given length.
        let n = unsafe { libc::read(pipe[0], out.as_mut_ptr().cast(), out.len()) };
        // SAFETY: closing the read end.
        unsafe { libc::close(pipe[0]) };
        let text = String::from_utf8_lossy(&out[..n.max(0) as usize]).into_owned();
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), SECCOMP_EXIT_CODE, "{text}");
        text
    }
}
