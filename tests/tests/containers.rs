//! End to end: containers in termina under QEMU/TCG — real LXD in the VM driven by tremplin,
//! images from a loopback simplestreams server (`crosimg serve`) through crosd's image proxy and
//! from a rootfs + metadata pair streamed in over vsock, garcon in each container, and
//! `vsh --target_container`, and a container's ports forwarded to the host's loopback.
//!
//! One termina (with its LXD set-up) serves every step: booting and setting up LXD under
//! emulation costs more than all the container steps together. The steps run in order in one
//! test and each says what it checks when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use cros_e2e::containers::{ImageServer, busybox_images, stdout, vsh_in};
use cros_e2e::crosd::{Crosd, text, vmc_err, vmc_ok, wait_for};
use cros_e2e::{bin, bin_dir};

/// A newly built busybox image (its own fingerprint: LXD has not cached it) whose rootfs then
/// had one byte changed, so its sha256 no longer matches images.json.
fn corrupt_image(dst: &Path) {
    let _ = std::fs::remove_dir_all(dst);
    let o = Command::new(bin("crosimg"))
        .args([
            "build-container",
            "busybox",
            "--serial",
            "20200101_0000",
            "--out",
        ])
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "crosimg build-container busybox: {}",
        text(&o)
    );
    let rootfs = find_file(dst, &["rootfs.squashfs", "root.tar.xz"]).expect("an image rootfs");
    let mut bytes = std::fs::read(&rootfs).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&rootfs, bytes).unwrap();
}

fn find_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, names) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| names.iter().any(|w| n == *w)) {
            return Some(p);
        }
    }
    None
}

/// `lxc list` inside termina, as a user of termina would run it: name,state lines.
fn lxc_list(crosd: &Crosd) -> String {
    let o = crosd.vsh(
        &[
            "env",
            "LXD_DIR=/mnt/stateful/lxd",
            "lxc",
            "list",
            "--format",
            "csv",
            "-c",
            "ns",
        ],
        b"",
    );
    assert!(o.status.success(), "lxc list in termina: {}", text(&o));
    stdout(&o)
}

/// `vmc ARGS` must fail with one line naming `needle`, and leave no container behind.
fn create_fails(crosd: &Crosd, args: &[&str], needle: &str) {
    let o = crosd.run("vmc", args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "vmc {args:?} must fail: {}", text(&o));
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains(needle),
        "vmc {args:?}: wanted {needle:?} in the error: {}",
        text(&o)
    );
    let listed = lxc_list(crosd);
    assert!(
        !listed.lines().any(|l| l.starts_with(args[2])),
        "a failed create left {} behind:\n{listed}",
        args[2]
    );
}

/// A host loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `vmc port-forward list termina`.
fn forwards(crosd: &Crosd) -> String {
    stdout(&vmc_ok(crosd, &["port-forward", "list", "termina"]))
}

/// The `vmc port-forward list` line of container port `port`, if listed.
fn forward_line(list: &str, port: u16) -> Option<String> {
    list.lines()
        .find(|l| l.split_whitespace().nth(2) == Some(&port.to_string()))
        .map(str::to_string)
}

/// Sends a line to 127.0.0.1:`port` and reads it back (an echo server in the container).
fn echo_through(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    s.write_all(b"ping\n")?;
    let mut back = [0u8; 5];
    s.read_exact(&mut back)?;
    Ok(String::from_utf8_lossy(&back).into_owned())
}

/// Starts busybox's echo server (`nc -ll … -e cat`, one child a connection) on each port in
/// container c1, detached from the shell.
fn start_echo(crosd: &Crosd, ports: &[u16]) {
    let script: String = ports
        .iter()
        .map(|p| format!("setsid nc -ll -p {p} -e cat </dev/null >/dev/null 2>&1 & "))
        .collect();
    let o = vsh_in(crosd, "c1", Some("root"), &["sh", "-c", &script]);
    assert!(o.status.success(), "echo servers in c1: {}", text(&o));
}

fn stop_echo(crosd: &Crosd) {
    let o = vsh_in(crosd, "c1", Some("root"), &["killall", "nc"]);
    assert!(o.status.success(), "killall nc in c1: {}", text(&o));
}

