//! A QEMU/TCG VM running the vsock test guest (`vsock_echo` as /init, from guest-actors), and
//! the host side of its protocol (`cros_guest::vsock_probe`) over the hybrid vsock Unix sockets.
//! Shared by the end-to-end test and the end-to-end benchmark.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cros_guest::vsock_probe as probe;
use cros_hypervisor::{
    Hypervisor, Initramfs, QemuBackend, VhostUserVsockBackend, VmHandle, VmSpec, VsockSpec,
};

/// The guest kernel and the vsock modules it needs, as tools/scripts/guest-kernel.sh extracts
/// them.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub kernel: PathBuf,
    pub modules_dir: PathBuf,
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The guest kernel: from `CROSD_GUEST_KERNEL` and `CROSD_GUEST_MODULES` when both are set,
/// else by running tools/scripts/guest-kernel.sh (which downloads it once into a cache).
/// Panics with the script's error when it cannot be had: a test needing it must fail, not pass.
pub fn guest_kernel() -> GuestKernel {
    if let (Some(k), Some(m)) = (
        std::env::var_os("CROSD_GUEST_KERNEL"),
        std::env::var_os("CROSD_GUEST_MODULES"),
    ) {
        let gk = GuestKernel {
            kernel: k.into(),
            modules_dir: m.into(),
        };
        assert!(
            gk.kernel.is_file(),
            "CROSD_GUEST_KERNEL={} is not a file",
            gk.kernel.display()
        );
        assert!(
            gk.modules_dir.join("load-order").is_file(),
            "CROSD_GUEST_MODULES={} has no load-order file (run tools/scripts/guest-kernel.sh)",
            gk.modules_dir.display()
        );
        return gk;
    }
    let script = repo_root().join("tools/scripts/guest-kernel.sh");
    let out = Command::new(&script)
        .arg("--quiet")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{} printed no {name}= line:\n{stdout}", script.display()))
    };
    GuestKernel {
        kernel: var("KERNEL"),
        modules_dir: var("MODULES_DIR"),
    }
}

/// Writes an initramfs with `init_binary` as /init and the kernel's vsock modules under
/// /lib/modules/crosd (where the test guest loads them from).
pub fn build_probe_initramfs(init_binary: &Path, kernel: &GuestKernel, out: &Path) {
    build_initramfs(init_binary, Some(&kernel.modules_dir), out);
}

/// Writes an initramfs with `init_binary` as /init and, when given, the files of `modules_dir`
/// under /lib/modules/crosd.
pub fn build_initramfs(init_binary: &Path, modules_dir: Option<&Path>, out: &Path) {
    let mut fs = Initramfs::with_base_layout().expect("base layout");
    fs.add_file_from("init", 0o755, init_binary)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    if let Some(dir) = modules_dir {
        fs.add_dir_files_from("lib/modules/crosd", dir)
            .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    }
    fs.write_to(out)
        .unwrap_or_else(|e| panic!("writing the initramfs: {e}"));
}

/// Ports the test guest listens on (the defaults of `cros_guest::vsock_probe`).
pub const ECHO_PORT: u32 = probe::DEFAULT_ECHO_PORT;
pub const SINK_PORT: u32 = probe::DEFAULT_SINK_PORT;
pub const SOURCE_PORT: u32 = probe::DEFAULT_SOURCE_PORT;
pub const CONTROL_PORT: u32 = probe::DEFAULT_CONTROL_PORT;

/// Options for [`ProbeVm::start`].
pub struct ProbeVmOptions<'a> {
    pub name: &'a str,
    pub kernel: &'a GuestKernel,
    pub initrd: &'a Path,
    pub run_dir: &'a Path,
    pub vsock_backend: VhostUserVsockBackend,
    /// Host port the guest dials at boot (`crosd.dial_port`), if any.
    pub dial_port: Option<u32>,
    /// The guest powers off by itself after this long.
    pub guest_timeout_s: u32,
}

