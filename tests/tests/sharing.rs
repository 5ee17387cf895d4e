//! Folder sharing end to end (issue #12): a real crosd (as root), QEMU/TCG booting termina,
//! seneschal's `crosd-9s` serving the VM over hybrid vsock, maitred's Mount9P at /mnt/shared,
//! driven by the real `vmc` and `vsh`. Needs what termina.rs needs.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cros_e2e::bin;
use cros_e2e::crosd::{Crosd, start_termina, text, vmc_ok};

/// A root-owned VM's server runs as nobody: the shared folders are that user's here.
const SERVER_UID: u32 = 65534;

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

fn guest(crosd: &Crosd, script: &str) -> std::process::Output {
    crosd.vsh(&["sh", "-c", script], b"")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn folders_are_shared_confined_and_withdrawn() {
    let mut crosd = Crosd::start();
    let base = crosd.dir.path().join("host");
    let rw = base.join("rw");
    let ro = base.join("ro");
    for d in [&rw, &ro] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("hello"), b"hello from the host\n").unwrap();
    }
    let secret = base.join("secret");
    std::fs::write(&secret, b"host secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&secret, rw.join("abs")).unwrap();
    std::os::unix::fs::symlink("../secret", rw.join("rel")).unwrap();
    std::fs::hard_link(&secret, rw.join("hard")).unwrap();
    chown_tree(&rw, SERVER_UID);
    chown_tree(&ro, SERVER_UID);
    std::os::unix::fs::lchown(&secret, Some(0), Some(0)).unwrap();

    start_termina(&crosd, "vmc start failed");
    let o = vmc_ok(
        &crosd,
        &["share", "--writable", "termina", rw.to_str().unwrap()],
    );
    assert!(stdout(&o).contains("/mnt/shared/rw"), "{}", text(&o));
    let o = vmc_ok(&crosd, &["share", "termina", ro.to_str().unwrap()]);
    assert!(stdout(&o).contains("/mnt/shared/ro"), "{}", text(&o));
    let o = vmc_ok(&crosd, &["list"]);
    assert!(
        stdout(&o).contains("rw") && stdout(&o).contains(ro.to_str().unwrap()),
        "{}",
        text(&o)
    );

    // The server runs as the sharing user, never root.
    let o = vmc_ok(&crosd, &["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pid = listed["shares"][0]["pid"].as_u64().expect("a server pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line,
        format!("Uid:\t{SERVER_UID}\t{SERVER_UID}\t{SERVER_UID}\t{SERVER_UID}")
    );

    // Read and write from the VM.
    let o = guest(
        &crosd,
        "cat /mnt/shared/rw/hello && echo from-the-guest > /mnt/shared/rw/new",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o), "hello from the host\n");
    assert_eq!(std::fs::read(rw.join("new")).unwrap(), b"from-the-guest\n");
    // The read-only share refuses writes.
    let o = guest(&crosd, "echo x > /mnt/shared/ro/new");
    assert!(!o.status.success(), "{}", text(&o));
    let o = guest(&crosd, "rm /mnt/shared/ro/hello");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(ro.join("hello").exists() && !ro.join("new").exists());
    // Escapes: links pointing out resolve in the guest's own tree; a hard link to an outside
    // file keeps that file's owner and mode.
    for path in ["abs", "rel", "hard"] {
        let o = guest(&crosd, &format!("cat /mnt/shared/rw/{path}"));
        assert!(!stdout(&o).contains("host secret"), "{path}: {}", text(&o));
    }
    let o = guest(&crosd, "ls -a /mnt/shared/");
    assert!(!stdout(&o).contains("proc"), "{}", text(&o));

    // Unsharing while a process holds a file open: its next read is an I/O error, not a hang.
    let mut holder = Command::new(bin("vsh"))
        .args(["--vm_name", "termina", "--", "sh", "-c"])
        .arg(
            "exec 3</mnt/shared/rw/hello; echo opened; \
             while [ ! -e /tmp/go ]; do sleep 0.2; done; cat <&3; echo rc=$?",
        )
        .env("CROSD_SOCKET", &crosd.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let first = lines.next();
    if !matches!(&first, Some(Ok(l)) if l == "opened") {
        let out = holder.wait_with_output().unwrap();
        panic!("{first:?}: {}", text(&out));
    }
    vmc_ok(&crosd, &["unshare", "termina", rw.to_str().unwrap()]);
    let o = guest(&crosd, "touch /tmp/go");
    assert!(o.status.success(), "{}", text(&o));
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let out = holder.wait_with_output().unwrap();
    assert!(
        rest.iter().any(|l| l == "rc=1"),
        "{rest:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = guest(&crosd, "ls /mnt/shared/");
    assert_eq!(stdout(&o).trim(), "ro", "{}", text(&o));

    // Shares come back at the next boot.
    vmc_ok(&crosd, &["stop", "termina"]);
    std::thread::sleep(Duration::from_millis(100));
    start_termina(&crosd, "second start failed");
    let o = guest(&crosd, "cat /mnt/shared/ro/hello");
    assert_eq!(stdout(&o), "hello from the host\n", "{}", text(&o));
    crosd.terminate();
    assert_eq!(
        std::fs::read(rw.join("hello")).unwrap(),
        b"hello from the host\n"
    );
}
