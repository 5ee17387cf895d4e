//! End-to-end ownership and client file access: a real second user (made with `useradd` for
//! this test and removed after) in crosd's `--socket-group`, driving the real `vmc` and
//! `crosmsg` against a real crosd run by root. No VM is booted: disks, exports and imports
//! need none.
//!
//! Checks that the user sees only its own disks, cannot destroy or export root's, that the
//! files it names are opened with its own access (crosd writes nothing the user could not),
//! that an export never replaces a file without `--force`, and that a device or a FIFO as the
//! import stream or digest is refused at once instead of being read without bound or hanging.
//!
//! Build the binaries first: `cargo build -p cros-tools --bins`. Runs as root (it adds a user).

use cros_e2e::bin;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A hang guard for one command (a FIFO read would block forever), not a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// A throwaway user with its own group of the same name; removed on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn create() -> Self {
        let name = format!("crosdown{}", std::process::id());
        let status = Command::new("useradd")
            .args([
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name} failed");
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the new user exists");
        TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }

    /// `program args…` as this user (its own group only), against `socket`.
    fn command(&self, program: &str, socket: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin(program));
        cmd.arg("--socket")
            .arg(socket)
            .args(args)
            .env_remove("CROSD_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        // userdel removes the user's own group unless the system says otherwise.
        let _ = Command::new("groupdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status();
    }
}