/// A running test guest.
pub struct ProbeVm {
    pub handle: VmHandle,
    pub uds: PathBuf,
    pub console_log: PathBuf,
}

impl ProbeVm {
    /// Boots the VM and waits for the guest's `ready` line (its listeners are bound).
    pub fn start(opts: ProbeVmOptions<'_>) -> Result<ProbeVm, String> {
        let mut vm = Self::boot(opts)?;
        vm.wait_console("ready ", Duration::from_secs(120))?;
        Ok(vm)
    }

    /// Boots the VM; returns once the guest has written to its console.
    pub fn boot(opts: ProbeVmOptions<'_>) -> Result<ProbeVm, String> {
        let uds = opts.run_dir.join("vsock.sock");
        let mut spec = VmSpec::new(opts.name, &opts.kernel.kernel, opts.run_dir);
        spec.initrd = Some(opts.initrd.to_path_buf());
        // panic=-1: should init die, the kernel reboots, which -no-reboot turns into QEMU exiting.
        spec.cmdline = format!(
            "console=ttyS0 panic=-1 loglevel=4 crosd.timeout_s={}",
            opts.guest_timeout_s
        );
        if let Some(p) = opts.dial_port {
            spec.cmdline.push_str(&format!(" crosd.dial_port={p}"));
        }
        spec.mem_mib = 512;
        spec.cpus = 2;
        spec.vsock = Some(VsockSpec {
            guest_cid: 3,
            uds_path: uds.clone(),
        });
        let mut backend = QemuBackend::new("crosvm");
        backend.vsock_backend = opts.vsock_backend;
        backend.kill_with_parent_thread = true;
        let handle = backend.start(&spec).map_err(|e| e.to_string())?;
        if handle.start_attempts() > 1 {
            eprintln!(
                "note: VM '{}' printed nothing on its first start; started on attempt {}",
                opts.name,
                handle.start_attempts()
            );
        }
        Ok(ProbeVm {
            handle,
            uds,
            console_log: spec.console_log.clone(),
        })
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console_log).unwrap_or_default()).into_owned()
    }

    /// Waits for a `CROSD-GUEST: <text>...` line; returns it. Fails early on a guest error line
    /// or when QEMU exits, with the console attached.
    pub fn wait_console(&mut self, text: &str, timeout: Duration) -> Result<String, String> {
        let want = format!("{}: {text}", probe::MARKER);
        let error = format!("{}: error", probe::MARKER);
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if let Some(line) = console.lines().find(|l| l.contains(&want)) {
                return Ok(line.to_string());
            }
            if console.contains(&error) {
                return Err(format!("guest reported an error:\n{}", tail(&console)));
            }
            if let Some((what, status, log)) = self.handle.exited_helper() {
                return Err(format!(
                    "{what} exited ({status}) while waiting for {want:?}; its log {}:\n{}\nconsole:\n{}",
                    log.display(),
                    tail(&String::from_utf8_lossy(
                        &std::fs::read(&log).unwrap_or_default()
                    )),
                    tail(&console)
                ));
            }
            if let Ok(Some(status)) = self.handle.try_wait() {
                return Err(format!(
                    "QEMU exited ({status}) before the guest printed {want:?}; console:\n{}",
                    tail(&console)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {want:?} on the console within {timeout:?}; console:\n{}",
                    tail(&console)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Host → guest: a stream to the guest's `port` (`CONNECT <port>` on the UDS).
    pub fn connect(&self, port: u32) -> Result<UnixStream, String> {
        connect_guest(&self.uds, port)
    }

    /// Tells the guest to power off and waits for QEMU to exit.
    pub fn quit(&mut self) -> Result<(), String> {
        let mut control = self.connect(CONTROL_PORT)?;
        control
            .write_all(b"quit\n")
            .map_err(|e| format!("sending quit: {e}"))?;
        let reply = read_line(&mut control).map_err(|e| format!("reading quit reply: {e}"))?;
        if reply != "bye" {
            return Err(format!("quit answered {reply:?}, expected \"bye\""));
        }
        // The guest waits for this hang-up before it powers off.
        drop(control);
        match self.handle.wait_timeout(Duration::from_secs(60)) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "QEMU still running 60 s after quit; console:\n{}",
                tail(&self.console())
            )),
            Err(e) => Err(format!("waiting for QEMU: {e}")),
        }
    }
}

