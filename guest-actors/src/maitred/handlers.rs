//! What maitred does for each request. Every field comes from the host and is validated here.

use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cros_messages::maitred::{MaitredReply, MaitredRequest};
use cros_messages::{CrosError, ErrorKind};
use nix::mount::{MsFlags, mount};

use super::disks;
use super::services::{ServiceError, Services};
use super::{STATEFUL_MOUNT, STATEFUL_SERIAL};

/// mkfs.btrfs on a large sparse disk, and mounting it, can take a while under emulation.
const MKFS_TIMEOUT: Duration = Duration::from_secs(120);
const PROCESS_TIMEOUT: Duration = Duration::from_secs(600);
/// Mount flags the host may pass (no remount/bind/move tricks).
const ALLOWED_MOUNT_FLAGS: u64 =
    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME;

/// State shared by all connections.
/// Kernel modules stage 2 loads in the background after VmReady; requests that need them (mounts,
/// StartTermina) wait for the load to finish.
pub struct LateModules {
    state: Mutex<LateState>,
}

enum LateState {
    Loading(std::thread::JoinHandle<Result<(), String>>),
    Done(Result<(), String>),
}

impl LateModules {
    /// Starts loading the modules of `dir` (with its load-order file); nothing to do when the
    /// image has no such directory.
    pub fn start(dir: &Path) -> Self {
        let state = if dir.is_dir() {
            let dir = dir.to_path_buf();
            LateState::Loading(std::thread::spawn(move || {
                crate::kmod::load_dir(&dir)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }))
        } else {
            LateState::Done(Ok(()))
        };
        Self {
            state: Mutex::new(state),
        }
    }

    /// No late modules (a host test run, or a kernel with everything built in).
    pub fn none() -> Self {
        Self {
            state: Mutex::new(LateState::Done(Ok(()))),
        }
    }

    /// Waits until the modules are loaded; the load's error, if any, for every caller.
    pub fn wait(&self) -> Result<(), CrosError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| CrosError::internal("late module state poisoned"))?;
        let result = match std::mem::replace(&mut *state, LateState::Done(Ok(()))) {
            LateState::Loading(handle) => handle
                .join()
                .unwrap_or_else(|_| Err("the module loader panicked".into())),
            LateState::Done(r) => r,
        };
        *state = LateState::Done(result.clone());
        result.map_err(|e| CrosError::internal(format!("loading kernel modules: {e}")))
    }
}

pub struct Maitred {
    pub services: Arc<Services>,
    pub sys_block: String,
    pub timezone: Mutex<Option<String>>,
    pub late_modules: LateModules,
    /// Set by Shutdown; the server then powers off once the reply is sent.
    pub shutdown_requested: std::sync::atomic::AtomicBool,
}

/// The outcome of one request.
pub type Outcome = Result<MaitredReply, CrosError>;

fn invalid(msg: impl Into<String>) -> CrosError {
    CrosError::invalid(msg)
}

/// An absolute path with no `..` and no NUL.
fn check_abs_path(what: &str, p: &str) -> Result<(), CrosError> {
    let path = Path::new(p);
    if p.is_empty()
        || !path.is_absolute()
        || p.contains('\0')
        || path.components().any(|c| c == Component::ParentDir)
    {
        return Err(invalid(format!(
            "{what} {p:?} must be an absolute path without '..'"
        )));
    }
    if p.len() > 4096 {
        return Err(invalid(format!("{what} is longer than 4096 bytes")));
    }
    Ok(())
}

/// What Mount checks before it touches anything (public for the fuzzer).
#[doc(hidden)]
pub fn check_mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: u64,
    options: &str,
) -> Result<(), CrosError> {
    check_abs_path("target", target)?;
    if flags & !ALLOWED_MOUNT_FLAGS != 0 {
        return Err(invalid(format!(
            "mount flags {flags:#x} include flags other than ro/nosuid/nodev/noexec/noatime"
        )));
    }
    if !fstype.bytes().all(|b| b.is_ascii_alphanumeric()) || fstype.is_empty() || fstype.len() > 16
    {
        return Err(invalid(format!(
            "filesystem type {fstype:?} is not a plain name"
        )));
    }
    if options.contains('\0') || options.len() > 1024 {
        return Err(invalid(
            "mount options must be under 1024 bytes without NUL",
        ));
    }
    if source.starts_with('/') {
        check_abs_path("source", source)?;
    }
    Ok(())
}

