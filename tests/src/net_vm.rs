//! A QEMU/TCG VM for the virtio-net tests and benchmark: the Debian guest kernel with Linux's
//! real virtio_net driver, busybox as /init (a shell script that loads the modules, configures
//! each NIC statically from the kernel command line, pings its host side and serves TCP), and up
//! to two NICs on the same guest: ours (`crosvm vhost-user-net` on a tap, QEMU's
//! `-netdev vhost-user`) and QEMU's own virtio-net on another tap, for comparison.
//!
//! Everything runs in the caller's network namespace, which must be one the caller made
//! ([`netns::enter_new_netns`]): the taps, their addresses (10.78.0.1/24 and 10.79.0.1/24 on
//! the host side, .2 in the guest) and every connection exist only there.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cros_hypervisor::Initramfs;

#[path = "../../vmm/tests/support/netns.rs"]
pub mod netns;

/// Port of the guest's sink: what the host sends is hashed and the SHA-256 printed on the
/// console (`sink <hex>`).
pub const SHA_SINK_PORT: u16 = 5001;
/// Port of the guest's source: it sends /tmp/blob and closes.
pub const SOURCE_PORT: u16 = 5002;
/// Port of the guest's plain sink (discards what it receives): for throughput.
pub const SINK_PORT: u16 = 5003;
/// What the guest prints before its messages.
pub const MARKER: &str = "CROSD-NET";

/// One of the guest's network cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    /// Our device: `crosvm vhost-user-net` on tap `crosdnet0`, 10.78.0.0/24.
    Ours,
    /// QEMU's own virtio-net on tap `crosdqemu0` (`-netdev tap`, vhost=off), 10.79.0.0/24.
    Qemu,
}

impl Nic {
    pub fn tap(self) -> &'static str {
        match self {
            Nic::Ours => "crosdnet0",
            Nic::Qemu => "crosdqemu0",
        }
    }
    fn subnet(self) -> u8 {
        match self {
            Nic::Ours => 78,
            Nic::Qemu => 79,
        }
    }
    pub fn host_ip(self) -> String {
        format!("10.{}.0.1", self.subnet())
    }
    pub fn guest_ip(self) -> String {
        format!("10.{}.0.2", self.subnet())
    }
    pub fn mac(self) -> String {
        format!("52:54:00:{}:00:02", self.subnet())
    }
}

/// The guest kernel and its virtio_net modules (tools/scripts/guest-kernel.sh, cached after the
/// first run).
pub struct NetKernel {
    pub kernel: PathBuf,
    pub modules_dir: PathBuf,
}

pub fn net_guest_kernel() -> NetKernel {
    let script = crate::vsock_vm::repo_root().join("tools/scripts/guest-kernel.sh");
    let out = Command::new(&script)
        .args(["--quiet", "--modules", "virtio_mmio virtio_net"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("guest-kernel.sh printed no {name}=:\n{stdout}"))
    };
    NetKernel {
        kernel: var("KERNEL"),
        modules_dir: var("MODULES_DIR"),
    }
}

/// The guest's /init.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "CROSD-NET: $*" > /dev/console; }
for m in $(cat /lib/modules/crosd/load-order); do
    insmod /lib/modules/crosd/$m || say "error insmod $m"
done
blob_kib=1024
nics=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        crosd.blob_kib=*) blob_kib=${arg#crosd.blob_kib=} ;;
        crosd.nic=*) nics="$nics ${arg#crosd.nic=}" ;;
    esac
done
ip link set lo up
for nic in $nics; do
    mac=${nic%%,*}; rest=${nic#*,}; addr=${rest%%,*}; peer=${rest#*,}
    dev=""
    for d in /sys/class/net/*; do
        [ "$(cat $d/address)" = "$mac" ] && dev=${d##*/}
    done
    [ -n "$dev" ] || { say "error no interface with MAC $mac"; continue; }
    ip addr add $addr dev $dev && ip link set $dev up || say "error configuring $dev"
    if ping -c 2 -W 20 $peer > /tmp/ping.$dev 2>&1; then
        say "ping $peer ok from $dev"
    else
        say "error ping $peer from $dev: $(tail -n 2 /tmp/ping.$dev | tr '\n' ' ')"
    fi
done
dd if=/dev/urandom of=/tmp/blob bs=1024 count=$blob_kib 2>/dev/null
say "blob $(sha256sum /tmp/blob | cut -d' ' -f1)"
( while true; do s=$(nc -l -p 5001 | sha256sum | cut -d' ' -f1); say "sink $s"; done ) &
( while true; do nc -l -p 5002 < /tmp/blob > /dev/null; done ) &
( while true; do nc -l -p 5003 > /dev/null; done ) &
sleep 1
say "ready"
while true; do sleep 3600; done
"#;

