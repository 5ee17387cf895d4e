//! A real crosd on a private state and run directory, with the termina component built by
//! `crosimg build-termina` from the workspace's guest binaries (shared by the test binaries,
//! rebuilt when they change), driven by the real `vmc`, `vsh` and `crosmsg` binaries.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::vsock_vm::guest_bin;
use crate::{bin, bin_dir};

/// The component version the tests build and install.
pub const VERSION: &str = "e2e";

/// The termina component under target/<profile>/e2e/components, built by `crosimg
/// build-termina` when missing, failing verification, or older than crosimg or a guest program;
/// otherwise the one an earlier test binary built. Its Debian userland comes from crosimg's
/// cache (~/.cache/crosd/rootfs, or $CROSD_CACHE), built once by mmdebstrap and shared by
/// every build, so a rebuild here costs an unpack and mkfs, not a Debian install. Test binaries
/// that run side by side take turns through a lock file.
pub fn termina_component() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = bin_dir().join("e2e/components");
        let dir = out.join("cros-termina").join(VERSION);
        let guest_dir = guest_bin("maitred")
            .parent()
            .expect("guest bin dir")
            .to_path_buf();
        std::fs::create_dir_all(&out).unwrap();
        let lock = std::fs::File::create(out.join(".build.lock")).unwrap();
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the component build");
        let inputs: Vec<PathBuf> = std::iter::once(bin("crosimg"))
            .chain(
                ["maitred", "vshd", "vm_syslog", "tremplin"]
                    .iter()
                    .map(|p| guest_dir.join(p)),
            )
            .filter(|p| p.exists())
            .collect();
        if component_is_current(&dir, &inputs) {
            return dir;
        }
        let status = Command::new(bin("crosimg"))
            .args(["build-termina", "--force", "--version", VERSION, "--out"])
            .arg(&out)
            .arg("--guest-bin-dir")
            .arg(&guest_dir)
            .status()
            .expect("run crosimg");
        assert!(status.success(), "crosimg build-termina failed");
        dir
    })
}

/// Whether the component at `dir` verifies and was built after every file in `inputs` changed.
fn component_is_current(dir: &Path, inputs: &[PathBuf]) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = mtime(&dir.join("manifest.json")) else {
        return false;
    };
    if inputs.iter().any(|p| mtime(p).is_none_or(|t| t > built)) {
        return false;
    }
    Command::new(bin("crosimg"))
        .arg("verify")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fresh directory under target/<profile>/e2e/tmp for one crosd.