/// What LaunchProcess checks before it starts anything (public for the fuzzer).
#[doc(hidden)]
pub fn check_launch(
    argv: &[String],
    env: &[(String, String)],
    respawn: bool,
    wait_for_exit: bool,
) -> Result<(), CrosError> {
    if argv.is_empty() {
        return Err(invalid("argv is empty"));
    }
    if argv.len() > 1024
        || argv
            .iter()
            .chain(env.iter().flat_map(|(k, v)| [k, v]))
            .any(|s| s.contains('\0') || s.len() > 65536)
    {
        return Err(invalid(
            "argv/env must be at most 1024 entries of at most 64 KiB without NUL",
        ));
    }
    if env.iter().any(|(k, _)| k.is_empty() || k.contains('=')) {
        return Err(invalid(
            "environment names must be non-empty and contain no '='",
        ));
    }
    if respawn && wait_for_exit {
        return Err(invalid("respawn and wait_for_exit exclude each other"));
    }
    Ok(())
}

fn service_error(e: ServiceError) -> CrosError {
    match e {
        ServiceError::Spawn { .. } => CrosError::new(ErrorKind::NotFound, e.to_string()),
        ServiceError::Timeout { .. } => CrosError::timeout(e.to_string()),
        _ => CrosError::internal(e.to_string()),
    }
}

/// `btrfs inspect-internal min-dev-size` prints `<bytes> bytes (<human>)`.
fn parse_min_dev_size(out: &str) -> Result<u64, CrosError> {
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            CrosError::internal(format!(
                "btrfs inspect-internal min-dev-size printed {:?}, not a size",
                out.trim()
            ))
        })
}

fn statvfs_free(path: &str) -> Result<(u64, u64), CrosError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| CrosError::internal(format!("statvfs {path}: {e}")))?;
    let frsize = st.fragment_size() as u64;
    Ok((
        st.blocks_available() as u64 * frsize,
        st.blocks() as u64 * frsize,
    ))
}