/// What to start.
pub struct NetVmOptions<'a> {
    pub kernel: &'a NetKernel,
    pub dir: &'a Path,
    pub nics: &'a [Nic],
    /// Size of the guest's /tmp/blob (served on [`SOURCE_PORT`]).
    pub blob_kib: u32,
    pub mem_mib: u32,
}

/// A running VM and its backend; both are killed, and the taps deleted, when it drops.
pub struct NetVm {
    qemu: Child,
    backend: Option<Child>,
    pub console_log: PathBuf,
    pub backend_log: PathBuf,
    taps: Vec<&'static str>,
}

fn check_tap_absent(name: &str) {
    let out = Command::new("ip")
        .args(["link", "show", name])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "interface {name} already exists: run network tests in a namespace of their own"
    );
}

impl NetVm {
    /// Creates the taps (host side up and addressed), starts our backend for [`Nic::Ours`],
    /// builds the initramfs and boots QEMU; returns once the guest printed `ready`.
    pub fn start(opts: NetVmOptions<'_>) -> Result<NetVm, String> {
        let mut vm = NetVm {
            qemu: Command::new("true").spawn().map_err(|e| e.to_string())?,
            backend: None,
            console_log: opts.dir.join("console.log"),
            backend_log: opts.dir.join("net-backend.log"),
            taps: Vec::new(),
        };
        let _ = vm.qemu.wait();
        for &nic in opts.nics {
            check_tap_absent(nic.tap());
            netns::ip(&["tuntap", "add", "dev", nic.tap(), "mode", "tap"]);
            vm.taps.push(nic.tap());
            netns::ip(&[
                "addr",
                "add",
                &format!("{}/24", nic.host_ip()),
                "dev",
                nic.tap(),
            ]);
            netns::ip(&["link", "set", nic.tap(), "up"]);
        }
        let initrd = opts.dir.join("initrd.cpio");
        let mut fs = Initramfs::with_base_layout().map_err(|e| e.to_string())?;
        fs.add_file_from("bin/busybox", 0o755, Path::new("/bin/busybox"))
            .map_err(|e| format!("adding /bin/busybox (apt-get install busybox-static): {e}"))?;
        fs.add_file("init", 0o755, INIT.as_bytes().to_vec())
            .map_err(|e| e.to_string())?;
        fs.add_dir_files_from("lib/modules/crosd", &opts.kernel.modules_dir)
            .map_err(|e| e.to_string())?;
        fs.write_to(&initrd).map_err(|e| e.to_string())?;

        let mut cmdline = format!(
            "console=ttyS0 panic=-1 loglevel=4 crosd.blob_kib={}",
            opts.blob_kib
        );
        // Under TCG on a loaded host the guest cannot calibrate its TSC and stops early in
        // boot; the qemu backend measures the host's TSC once for it (see its tcg_tsc_khz).
        if let Some(khz) = cros_hypervisor::QemuBackend::new("crosvm").tcg_tsc_khz {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        let mut args: Vec<String> = vec![
            "-M".into(),
            "microvm,accel=tcg,memory-backend=mem".into(),
            "-global".into(),
            "virtio-mmio.force-legacy=false".into(),
            "-object".into(),
            format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                opts.mem_mib
            ),
            "-m".into(),
            format!("{}M", opts.mem_mib),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            "2".into(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", vm.console_log.display()),
            "-kernel".into(),
            opts.kernel.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
        ];
        for &nic in opts.nics {
            cmdline.push_str(&format!(
                " crosd.nic={},{}/24,{}",
                nic.mac(),
                nic.guest_ip(),
                nic.host_ip()
            ));
            match nic {
                Nic::Ours => {
                    let socket = opts.dir.join("net.sock");
                    vm.backend = Some(start_backend(&socket, nic.tap(), &vm.backend_log)?);
                    args.extend([
                        "-chardev".into(),
                        format!("socket,id=n0,path={}", socket.display()),
                        "-netdev".into(),
                        "vhost-user,id=net0,chardev=n0".into(),
                        "-device".into(),
                        format!("virtio-net-device,netdev=net0,mac={}", nic.mac()),
                    ]);
                }
                Nic::Qemu => args.extend([
                    "-netdev".into(),
                    format!(
                        "tap,id=net1,ifname={},script=no,downscript=no,vhost=off",
                        nic.tap()
                    ),
                    "-device".into(),
                    format!("virtio-net-device,netdev=net1,mac={}", nic.mac()),
                ]),
            }
        }
        args.extend(["-append".into(), cmdline]);
        let qemu_log =
            std::fs::File::create(opts.dir.join("qemu.log")).map_err(|e| e.to_string())?;
        vm.qemu = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(qemu_log.try_clone().map_err(|e| e.to_string())?)
            .stderr(qemu_log)
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        vm.wait_console("ready", Duration::from_secs(300))?;
        Ok(vm)
    }

    /// The console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console_log).unwrap_or_default()).into_owned()
    }