/// The last lines of a console, for error messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Reads one `\n`-terminated line byte by byte (so no stream bytes after it are consumed).
pub fn read_line(stream: &mut impl Read) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {:?}",
                        String::from_utf8_lossy(&line)
                    ),
                ));
            }
            _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ if line.len() >= 256 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "line longer than 256 bytes",
                ));
            }
            _ => line.push(byte[0]),
        }
    }
}

/// Longest a single read or write on a guest connection may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The hybrid vsock handshake: `CONNECT <port>\n`, expecting `OK <hostport>\n`.
pub fn connect_guest(uds: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(cros_messages::hybrid_vsock::connect_request(port).as_bytes())
        .map_err(|e| format!("CONNECT {port}: {e}"))?;
    let reply = read_line(&mut s).map_err(|e| format!("CONNECT {port}: {e}"))?;
    let ok = cros_messages::hybrid_vsock::parse_connect_reply(&reply).is_some();
    if !ok {
        return Err(format!(
            "CONNECT {port} answered {reply:?}, expected \"OK <port>\""
        ));
    }
    // A stalled device must fail the caller, not hang it: no single read or write may wait
    // longer than this.
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Host listener for guest → host connections to `port`: the Unix socket `<uds>_<port>`.
pub fn listen_host_port(uds: &Path, port: u32) -> UnixListener {
    let path = PathBuf::from(format!("{}_{port}", uds.display()));
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()))
}

/// Host → guest bulk transfer through the sink port: `n` bytes in `chunk`-sized writes; returns
/// the elapsed time from the first byte to the guest's confirmation.
pub fn send_to_sink(vm: &ProbeVm, n: u64, chunk: usize) -> Result<Duration, String> {
    let mut s = vm.connect(SINK_PORT)?;
    let mut buf = vec![0u8; chunk];
    probe::fill_pattern(&mut buf, 0);
    let t0 = Instant::now();
    s.write_all(format!("{n}\n").as_bytes())
        .map_err(|e| format!("sink: {e}"))?;
    let mut left = n;
    while left > 0 {
        let len = left.min(chunk as u64) as usize;
        s.write_all(&buf[..len])
            .map_err(|e| format!("sink: write: {e}"))?;
        left -= len as u64;
    }
    let reply = read_line(&mut s).map_err(|e| format!("sink: reading count: {e}"))?;
    let elapsed = t0.elapsed();
    if reply != n.to_string() {
        return Err(format!("sink confirmed {reply:?}, expected {n}"));
    }
    Ok(elapsed)
}

/// Guest → host bulk transfer through the source port; checks every byte against the pattern
/// when `verify`; returns the elapsed time.
pub fn read_from_source(
    vm: &ProbeVm,
    n: u64,
    chunk: usize,
    verify: bool,
) -> Result<Duration, String> {
    let mut s = vm.connect(SOURCE_PORT)?;
    let t0 = Instant::now();
    s.write_all(format!("{n}\n").as_bytes())
        .map_err(|e| format!("source: {e}"))?;
    read_pattern(&mut s, n, chunk, verify).map_err(|e| format!("source: {e}"))?;
    Ok(t0.elapsed())
}

/// Reads exactly `n` bytes, checking them against the pattern when `verify`.
pub fn read_pattern(s: &mut impl Read, n: u64, chunk: usize, verify: bool) -> Result<(), String> {
    let mut buf = vec![0u8; chunk];
    let want = probe::PatternBuf::new(chunk);
    let mut off = 0u64;
    while off < n {
        let len = (n - off).min(chunk as u64) as usize;
        let got = s
            .read(&mut buf[..len])
            .map_err(|e| format!("read at byte {off}: {e}"))?;
        if got == 0 {
            return Err(format!("EOF after {off} of {n} bytes"));
        }
        if verify && buf[..got] != *want.slice(off, got) {
            return Err(format!(
                "payload differs in the {got} bytes at offset {off}"
            ));
        }
        off += got as u64;
    }
    Ok(())
}