impl Maitred {
    pub fn handle(&self, req: MaitredRequest) -> Outcome {
        match req {
            MaitredRequest::GetKernelVersion {} => {
                let u = nix::sys::utsname::uname()
                    .map_err(|e| CrosError::internal(format!("uname: {e}")))?;
                Ok(MaitredReply::KernelVersion {
                    release: u.release().to_string_lossy().into_owned(),
                    version: u.version().to_string_lossy().into_owned(),
                })
            }
            MaitredRequest::Mount {
                source,
                target,
                fstype,
                flags,
                options,
                create_target,
                mkfs_if_needed,
            } => self.mount(
                &source,
                &target,
                &fstype,
                flags,
                &options,
                create_target,
                mkfs_if_needed,
            ),
            MaitredRequest::StartTermina {
                stateful_device,
                start_tremplin,
                lxd_ipv4_subnet,
            } => self.start_termina(&stateful_device, start_tremplin, &lxd_ipv4_subnet),
            MaitredRequest::LaunchProcess {
                argv,
                env,
                respawn,
                wait_for_exit,
            } => self.launch(argv, env, respawn, wait_for_exit),
            MaitredRequest::SetTime { secs, nanos } => {
                if nanos >= 1_000_000_000 || secs > i64::MAX as u64 {
                    return Err(invalid(format!("time {secs}.{nanos:09} is out of range")));
                }
                let ts = nix::sys::time::TimeSpec::new(secs as i64, nanos as i64);
                nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
                    .map_err(|e| CrosError::internal(format!("clock_settime: {e}")))?;
                Ok(MaitredReply::Ack {})
            }
            MaitredRequest::SetTimezone { name } => {
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && !name.split('/').any(|p| p.is_empty() || p == "..")
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
                if !ok {
                    return Err(invalid(format!(
                        "timezone {name:?} is not a zoneinfo name like Europe/Paris"
                    )));
                }
                // Processes maitred launches from now on get TZ; the root image is read-only.
                if let Ok(mut tz) = self.timezone.lock() {
                    *tz = Some(name);
                }
                Ok(MaitredReply::Ack {})
            }
            MaitredRequest::Shutdown {} => {
                self.shutdown_requested
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(MaitredReply::Ack {})
            }
            MaitredRequest::ResizeFilesystem { size } => {
                let arg = if size == 0 {
                    "max".to_string()
                } else {
                    size.to_string()
                };
                self.services
                    .run(
                        &["btrfs", "filesystem", "resize", &arg, STATEFUL_MOUNT],
                        MKFS_TIMEOUT,
                    )
                    .map_err(service_error)?;
                Ok(MaitredReply::Ack {})
            }
            MaitredRequest::GetResizeStatus {} => {
                let (_, total) = statvfs_free(STATEFUL_MOUNT)?;
                Ok(MaitredReply::ResizeStatus {
                    resizing: false,
                    current_size: total,
                    target_size: total,
                })
            }
            MaitredRequest::GetAvailableSpace {} => Ok(MaitredReply::AvailableSpace {
                bytes: statvfs_free(STATEFUL_MOUNT)?.0,
            }),
            MaitredRequest::GetMinimumSize {} => {
                let out = self
                    .services
                    .run(
                        &["btrfs", "inspect-internal", "min-dev-size", STATEFUL_MOUNT],
                        MKFS_TIMEOUT,
                    )
                    .map_err(service_error)?;
                Ok(MaitredReply::MinimumSize {
                    bytes: parse_min_dev_size(&out)?,
                })
            }
            MaitredRequest::ConfigureNetwork {
                address,
                netmask,
                gateway,
                dns,
            } => {
                let config = super::network::Config::parse(&address, &netmask, &gateway, &dns)
                    .map_err(|e| CrosError::invalid(e.to_string()))?;
                // virtio_net is a late module: the interface exists once they are loaded.
                self.late_modules.wait()?;
                super::network::configure(&self.services, &config)
                    .map_err(|e| CrosError::internal(e.to_string()))?;
                Ok(MaitredReply::Ack {})
            }
            MaitredRequest::Mount9P { port, target } => {
                check_abs_path("target", &target)?;
                super::mount9p::check(port)?;
                self.late_modules.wait()?;
                super::mount9p::mount_9p(port, &target)?;
                Ok(MaitredReply::Ack {})
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn mount(
        &self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: u64,
        options: &str,
        create_target: bool,
        mkfs_if_needed: bool,
    ) -> Outcome {
        check_mount(source, target, fstype, flags, options)?;
        self.late_modules.wait()?;
        if create_target {
            std::fs::create_dir_all(target)
                .map_err(|e| CrosError::internal(format!("create {target}: {e}")))?;
        }
        if mkfs_if_needed && source.starts_with("/dev/") {
            self.mkfs_if_blank(source, fstype)?;
        }
        let data = (!options.is_empty()).then_some(options);
        mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::from_bits_truncate(flags as _),
            data,
        )
        .map_err(|e| CrosError::internal(format!("mount {source} ({fstype}) on {target}: {e}")))?;
        Ok(MaitredReply::Ack {})
    }

    fn mkfs_if_blank(&self, dev: &str, fstype: &str) -> Result<bool, CrosError> {
        let found = disks::probe(Path::new(dev))
            .map_err(|e| CrosError::internal(format!("read {dev}: {e}")))?;
        if found.is_some() {
            return Ok(false);
        }
        let mkfs = format!("mkfs.{fstype}");
        let args: Vec<&str> = match fstype {
            "btrfs" => vec![&mkfs, "-q", dev],
            "ext4" => vec![&mkfs, "-q", "-F", dev],
            _ => {
                return Err(invalid(format!(
                    "mkfs_if_needed is supported for btrfs and ext4, not {fstype}"
                )));
            }
        };
        self.services
            .run(&args, MKFS_TIMEOUT)
            .map_err(service_error)?;
        Ok(true)
    }

    fn start_termina(
        &self,
        stateful_device: &str,
        start_tremplin: bool,
        lxd_ipv4_subnet: &str,
    ) -> Outcome {
        self.late_modules.wait()?;
        let dev = if stateful_device.is_empty() {
            disks::find_by_serial(Path::new(&self.sys_block), STATEFUL_SERIAL)
                .ok_or_else(|| {
                    CrosError::not_found(format!(
                        "no disk with serial {STATEFUL_SERIAL} is attached"
                    ))
                })?
                .to_string_lossy()
                .into_owned()
        } else {
            check_abs_path("stateful_device", stateful_device)?;
            stateful_device.to_string()
        };
        if !is_mounted(STATEFUL_MOUNT) {
            self.mkfs_if_blank(&dev, "btrfs")?;
            std::fs::create_dir_all(STATEFUL_MOUNT)
                .map_err(|e| CrosError::internal(format!("create {STATEFUL_MOUNT}: {e}")))?;
            let mut partial_data_loss = false;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
            if let Err(first) = mount(
                Some(dev.as_str()),
                STATEFUL_MOUNT,
                Some("btrfs"),
                flags,
                Some("user_subvol_rm_allowed"),
            ) {
                // A damaged tree: try the backup roots, as Crostini does, and say so.
                mount(
                    Some(dev.as_str()),
                    STATEFUL_MOUNT,
                    Some("btrfs"),
                    flags,
                    Some("user_subvol_rm_allowed,rescue=usebackuproot"),
                )
                .map_err(|e| {
                    CrosError::internal(format!(
                        "mount {dev} on {STATEFUL_MOUNT}: {first}; with usebackuproot: {e}"
                    ))
                })?;
                partial_data_loss = true;
            }
            // Grow the filesystem to the disk (the host may have grown the file).
            if let Err(e) = self.services.run(
                &["btrfs", "filesystem", "resize", "max", STATEFUL_MOUNT],
                MKFS_TIMEOUT,
            ) {
                eprintln!("maitred: growing {STATEFUL_MOUNT}: {e}");
            }
            if start_tremplin {
                self.start_tremplin(lxd_ipv4_subnet)?;
            }
            let (free, _) = statvfs_free(STATEFUL_MOUNT)?;
            return Ok(MaitredReply::TerminaStarted {
                partial_data_loss,
                free_bytes: free,
            });
        }
        let (free, _) = statvfs_free(STATEFUL_MOUNT)?;
        Ok(MaitredReply::TerminaStarted {
            partial_data_loss: false,
            free_bytes: free,
        })
    }

    /// Starts tremplin, with lxdbr0 on `lxd_ipv4_subnet` when the host gave one.
    fn start_tremplin(&self, lxd_ipv4_subnet: &str) -> Result<(), CrosError> {
        let tremplin = "/usr/bin/tremplin";
        if !Path::new(tremplin).exists() {
            return Err(CrosError::unsupported(
                "start_tremplin: tremplin is not part of this termina image yet",
            ));
        }
        if !lxd_ipv4_subnet.is_empty()
            && !crate::tremplin::setup::is_bridge_address(lxd_ipv4_subnet)
        {
            return Err(invalid(format!(
                "lxd_ipv4_subnet {lxd_ipv4_subnet:?} is not ADDRESS/PREFIX (100.115.93.1/28)"
            )));
        }
        let mut argv = vec![tremplin.to_string()];
        if !lxd_ipv4_subnet.is_empty() {
            argv.extend(["--lxd-subnet".to_string(), lxd_ipv4_subnet.to_string()]);
        }
        self.services
            .start("tremplin", argv, vec![])
            .map_err(service_error)?;
        Ok(())
    }

    fn launch(
        &self,
        argv: Vec<String>,
        mut env: Vec<(String, String)>,
        respawn: bool,
        wait_for_exit: bool,
    ) -> Outcome {
        check_launch(&argv, &env, respawn, wait_for_exit)?;
        let Some(program) = argv.first() else {
            return Err(invalid("argv is empty"));
        };
        if let Some(tz) = self.timezone.lock().ok().and_then(|t| t.clone()) {
            env.push(("TZ".into(), tz));
        }
        if respawn {
            let pid = self
                .services
                .start(program, argv.clone(), env)
                .map_err(service_error)?;
            return Ok(MaitredReply::ProcessLaunched {
                pid: pid as u32,
                exit_code: None,
            });
        }
        let child = std::process::Command::new(program)
            .args(&argv[1..])
            .envs(env)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| CrosError::not_found(format!("cannot start {program}: {e}")))?;
        let pid = child.id();
        let exit_code = if wait_for_exit {
            let code = self.services.reaper().wait_for(pid as i32, PROCESS_TIMEOUT);
            Some(code.ok_or_else(|| {
                CrosError::timeout(format!(
                    "{program} (pid {pid}) still running after {} s",
                    PROCESS_TIMEOUT.as_secs()
                ))
            })?)
        } else {
            None
        };
        Ok(MaitredReply::ProcessLaunched { pid, exit_code })
    }

    /// Stops services, syncs, unmounts the stateful disk (so btrfs is clean), powers off.
    pub fn power_off(&self) -> ! {
        self.services.stop_all(Duration::from_secs(3));
        nix::unistd::sync();
        if is_mounted(STATEFUL_MOUNT)
            && let Err(e) = nix::mount::umount(STATEFUL_MOUNT)
        {
            eprintln!("maitred: unmount {STATEFUL_MOUNT}: {e}; remounting read-only");
            let _ = mount(
                None::<&str>,
                STATEFUL_MOUNT,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
        crate::pid1::power_off()
    }
}

/// Whether something is mounted exactly at `target` (per /proc/self/mounts).
pub fn is_mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_dev_size_output_is_parsed_or_named() {
        // The format of btrfs-progs 6.2 (Debian bookworm, the termina rootfs).
        assert_eq!(
            parse_min_dev_size("290455552 bytes (277.00MiB)\n").unwrap(),
            290_455_552
        );
        let err = parse_min_dev_size("ERROR: not a btrfs filesystem\n").unwrap_err();
        assert!(err.message.contains("not a btrfs filesystem"), "{err}");
    }

    #[test]
    fn late_modules_report_their_load_error_to_every_waiter() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            LateModules::start(&dir.path().join("absent"))
                .wait()
                .is_ok()
        );
        std::fs::write(dir.path().join("load-order"), "fake.ko\n").unwrap();
        std::fs::write(dir.path().join("fake.ko"), b"not a module").unwrap();
        let late = LateModules::start(dir.path());
        for _ in 0..2 {
            let err = late.wait().unwrap_err();
            assert!(err.message.contains("fake.ko"), "{err}");
        }
    }