    /// The guest's `CROSD-NET: <text>...` lines so far.
    pub fn lines(&self, text: &str) -> Vec<String> {
        let want = format!("{MARKER}: {text}");
        self.console()
            .lines()
            .filter_map(|l| l.find(&want).map(|i| l[i + MARKER.len() + 2..].to_string()))
            .collect()
    }

    /// Waits for the `n`th (from 1) line starting with `text`; fails early on an error line or
    /// when QEMU or the backend exits.
    pub fn wait_nth(&mut self, text: &str, n: usize, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines(text).get(n - 1) {
                return Ok(line.clone());
            }
            if let Some(e) = self.lines("error").first() {
                return Err(format!("the guest reported: {e}\n{}", self.logs()));
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                return Err(format!(
                    "QEMU exited ({status}) waiting for {text:?}\n{}",
                    self.logs()
                ));
            }
            if let Some(b) = self.backend.as_mut()
                && let Ok(Some(status)) = b.try_wait()
            {
                return Err(format!(
                    "the vhost-user-net backend exited ({status}) waiting for {text:?}\n{}",
                    self.logs()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("no {text:?} within {timeout:?}\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_console(&mut self, text: &str, timeout: Duration) -> Result<String, String> {
        self.wait_nth(text, 1, timeout)
    }

    /// The console's and the backend log's last lines, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let backend = std::fs::read_to_string(&self.backend_log).unwrap_or_default();
        format!(
            "console:\n{}\nbackend log:\n{}",
            tail(self.console()),
            tail(backend)
        )
    }

    /// Whether our backend is still running.
    pub fn backend_running(&mut self) -> bool {
        self.backend
            .as_mut()
            .is_some_and(|b| matches!(b.try_wait(), Ok(None)))
    }
}

impl Drop for NetVm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if let Some(mut b) = self.backend.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        for tap in &self.taps {
            let _ = Command::new("ip").args(["link", "del", tap]).status();
        }
    }
}

/// Starts `crosvm vhost-user-net` on `socket` and `tap`; returns once it listens.
fn start_backend(socket: &Path, tap: &str, log: &Path) -> Result<Child, String> {
    let log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = Command::new(crate::bin("crosvm"))
        .args(["vhost-user-net", "--socket"])
        .arg(socket)
        .args(["--tap", tap])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start crosvm vhost-user-net: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if !line.starts_with("listening on") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "crosvm vhost-user-net did not start: {:?}; log:\n{}",
            line,
            std::fs::read_to_string(log).unwrap_or_default()
        ));
    }
    Ok(child)
}

/// Connects to the guest's `port` through `nic`.
pub fn connect(nic: Nic, port: u16) -> Result<TcpStream, String> {
    let addr = format!("{}:{port}", nic.guest_ip());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(&addr) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(120)))
                    .and_then(|_| s.set_write_timeout(Some(Duration::from_secs(120))))
                    .map_err(|e| e.to_string())?;
                return Ok(s);
            }
            // The guest's nc loop may be between two connections.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("connect {addr}: {e}")),
        }
    }
}

/// Host → guest: sends `data` to `port` and waits until the guest closed its end (it has
/// read everything). Returns the time from connect to that close.
pub fn send_all(nic: Nic, port: u16, data: &[u8]) -> Result<Duration, String> {
    let mut s = connect(nic, port)?;
    let t0 = Instant::now();
    s.write_all(data).map_err(|e| format!("sending: {e}"))?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .map_err(|e| format!("waiting for the guest to close: {e}"))?;
    Ok(t0.elapsed())
}

/// Guest → host: everything the guest's source sends until it closes, and how long it took.
pub fn receive_all(nic: Nic) -> Result<(Vec<u8>, Duration), String> {
    let mut s = connect(nic, SOURCE_PORT)?;
    let t0 = Instant::now();
    let mut data = Vec::new();
    s.read_to_end(&mut data)
        .map_err(|e| format!("receiving: {e}"))?;
    Ok((data, t0.elapsed()))
}

/// Hex SHA-256 of `data` (the host's sha256sum).
pub fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&owned));
    let out = child.wait_with_output().expect("sha256sum output");
    writer.join().unwrap().expect("writing to sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