/// crosd as root with `--socket-group`; SIGTERM on drop.
struct Crosd {
    child: Child,
    socket: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Crosd {
    fn start(dir: &Path, group: &str) -> Crosd {
        let run = dir.join("run");
        let socket = run.join("crosd.sock");
        let state = dir.join("state");
        let log = dir.join("crosd.log");
        let child = Command::new(bin("crosd"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--run-dir")
            .arg(&run)
            .args(["--socket-group", group])
            .env_remove("CROSD_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn crosd");
        let mut d = Crosd {
            child,
            socket,
            state,
            log,
        };
        let start = Instant::now();
        while UnixStream::connect(&d.socket).is_err() {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("crosd exited early ({status}): {}", d.log_text());
            }
            assert!(start.elapsed() < HANG_GUARD, "crosd never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `program args…` as root.
    fn root(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin(program));
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("CROSD_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

impl Drop for Crosd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end; a command still running after [`HANG_GUARD`] is killed and fails
/// the test as hung.
fn run(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what} hung: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(cmd: Command, what: &str) -> Output {
    let out = run(cmd, what);
    assert!(out.status.success(), "{what}: {}", text(&out));
    out
}

/// Fails, saying `needle` on stderr.
fn refused(cmd: Command, what: &str, needle: &str) -> Output {
    let out = run(cmd, what);
    assert!(!out.status.success(), "{what} must fail: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{what}: wanted {needle:?}: {}",
        text(&out)
    );
    out
}

/// `vmc list --json`'s disks as (name, owner_id), and its VMs' names.
fn listed(out: &Output) -> (Vec<(String, String)>, Vec<String>) {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("vmc list --json");
    let disks = v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["owner_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let vms = v["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap().to_string())
        .collect();
    (disks, vms)
}

#[test]
fn a_second_user_sees_only_its_own_and_crosd_writes_only_where_the_user_can() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test adds a user and switches to it: run it as root"
    );
    let user = TestUser::create();
    let dir = tempfile::tempdir().unwrap();
    // The user reaches the socket (0660, its group) through these directories.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Crosd::start(dir.path(), &user.name);
    std::fs::set_permissions(
        d.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // The user's own directory; root's files are elsewhere.
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    let as_user = |args: &[&str]| user.command("vmc", &d.socket, args);
    let uid = user.uid.to_string();

    ok(
        d.root("vmc", &["create", "--size", "1G", "rootvm"]),
        "root's create",
    );
    ok(
        as_user(&["create", "--size", "1G", "uservm"]),
        "the user's create",
    );

    // Each sees its own; root sees all, with owners.
    let (disks, vms) = listed(&ok(as_user(&["list", "--json"]), "the user's list"));
    assert_eq!(disks, [("uservm".to_string(), uid.clone())]);
    assert!(vms.is_empty());
    let (disks, _) = listed(&ok(d.root("vmc", &["list", "--json"]), "root's list"));
    assert_eq!(
        disks,
        [
            ("rootvm".to_string(), "0".to_string()),
            ("uservm".to_string(), uid.clone())
        ]
    );
    let root_disk = d.state.join("disks/rootvm.img");

    // Root's disk and VM answer as if they did not exist; its name is not free.
    refused(
        as_user(&["destroy", "-y", "rootvm"]),
        "destroying root's disk",
        "no disk image",
    );
    assert!(root_disk.exists());
    refused(
        as_user(&["stop", "rootvm"]),
        "stopping root's VM",
        "no VM named \"rootvm\"",
    );
    refused(
        as_user(&["create", "--size", "1G", "rootvm"]),
        "taking root's name",
        "another user's VM",
    );
    let stolen = home.join("root.zst");
    refused(
        as_user(&["export", "rootvm", stolen.to_str().unwrap()]),
        "exporting root's disk",
        "no disk image",
    );
    assert!(!stolen.exists() && !home.join("root.zst.partial").exists());

    // Its own export: the file is the user's, created by vmc with the user's access.
    let export = home.join("user.zst");
    let digest = home.join("user.zst.sha256");
    let (export_s, digest_s) = (export.to_str().unwrap(), digest.to_str().unwrap());
    ok(
        as_user(&["export", "--digest", digest_s, "uservm", export_s]),
        "the user's export",
    );
    for f in [&export, &digest] {
        let meta = std::fs::metadata(f).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (user.uid, user.gid),
            "{}",
            f.display()
        );
    }
    assert!(
        std::fs::read_to_string(&digest)
            .unwrap()
            .ends_with("  user.zst\n")
    );
    assert!(!home.join("user.zst.partial").exists());

    // An existing file is not replaced without --force; with it, it is.
    let before = std::fs::read(&export).unwrap();
    refused(
        as_user(&["export", "uservm", export_s]),
        "exporting over a file",
        "--force",
    );
    assert_eq!(std::fs::read(&export).unwrap(), before);
    ok(
        as_user(&["export", "--force", "uservm", export_s]),
        "a forced export",
    );

    // Where the user cannot write, nothing is written: the open fails in vmc, as the user.
    for target in ["/root/crosd-ownership.zst", "/etc/crosd-ownership.zst"] {
        refused(
            as_user(&["export", "uservm", target]),
            "exporting where the user cannot write",
            "Permission denied",
        );
        assert!(!Path::new(target).exists());
        assert!(!Path::new(&format!("{target}.partial")).exists());
    }
    // Nor by naming the path to crosd directly: crosd opens no user's path.
    let path_export = r#"{"ExportDiskImage":{"name":"uservm","path":"/etc/crosd-ownership.zst","digest_path":null}}"#;
    let out = refused(
        user.command("crosmsg", &d.socket, &["send", "concierge", path_export]),
        "a path-based export by the user",
        "passed with the request",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vmc"),
        "{}",
        text(&out)
    );
    assert!(!Path::new("/etc/crosd-ownership.zst").exists());
    assert!(!Path::new("/etc/crosd-ownership.zst.partial").exists());

    // Bad import input is refused at once: a device as the digest (never read without
    // bound), a FIFO as the digest or the stream (never waited on). The disk is untouched.
    let user_disk = d.state.join("disks/uservm.img");
    let disk_before = std::fs::metadata(&user_disk).unwrap().mtime_nsec();
    refused(
        as_user(&["import", "--digest", "/dev/zero", "uservm", export_s]),
        "/dev/zero as the digest",
        "only a regular file",
    );
    let fifo = home.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    std::os::unix::fs::chown(&fifo, Some(user.uid), Some(user.gid)).unwrap();
    let fifo_s = fifo.to_str().unwrap();
    refused(
        as_user(&["import", "--digest", fifo_s, "uservm", export_s]),
        "a FIFO as the digest",
        "a FIFO",
    );
    refused(
        as_user(&["import", "uservm", fifo_s]),
        "a FIFO as the stream",
        "a FIFO",
    );
    // Root naming paths directly gets the same checks, and a FIFO does not hang crosd's open.
    let path_import = format!(
        r#"{{"ImportDiskImage":{{"name":"rootvm","path":"{fifo_s}","digest_path":null}}}}"#
    );
    refused(
        d.root("crosmsg", &["send", "concierge", &path_import]),
        "root's path-based import of a FIFO",
        "a FIFO",
    );
    let path_import = format!(
        r#"{{"ImportDiskImage":{{"name":"rootvm","path":"{export_s}","digest_path":"/dev/zero"}}}}"#
    );
    refused(
        d.root("crosmsg", &["send", "concierge", &path_import]),
        "root's path-based import with /dev/zero as the digest",
        "a device",
    );
    assert_eq!(
        std::fs::metadata(&user_disk).unwrap().mtime_nsec(),
        disk_before
    );

    // The user's own export goes back in, then its disk can go.
    ok(
        as_user(&["import", "--digest", digest_s, "uservm", export_s]),
        "the user's import",
    );
    ok(as_user(&["destroy", "-y", "uservm"]), "the user's destroy");
    assert!(!user_disk.exists() && !d.state.join("disks/uservm.owner").exists());
    let (disks, _) = listed(&ok(d.root("vmc", &["list", "--json"]), "root's list"));
    assert_eq!(disks, [("rootvm".to_string(), "0".to_string())]);
    assert!(
        !d.log_text().contains("panicked"),
        "crosd log: {}",
        d.log_text()
    );
}