    #[test]
    fn mount_and_launch_checks_refuse_what_the_host_may_not_ask() {
        assert!(check_mount("/dev/vdb", "/mnt/stateful", "btrfs", libc::MS_NOSUID, "").is_ok());
        assert!(check_mount("tmpfs", "/tmp", "tmpfs", 0, "size=1m").is_ok());
        for (source, target, fstype, flags, options) in [
            ("/dev/vdb", "mnt", "btrfs", 0, ""),
            ("/dev/../etc", "/mnt", "btrfs", 0, ""),
            ("/dev/vdb", "/mnt", "btr fs", 0, ""),
            ("/dev/vdb", "/mnt", "", 0, ""),
            ("/dev/vdb", "/mnt", "btrfs", libc::MS_BIND, ""),
            ("/dev/vdb", "/mnt", "btrfs", 0, "a\0b"),
        ] {
            let e = check_mount(source, target, fstype, flags, options).unwrap_err();
            assert_eq!(
                e.kind,
                ErrorKind::InvalidArgument,
                "{source} {target} {fstype}"
            );
        }

        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let env = |k: &str| vec![(k.to_string(), "v".to_string())];
        assert!(check_launch(&argv(&["/bin/true"]), &env("LANG"), true, false).is_ok());
        for (a, e, respawn, wait) in [
            (argv(&[]), env("LANG"), false, false),
            (argv(&["/bin/true", "a\0"]), env("LANG"), false, false),
            (argv(&["/bin/true"]), env("A=B"), false, false),
            (argv(&["/bin/true"]), env(""), false, false),
            (argv(&["/bin/true"]), env("LANG"), true, true),
        ] {
            let err = check_launch(&a, &e, respawn, wait).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{a:?} {e:?}");
        }
    }

    #[test]
    fn paths_are_validated() {
        assert!(check_abs_path("t", "/mnt/stateful").is_ok());
        for bad in ["", "relative", "/mnt/../etc", "/a\0b"] {
            let e = check_abs_path("target", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}");
        }
    }
}