/// Guest-initiated guest → host transfer: asks the guest (control port) to dial host `port`
/// and send `n` bytes; accepts on `listener`, reads them (verified when `verify`), confirms the
/// count. Returns the time from accept to the last byte.
pub fn guest_dial_send(
    vm: &ProbeVm,
    listener: &UnixListener,
    port: u32,
    n: u64,
    verify: bool,
) -> Result<Duration, String> {
    let mut control = vm.connect(CONTROL_PORT)?;
    control
        .write_all(format!("dial {port} {n}\n").as_bytes())
        .map_err(|e| format!("control: {e}"))?;
    let mut s = accept_within(listener, Duration::from_secs(60))
        .map_err(|e| format!("accepting the guest's dial: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let header = read_line(&mut s).map_err(|e| format!("guest dial header: {e}"))?;
    if header != n.to_string() {
        return Err(format!("guest dial announced {header:?}, expected {n}"));
    }
    read_pattern(&mut s, n, 64 * 1024, verify)?;
    let elapsed = t0.elapsed();
    s.write_all(format!("{n}\n").as_bytes())
        .map_err(|e| format!("confirming to the guest: {e}"))?;
    let reply = read_line(&mut control).map_err(|e| format!("control reply: {e}"))?;
    if reply != format!("dialed {n}") {
        return Err(format!("guest answered {reply:?} to the dial command"));
    }
    Ok(elapsed)
}

/// Serves the guest's boot-time dial on `listener`: reads `CROSD-DIAL <n>\n` and n bytes,
/// checks them against the pattern and writes them back. Returns n.
/// Gives up when the guest has not connected within `timeout`.
pub fn serve_boot_dial(listener: &UnixListener, timeout: Duration) -> Result<usize, String> {
    let mut s = accept_within(listener, timeout)?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let header = read_line(&mut s).map_err(|e| format!("dial header: {e}"))?;
    let n: usize = header
        .strip_prefix("CROSD-DIAL ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("bad dial header {header:?}"))?;
    let mut data = vec![0u8; n];
    s.read_exact(&mut data)
        .map_err(|e| format!("dial payload: {e}"))?;
    if data != probe::pattern(n) {
        return Err("the guest's dial payload differs from the pattern".to_string());
    }
    s.write_all(&data)
        .map_err(|e| format!("echoing the dial: {e}"))?;
    // Keep the stream open until the guest has read everything and closed its end.
    let _ = BufReader::new(&s).fill_buf();
    Ok(n)
}

/// Accepts one connection, or fails after `timeout` (a guest that never dials must not hang
/// the host side).
pub fn accept_within(listener: &UnixListener, timeout: Duration) -> Result<UnixStream, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        match listener.accept() {
            Ok((s, _)) => break Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break Err(format!("the guest did not connect within {timeout:?}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => break Err(format!("accept: {e}")),
        }
    };
    listener.set_nonblocking(false).map_err(|e| e.to_string())?;
    let s = result?;
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Where the static guest binaries are: `target/x86_64-unknown-linux-gnu/<profile>/<name>`.
/// Panics with the build command when missing.
pub fn guest_bin(name: &str) -> PathBuf {
    let host_bins = crate::bin_dir();
    let profile = host_bins.file_name().expect("profile directory").to_owned();
    let target = host_bins.parent().expect("target directory");
    let p = target
        .join("x86_64-unknown-linux-gnu")
        .join(profile)
        .join(name);
    assert!(
        p.is_file(),
        "{} not found: build the static guest binaries first: \
         RUSTFLAGS='-C target-feature=+crt-static' cargo build -p cros-guest --bins --target x86_64-unknown-linux-gnu",
        p.display()
    );
    p
}