/// Step 2c: chunneld forwards what c1 listens on to the host's loopback, over vsock (no VM
/// network: crosd runs with --no-network), closes it when the server goes, reports a host
/// port someone holds instead of fighting for it, and takes forwards by hand.
fn port_forwarding(crosd: &Crosd) {
    let wait = std::time::Duration::from_secs(30);
    let auto = free_port();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().port();
    start_echo(crosd, &[auto, held]);
    let list = wait_for("c1's two servers in vmc port-forward list", wait, || {
        let list = forwards(crosd);
        (forward_line(&list, auto).is_some() && forward_line(&list, held).is_some()).then_some(list)
    });
    let line = forward_line(&list, auto).unwrap();
    assert!(
        line.contains("c1")
            && line.contains("automatic")
            && line.contains(&format!("listening on 127.0.0.1:{auto}")),
        "{list}"
    );
    let line = forward_line(&list, held).unwrap();
    assert!(
        line.contains("taken: 127.0.0.1:") && line.contains("in use"),
        "a held host port is reported: {list}"
    );
    assert_eq!(holder.local_addr().unwrap().port(), held, "not fought over");
    assert_eq!(
        echo_through(auto).expect("a connection through the forward"),
        "ping\n"
    );

    // The servers stop: their forwards and host listeners go.
    stop_echo(crosd);
    wait_for("the forwards to go with the servers", wait, || {
        let list = forwards(crosd);
        (forward_line(&list, auto).is_none() && forward_line(&list, held).is_none()).then_some(())
    });
    wait_for("127.0.0.1:{auto} to refuse", wait, || {
        std::net::TcpStream::connect(("127.0.0.1", auto))
            .is_err()
            .then_some(())
    });

    // By hand: container port `auto` on another host port, kept whatever c1 listens on.
    let host = free_port();
    let o = vmc_ok(
        crosd,
        &[
            "port-forward",
            "add",
            "termina",
            "c1",
            &auto.to_string(),
            &host.to_string(),
        ],
    );
    assert!(
        stdout(&o).contains(&format!("listening on 127.0.0.1:{host}")),
        "{}",
        text(&o)
    );
    start_echo(crosd, &[auto]);
    let line = forward_line(&forwards(crosd), auto).expect("the manual forward is listed");
    assert!(line.contains("manual"), "{line}");
    // garcon's scan may not have seen the server yet; garcon dials it per connection.
    let echoed = wait_for("an echo through the manual forward", wait, || {
        echo_through(host).ok()
    });
    assert_eq!(echoed, "ping\n");
    vmc_ok(
        crosd,
        &["port-forward", "remove", "termina", "c1", &auto.to_string()],
    );
    wait_for("127.0.0.1:{host} to refuse after remove", wait, || {
        std::net::TcpStream::connect(("127.0.0.1", host))
            .is_err()
            .then_some(())
    });
    stop_echo(crosd);

    // Clear errors, one each.
    let port = auto.to_string();
    vmc_err(
        crosd,
        &[
            "port-forward",
            "add",
            "termina",
            "c1",
            &port,
            &held.to_string(),
        ],
        &format!("127.0.0.1:{held}"),
    );
    vmc_err(
        crosd,
        &["port-forward", "add", "termina", "nosuch", &port],
        "\"nosuch\" of VM \"termina\" is not running",
    );
    vmc_err(
        crosd,
        &["port-forward", "add", "nosuchvm", "c1", &port],
        "no VM named \"nosuchvm\"",
    );
    vmc_err(
        crosd,
        &["port-forward", "add", "termina", "c1", "0"],
        "0 is not in 1..=65535",
    );
    vmc_err(
        crosd,
        &["port-forward", "remove", "termina", "c1", &port],
        "is not forwarded",
    );
    drop(holder);
}