fn scratch_dir() -> tempfile::TempDir {
    let scratch = bin_dir().join("e2e/tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    tempfile::tempdir_in(scratch).unwrap()
}

/// A running crosd; SIGTERM on drop, which stops its VMs.
pub struct Crosd {
    hypervisor: &'static str,
    /// `--trace` file, when recording.
    pub trace: Option<PathBuf>,
    child: Child,
    /// crosd's network arguments: `--no-network` unless a network test gave others.
    network: Vec<String>,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub run_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Crosd {
    /// Starts crosd (`--hypervisor qemu`) with the termina component installed and waits for
    /// its socket.
    pub fn start() -> Crosd {
        Self::start_on("qemu", |_| {})
    }

    /// [`Crosd::start`], recording every routed envelope to `self.trace` (`crosd --trace`).
    pub fn start_traced() -> Crosd {
        Self::start_with("qemu", |_| {}, true)
    }

    /// Starts crosd with `--hypervisor HYPERVISOR`; `tamper` may change the installed copy of
    /// the component before crosd sees it.
    pub fn start_on(hypervisor: &'static str, tamper: impl FnOnce(&Path)) -> Crosd {
        Self::start_with(hypervisor, tamper, false)
    }

    /// [`Crosd::start`] with `network` (e.g. `--network --hosts-file PATH`) instead of
    /// `--no-network`. Only for a test that runs in a network namespace of its own: crosd
    /// makes its taps and rules in the namespace it runs in.
    pub fn start_networked(network: &[&str]) -> Crosd {
        Self::start_full(
            "qemu",
            |_| {},
            false,
            network.iter().map(|a| a.to_string()).collect(),
        )
    }

    /// Starts crosd (`--hypervisor qemu`) on the state directory `state` (made if missing),
    /// with nothing installed there: no component, so no VM boots, but disks can be created,
    /// exported and imported. For a state directory on a filesystem of the test's choosing.
    pub fn start_on_state(state: &Path) -> Crosd {
        let dir = scratch_dir();
        std::fs::create_dir_all(state).unwrap();
        let run_dir = dir.path().join("run");
        let socket = run_dir.join("crosd.sock");
        let network = no_network();
        let child = Self::spawn(dir.path(), state, "qemu", None, &network);
        Crosd {
            hypervisor: "qemu",
            trace: None,
            child,
            network,
            socket,
            state: state.to_path_buf(),
            run_dir,
            dir,
        }
    }

    fn start_with(hypervisor: &'static str, tamper: impl FnOnce(&Path), traced: bool) -> Crosd {
        Self::start_full(hypervisor, tamper, traced, no_network())
    }

    fn start_full(
        hypervisor: &'static str,
        tamper: impl FnOnce(&Path),
        traced: bool,
        network: Vec<String>,
    ) -> Crosd {
        let dir = scratch_dir();
        let state = dir.path().join("state");
        let installed = state.join("components/cros-termina").join(VERSION);
        std::fs::create_dir_all(&installed).unwrap();
        for e in std::fs::read_dir(termina_component()).unwrap() {
            let e = e.unwrap();
            // Hard links: cheap, and a tamperer replaces (not edits) the file it changes.
            std::fs::hard_link(e.path(), installed.join(e.file_name())).unwrap();
        }
        tamper(&installed);
        let run_dir = dir.path().join("run");
        let socket = run_dir.join("crosd.sock");
        let trace = traced.then(|| dir.path().join("crosd.trace"));
        let child = Self::spawn(dir.path(), &state, hypervisor, trace.as_deref(), &network);
        Crosd {
            hypervisor,
            trace,
            child,
            network,
            socket,
            state,
            run_dir,
            dir,
        }
    }

    /// Runs crosd on `state` and `dir`'s run directory (log appended to dir/crosd.log) and
    /// waits for its socket.
    fn spawn(
        dir: &Path,
        state: &Path,
        hypervisor: &str,
        trace: Option<&Path>,
        network: &[String],
    ) -> Child {
        let run_dir = dir.join("run");
        let socket = run_dir.join("crosd.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("crosd.log"))
            .unwrap();
        let child = Command::new(bin("crosd"))
            .arg("--state-dir")
            .arg(state)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--hypervisor", hypervisor])
            .args(network)
            .args(
                trace
                    .map(|t| [Path::new("--trace"), t])
                    .into_iter()
                    .flatten(),
            )
            .stderr(log)
            .spawn()
            .unwrap();
        let start = Instant::now();
        // The file exists from bind(); connects are refused until listen().
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "crosd never listened on its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// SIGKILL, as a crash: crosd gets no chance to clean up. Then a fresh crosd on the same
    /// state.
    pub fn kill9_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        // The dead daemon's socket file stays behind; wait for the new one.
        let _ = std::fs::remove_file(&self.socket);
        self.child = Self::spawn(
            self.dir.path(),
            &self.state,
            self.hypervisor,
            self.trace.as_deref(),
            &self.network,
        );
    }

    /// Runs a workspace binary against this crosd.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.run_with_stdin(program, args, b"")
    }

    /// Runs a workspace binary against this crosd with `stdin` piped in.
    pub fn run_with_stdin(&self, program: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(bin(program))
            .args(args)
            .env("CROSD_SOCKET", &self.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take();
        let stdin = stdin.to_vec();
        // Written from a thread so a large input cannot deadlock against unread output.
        let writer = std::thread::spawn(move || {
            if let Some(mut input) = input {
                let _ = input.write_all(&stdin);
            }
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        out
    }

    /// `vsh --vm_name termina -- CMD…` with `stdin` piped in.
    pub fn vsh(&self, cmd: &[&str], stdin: &[u8]) -> Output {
        let mut args = vec!["--vm_name", "termina", "--"];
        args.extend_from_slice(cmd);
        self.run_with_stdin("vsh", &args, stdin)
    }

    /// crosd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether crosd is still running (not exited, not a zombie).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// crosd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("crosd.log")).unwrap_or_default()
    }
}

impl Crosd {
    /// SIGTERM, and waits (at most 60 s: crosd stops its VMs in order first) for crosd to exit;
    /// its trace is complete afterwards. Its exit status, None when it had to be killed.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// A fresh crosd on the same state, after [`Crosd::terminate`].
    pub fn restart(&mut self) {
        self.child = Self::spawn(
            self.dir.path(),
            &self.state,
            self.hypervisor,
            self.trace.as_deref(),
            &self.network,
        );
    }
}

impl Drop for Crosd {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The e2e tests run as root: without `--no-network` their VMs would get taps and NAT rules in
/// the machine's own network namespace (the network tests make their own).
fn no_network() -> Vec<String> {
    vec!["--no-network".to_string()]
}

/// An output's status, stdout and stderr, for failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The pid of the first VM `vmc list --json` lists (its hypervisor process).
pub fn qemu_pid(crosd: &Crosd) -> u32 {
    let o = crosd.run("vmc", &["list", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let vms: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    vms["vms"][0]["pid"]
        .as_u64()
        .expect("a running VM has a pid") as u32
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state field says Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// `vmc list` says no VM runs.
pub fn assert_no_vms(crosd: &Crosd) {
    let o = crosd.run("vmc", &["list"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no VMs are running"),
        "{}",
        text(&o)
    );
}

/// `vmc start --no-shell --no-start-lxd termina`, which must succeed (`what` names the attempt
/// on failure). LXD stays off: these tests are about the VM, and LXD's start under emulation
/// would cost every one of them seconds (tests/tests/containers.rs starts it).
pub fn start_termina(crosd: &Crosd, what: &str) -> Output {
    let o = crosd.run(
        "vmc",
        &[
            "start",
            "--no-shell",
            "--no-start-lxd",
            "--timeout",
            "300",
            "termina",
        ],
    );
    assert!(
        o.status.success(),
        "{what}: {}\ncrosd log:\n{}",
        text(&o),
        crosd.log()
    );
    o
}

/// `vmc ARGS`, which must succeed.
pub fn vmc_ok(crosd: &Crosd, args: &[&str]) -> Output {
    let o = crosd.run("vmc", args);
    assert!(
        o.status.success(),
        "vmc {args:?}: {}\ncrosd log:\n{}",
        text(&o),
        crosd.log()
    );
    o
}

/// `vmc ARGS`, which must fail saying `needle`.
pub fn vmc_err(crosd: &Crosd, args: &[&str], needle: &str) {
    let o = crosd.run("vmc", args);
    assert!(!o.status.success(), "vmc {args:?} must fail: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(needle),
        "vmc {args:?} must say {needle:?}: {}",
        text(&o)
    );
}

/// `vmc ARGS` against `crosd` in the background, its stderr piped.
pub fn spawn_vmc(crosd: &Crosd, args: &[&str]) -> Child {
    Command::new(bin("vmc"))
        .args(args)
        .env("CROSD_SOCKET", &crosd.socket)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls `probe` until it yields; fails the test after `timeout`, naming what never happened
/// (a hang guard, not a timing assertion).
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