#[test]
fn containers_in_termina() {
    let images = busybox_images();
    let server = ImageServer::start(images);
    let crosd = Crosd::start();
    let o = crosd.run(
        "vmc",
        &[
            "start",
            "--no-shell",
            "--mem",
            "2048",
            "--timeout",
            "300",
            "termina",
        ],
    );
    assert!(
        o.status.success(),
        "vmc start: {}\ncrosd log:\n{}",
        text(&o),
        crosd.log()
    );
    assert!(text(&o).contains("LXD is ready"), "{}", text(&o));

    // 1. From the loopback simplestreams server, through the image proxy.
    vmc_ok(
        &crosd,
        &[
            "container",
            "--no-shell",
            "--user",
            "alice",
            "termina",
            "c1",
            &server.url,
            "busybox",
        ],
    );
    let o = vsh_in(&crosd, "c1", None, &["id", "-un"]);
    assert_eq!(stdout(&o).trim(), "alice", "the user set up: {}", text(&o));
    let o = vsh_in(&crosd, "c1", Some("root"), &["cat", "/proc/self/uid_map"]);
    let first: Vec<u64> = stdout(&o)
        .split_whitespace()
        .take(3)
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        first.len() == 3 && first[0] == 0 && first[1] != 0,
        "uid 0 in the container maps to an unprivileged uid: {}",
        text(&o)
    );
    assert!(
        lxc_list(&crosd).contains("c1,RUNNING"),
        "{}",
        lxc_list(&crosd)
    );

    // 2. Stop and start keep what the container wrote.
    let o = vsh_in(
        &crosd,
        "c1",
        Some("root"),
        &["sh", "-c", "echo kept > /root/keep"],
    );
    assert!(o.status.success(), "{}", text(&o));
    vmc_ok(&crosd, &["container-stop", "termina", "c1"]);
    assert!(
        lxc_list(&crosd).contains("c1,STOPPED"),
        "{}",
        lxc_list(&crosd)
    );
    vmc_ok(
        &crosd,
        &[
            "container",
            "--no-shell",
            "--user",
            "alice",
            "termina",
            "c1",
        ],
    );
    let o = vsh_in(&crosd, "c1", Some("root"), &["cat", "/root/keep"]);
    assert_eq!(stdout(&o).trim(), "kept", "{}", text(&o));

    // 2b. A shared folder appears in the container at /mnt/chromeos/<name>, read-only unless
    // shared writable.
    let shared = crosd.dir.path().join("hostdocs");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("note.txt"), "from the host\n").unwrap();
    vmc_ok(&crosd, &["share", "termina", shared.to_str().unwrap()]);
    let o = vsh_in(
        &crosd,
        "c1",
        None,
        &["cat", "/mnt/chromeos/hostdocs/note.txt"],
    );
    assert_eq!(
        stdout(&o),
        "from the host\n",
        "a share in the container: {}",
        text(&o)
    );
    let o = vsh_in(
        &crosd,
        "c1",
        Some("root"),
        &["sh", "-c", "echo x > /mnt/chromeos/hostdocs/new"],
    );
    assert!(
        !o.status.success(),
        "a read-only share refuses writes: {}",
        text(&o)
    );
    assert!(!shared.join("new").exists());

    // 2c. Port forwarding.
    port_forwarding(&crosd);

    // 3. From a rootfs + metadata pair named on the host, streamed in over vsock.
    let metadata = find_file(images, &["lxd.tar.xz"]).expect("metadata tarball");
    let rootfs = find_file(images, &["rootfs.squashfs", "root.tar.xz"]).expect("rootfs");
    vmc_ok(
        &crosd,
        &[
            "container",
            "--no-shell",
            "--user",
            "bob",
            "termina",
            "c2",
            rootfs.to_str().unwrap(),
            metadata.to_str().unwrap(),
        ],
    );
    let o = vsh_in(&crosd, "c2", None, &["id", "-un"]);
    assert_eq!(stdout(&o).trim(), "bob", "{}", text(&o));
    let o = crosd.run("vmc", &["container-list", "termina"]);
    assert!(
        stdout(&o).contains("c1") && stdout(&o).contains("c2"),
        "{}",
        text(&o)
    );

    // 4. Delete removes it.
    vmc_ok(&crosd, &["container-delete", "termina", "c2"]);
    assert!(!lxc_list(&crosd).contains("c2,"), "{}", lxc_list(&crosd));

    // 5. Failures: one clear line each, nothing left behind.
    create_fails(
        &crosd,
        &[
            "container",
            "--no-shell",
            "termina",
            "c3",
            &server.url,
            "no-such-alias",
        ],
        "no-such-alias",
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    create_fails(
        &crosd,
        &[
            "container",
            "--no-shell",
            "termina",
            "c4",
            &closed_url,
            "busybox",
        ],
        "unreachable",
    );
    create_fails(
        &crosd,
        &["container", "--no-shell", "termina", "c5"],
        "images.lxd.canonical.com",
    );
    let corrupt_dir = bin_dir().join("e2e/images/busybox-corrupt");
    corrupt_image(&corrupt_dir);
    let corrupt = ImageServer::start(&corrupt_dir);
    create_fails(
        &crosd,
        &[
            "container",
            "--no-shell",
            "termina",
            "c6",
            &corrupt.url,
            "busybox",
        ],
        "c6",
    );

    // 6. The proxy reaches what a user named, and nothing else on the host.
    let secret = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let secret_port = secret.local_addr().unwrap().port();
    let index = format!("{}/streams/v1/index.json", server.url);
    let o = crosd.vsh(
        &[
            "env",
            "http_proxy=http://127.0.0.1:3128",
            "wget",
            "-q",
            "-O",
            "-",
            &index,
        ],
        b"",
    );
    assert!(
        stdout(&o).contains("index"),
        "a named server through the proxy: {}",
        text(&o)
    );
    let o = crosd.vsh(
        &[
            "env",
            "http_proxy=http://127.0.0.1:3128",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://127.0.0.1:{secret_port}/"),
        ],
        b"",
    );
    assert!(
        !o.status.success(),
        "an unnamed host port through the proxy: {}",
        text(&o)
    );
    drop(secret);

    // 7. A garcon with a wrong token is refused (garcon itself, run in the VM with a made-up
    // token file).
    let o = crosd.vsh(
        &[
            "sh",
            "-c",
            "echo 00000000-0000-4000-8000-000000000000 > /tmp/bad-token && \
             /opt/google/cros-containers/bin/garcon --token-file /tmp/bad-token \
             --lock-file /tmp/garcon.lock",
        ],
        b"",
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cicerone refused ContainerReady"),
        "{}",
        text(&o)
    );
    drop(corrupt);
    drop(server);
}
