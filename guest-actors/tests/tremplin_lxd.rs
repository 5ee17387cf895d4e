//! tremplin against real LXD (Debian's lxd 5.0.2) on this host, in a private network and mount
//! namespace with its own LXD_DIR on a loop-mounted btrfs image, so nothing touches the host's
//! network or LXD. The test plays the host: it listens where tremplin dials (events on 7778,
//! the image proxy on 3128, an upload port) as a hybrid vsock host lays them out, and sends
//! requests to tremplin's socket.
//!
//! Needs root, `lxd`, `unshare`, `nsenter`, `mkfs.btrfs`, `python3`, `tar` and `xz`:
//! `cargo test -p cros-guest --test tremplin_lxd -- --ignored --nocapture`.
//! The image proxy here is a stand-in for crosd's (CONNECT to the one allowed loopback port
//! only); everything else is real.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cros_messages::cicerone::ContainerStatus;
use cros_messages::framing::MAX_CONTROL_FRAME;
use cros_messages::framing::tokio_io::{handshake, read_message, write_message};
use cros_messages::tremplin::{TremplinEvent, TremplinReply, TremplinRequest};
use cros_messages::{Addr, Body, CrosError, Envelope};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

const UPLOAD_PORT: u32 = 5000;
const TOKEN: &str = "0e8b3f6c-1d2a-4c5b-9e7f-a1b2c3d4e5f6";

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes an executable script.
fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A busybox image in LXD's split format: (metadata tar.xz, rootfs tar.xz). `variant` goes
/// into /etc/variant, so two variants are two images.
fn build_image(dir: &Path, variant: &str) -> (PathBuf, PathBuf) {
    let root = dir.join("rootfs");
    for d in [
        "bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "run", "root", "home",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in ["sh", "cat", "id", "sleep", "ls", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    write_script(
        &root.join("sbin/init"),
        "#!/bin/sh\nexec /bin/sleep 1000000\n",
    );
    std::fs::write(root.join("etc/variant"), variant).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\naudio:x:29:\nsudo:x:27:\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: busybox test\n  os: busybox\n",
    )
    .unwrap();
    let d = dir.display();
    sh(&format!("tar -C {d} -cJf {d}/lxd.tar.xz metadata.yaml"));
    sh(&format!(
        "tar -C {d}/rootfs --numeric-owner --owner=0 --group=0 -cJf {d}/root.tar.xz ."
    ));
    (dir.join("lxd.tar.xz"), dir.join("root.tar.xz"))
}

/// A simplestreams tree serving the image as alias `busybox`.
fn build_simplestreams(tree: &Path, meta: &Path, rootfs: &Path) {
    std::fs::create_dir_all(tree.join("streams/v1")).unwrap();
    std::fs::create_dir_all(tree.join("images")).unwrap();
    std::fs::copy(meta, tree.join("images/lxd.tar.xz")).unwrap();
    std::fs::copy(rootfs, tree.join("images/root.tar.xz")).unwrap();
    let m = std::fs::read(meta).unwrap();
    let r = std::fs::read(rootfs).unwrap();
    let combined = hex(&Sha256::digest([m.as_slice(), r.as_slice()].concat()));
    let product = "busybox:test:amd64:default";
    let images = serde_json::json!({
        "content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
        "products": {product: {
            "aliases": "busybox/test,busybox", "arch": "amd64", "os": "busybox",
            "release": "test", "release_title": "test", "variant": "default",
            "versions": {"20260101_0000": {"items": {
                "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "images/lxd.tar.xz",
                    "sha256": hex(&Sha256::digest(&m)), "size": m.len(),
                    "combined_rootxz_sha256": combined, "combined_sha256": combined},
                "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/root.tar.xz",
                    "sha256": hex(&Sha256::digest(&r)), "size": r.len()}
            }}}
        },
        // The same files under another fingerprint with a wrong sha256: a corrupt image.
        "corrupt:test:amd64:default": {
            "aliases": "corrupt", "arch": "amd64", "os": "busybox",
            "release": "test", "release_title": "test", "variant": "default",
            "versions": {"20260101_0000": {"items": {
                "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "images/lxd.tar.xz",
                    "sha256": hex(&Sha256::digest(&m)), "size": m.len(),
                    "combined_rootxz_sha256": "ab".repeat(32), "combined_sha256": "ab".repeat(32)},
                "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/root.tar.xz",
                    "sha256": "00".repeat(32), "size": r.len()}
            }}}
        }}
    });
    let index = serde_json::json!({"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": "streams/v1/images.json",
        "format": "products:1.0", "products": [product, "corrupt:test:amd64:default"]}}});
    std::fs::write(tree.join("streams/v1/images.json"), images.to_string()).unwrap();
    std::fs::write(tree.join("streams/v1/index.json"), index.to_string()).unwrap();
}

/// The stand-in image proxy: CONNECT to `allowed` only, then bytes both ways.
async fn proxy(listener: UnixListener, allowed: String) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let allowed = allowed.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                if s.read(&mut b).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
            if !head.starts_with("CONNECT ") || target != allowed {
                let _ = s
                    .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    .await;
                return;
            }
            let Ok(mut up) = TcpStream::connect(&target).await else {
                let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                return;
            };
            let _ = s
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
        });
    }
}

/// cicerone's side of port 7778: every event tremplin sends.
async fn event_sink(listener: UnixListener, tx: mpsc::UnboundedSender<TremplinEvent>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if handshake(&mut s, &Addr::host("cicerone")).await.is_err() {
                return;
            }
            while let Ok(env) = read_message::<Envelope, _>(&mut s, MAX_CONTROL_FRAME).await {
                if let Body::TremplinEvent(ev) = env.body {
                    let _ = tx.send(ev);
                }
            }
        });
    }
}

/// The host's upload port: one tarball stream per connection, cut after `cut` bytes if given.
async fn uploads(listener: UnixListener, meta: Vec<u8>, rootfs: Vec<u8>, cut: Option<usize>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (meta, rootfs) = (meta.clone(), rootfs.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            out.extend((meta.len() as u64).to_le_bytes());
            out.extend(&meta);
            out.extend((rootfs.len() as u64).to_le_bytes());
            out.extend(&rootfs);
            out.truncate(cut.unwrap_or(out.len()));
            let _ = s.write_all(&out).await;
        });
    }
}

/// A helper process killed with the test, whichever way it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tremplin in its namespaces, which a `sleep` (the holder) keeps alive across restarts.
struct Sandbox {
    child: Child,
    dir: PathBuf,
    holder: u32,
}

impl Sandbox {
    /// Runs a command in tremplin's namespaces, with LXD_DIR set (for `lxc`).
    fn run(&self, cmd: &str) -> String {
        sh(&format!(
            "nsenter -t {} -m -n env LXD_DIR={}/st/lxd {cmd}",
            self.holder,
            self.dir.display()
        ))
    }

    fn net_ns(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/ns/net", self.holder)).ok()
    }

    /// Kills tremplin (not LXD, which it started) and starts a new one in the same namespaces.
    fn restart_tremplin(&mut self, tremplin: &str, args: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("tremplin.sock"));
        self.child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec nsenter -t {} -m -n {tremplin} {args}",
                self.holder
            ))
            .spawn()
            .unwrap();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // LXD stops its containers and dnsmasq; then whatever is left in the namespace (only
        // what this test started lives there) is killed by pid.
        let ns = self.net_ns();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "timeout 60 nsenter -t {} -m -n env LXD_DIR={}/st/lxd lxd shutdown",
                self.holder,
                self.dir.display()
            ))
            .status();
        if let Some(ns) = ns {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .ok()
                    .as_ref()
                    == Some(&ns)
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.child.wait();
    }
}

struct Client {
    stream: UnixStream,
    id: u64,
}

impl Client {
    async fn connect(path: &Path) -> Self {
        let mut stream = UnixStream::connect(path).await.unwrap();
        handshake(&mut stream, &Addr::host("cicerone"))
            .await
            .unwrap();
        Self { stream, id: 0 }
    }

    async fn call(&mut self, req: TremplinRequest) -> Result<TremplinReply, CrosError> {
        self.id += 1;
        let env = Envelope::new(
            self.id,
            0,
            Addr::host("cicerone"),
            Addr::in_vm("tremplin", "termina"),
            Body::Tremplin(req),
        );
        write_message(&mut self.stream, &env, MAX_CONTROL_FRAME)
            .await
            .unwrap();
        let reply: Envelope = read_message(&mut self.stream, MAX_CONTROL_FRAME)
            .await
            .unwrap();
        assert_eq!(reply.reply_to, Some(self.id));
        match reply.body {
            Body::TremplinReply(r) => Ok(r),
            Body::Error(e) => Err(e),
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

fn create(name: &str, server: &str, alias: &str, upload_port: u32) -> TremplinRequest {
    TremplinRequest::CreateContainer {
        name: name.into(),
        image_server: server.into(),
        image_alias: alias.into(),
        rootfs_path: String::new(),
        metadata_path: String::new(),
        upload_port,
    }
}

fn status_of(r: &TremplinReply) -> ContainerStatus {
    match r {
        TremplinReply::ContainerStatus { status, .. } => *status,
        other => panic!("not a status: {other:?}"),
    }
}

/// Waits for the create of `name` to end; returns its final event and the download percents.
async fn create_result(
    rx: &mut mpsc::UnboundedReceiver<TremplinEvent>,
    name: &str,
) -> (ContainerStatus, String, Vec<u8>) {
    let mut percents = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .expect("create did not end")
            .unwrap();
        if let TremplinEvent::UpdateCreateStatus {
            name: n,
            status,
            percent,
            failure_reason,
        } = ev
        {
            if n != name {
                continue;
            }
            match status {
                ContainerStatus::Downloading => percents.push(percent),
                s => return (s, failure_reason, percents),
            }
        }
    }
}

async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<TremplinEvent>,
    want: impl Fn(&TremplinEvent) -> bool,
) -> TremplinEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .expect("event did not come")
            .unwrap();
        if want(&ev) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and Debian's lxd; runs LXD in a private namespace"]
async fn tremplin_drives_real_lxd() {
    let tmp = tempfile::Builder::new()
        .prefix("tremplin-lxd-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.display().to_string();
    let host = dir.join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::create_dir_all(dir.join("st")).unwrap();
    std::fs::create_dir_all(dir.join("tools/bin")).unwrap();
    // A stand-in garcon in the tools image: proves tremplin ran it through LXD's exec API.
    write_script(
        &dir.join("tools/bin/garcon"),
        "#!/bin/sh\necho ran > /tmp/garcon-ran\nexec sleep 1000000\n",
    );
    sh(&format!(
        "truncate -s 3G {d}/stateful.img && mkfs.btrfs -q {d}/stateful.img"
    ));
    // Termina's subordinate ids: the raw.idmap ids are root's own, the rest starts above them.
    std::fs::write(
        dir.join("subid"),
        "root:1000:1\nroot:1001:1\nroot:655360:1\nroot:665357:1\nroot:1000000:1000000000\n",
    )
    .unwrap();
    let (meta, rootfs) = build_image(&dir.join("image"), "upload");
    // The server's image differs from the uploaded one, so LXD really downloads it.
    let (ss_meta, ss_rootfs) = build_image(&dir.join("ss-image"), "simplestreams");
    build_simplestreams(&dir.join("tree"), &ss_meta, &ss_rootfs);

    // The host side.
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(event_sink(
        UnixListener::bind(host.join("vsock.sock_7778")).unwrap(),
        ev_tx,
    ));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // A plain HTTP server that sends slowly enough for LXD to report download progress.
    let server_py = "import http.server, sys, time
class H(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, src, dst):
        while True:
            b = src.read(32768)
            if not b:
                break
            dst.write(b)
            dst.flush()
            time.sleep(0.1)
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
";
    let _http = KillOnDrop(
        Command::new("python3")
            .args(["-c", server_py, &port.to_string()])
            .current_dir(dir.join("tree"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::spawn(proxy(
        UnixListener::bind(host.join("vsock.sock_3128")).unwrap(),
        format!("127.0.0.1:{port}"),
    ));
    tokio::spawn(uploads(
        UnixListener::bind(host.join(format!("vsock.sock_{UPLOAD_PORT}"))).unwrap(),
        std::fs::read(&meta).unwrap(),
        std::fs::read(&rootfs).unwrap(),
        None,
    ));
    tokio::spawn(uploads(
        UnixListener::bind(host.join(format!("vsock.sock_{}", UPLOAD_PORT + 1))).unwrap(),
        std::fs::read(&meta).unwrap(),
        std::fs::read(&rootfs).unwrap(),
        Some(50_000),
    ));

    let tremplin = env!("CARGO_BIN_EXE_tremplin");
    let args = format!(
        "--listen unix:{d}/tremplin.sock --host-dir {d}/host --stateful {d}/st \
  --lxd-logfile {d}/lxd.log --tokens {d}/tokens --tools {d}/tools --vm termina"
    );
    let script = format!(
        "set -e
mount -o loop {d}/stateful.img {d}/st
mount --bind {d}/subid /etc/subuid
mount --bind {d}/subid /etc/subgid
ip link set lo up
mkdir -p {d}/sys && mount -t sysfs sysfs {d}/sys
mount --bind {d}/sys/class/net /sys/class/net
mount --bind {d}/sys/devices/virtual/net /sys/devices/virtual/net
sleep 1000000 &
echo $! > {d}/holder.pid
exec {tremplin} {args}"
    );
    let child = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    // TremplinReady comes first, before LXD is started.
    next_event(&mut events, |e| {
        matches!(e, TremplinEvent::TremplinReady {})
    })
    .await;
    let holder = std::fs::read_to_string(dir.join("holder.pid")).unwrap();
    let mut sandbox = Sandbox {
        child,
        dir: dir.clone(),
        holder: holder.trim().parse().unwrap(),
    };
    let mut c = Client::connect(&dir.join("tremplin.sock")).await;

    let err = c
        .call(TremplinRequest::ListContainers {})
        .await
        .unwrap_err();
    assert!(err.message.contains("StartLxd"), "{}", err.message);
    assert_eq!(
        c.call(TremplinRequest::StartLxd {}).await.unwrap(),
        TremplinReply::Ack {}
    );
    // Idempotent.
    assert_eq!(
        c.call(TremplinRequest::StartLxd {}).await.unwrap(),
        TremplinReply::Ack {}
    );
    let profile = sandbox.run("lxc profile show default");
    for want in [
        "both 1000 1000",
        "security.nesting: \"true\"",
        "cros_containers",
        "parent: lxdbr0",
        "pool: default",
    ] {
        assert!(profile.contains(want), "{want} not in\n{profile}");
    }
    let config = sandbox.run("lxc config show");
    assert!(
        config.contains("core.proxy_https: http://127.0.0.1:3128"),
        "{config}"
    );
    assert!(
        sandbox
            .run("lxc storage show default")
            .contains("driver: btrfs")
    );
    assert!(
        sandbox
            .run("lxc network show lxdbr0")
            .contains("ipv4.dhcp.expiry: infinite")
    );

    // The tarball route.
    let r = c.call(create("c1", "", "", UPLOAD_PORT)).await.unwrap();
    assert_eq!(status_of(&r), ContainerStatus::Creating);
    let (status, why, _) = create_result(&mut events, "c1").await;
    assert_eq!(status, ContainerStatus::Created, "{why}");
    assert_eq!(
        status_of(&c.call(create("c1", "", "", UPLOAD_PORT)).await.unwrap()),
        ContainerStatus::Exists
    );
    // The uploaded image was removed once the container had it.
    assert!(
        !sandbox
            .run("lxc image list --format csv")
            .contains("busybox")
    );

    // The simplestreams route, over the guest's loopback tunnel and the host proxy.
    let server = format!("http://127.0.0.1:{port}");
    let r = c.call(create("c2", &server, "busybox", 0)).await.unwrap();
    assert_eq!(status_of(&r), ContainerStatus::Creating);
    let (status, why, percents) = create_result(&mut events, "c2").await;
    assert_eq!(status, ContainerStatus::Created, "{why}");
    eprintln!("download percents: {percents:?}");
    assert!(!percents.is_empty(), "no Downloading events");
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    // A missing alias: one clear failure and nothing left behind.
    c.call(create("c3", &server, "no-such-alias", 0))
        .await
        .unwrap();
    let (status, why, _) = create_result(&mut events, "c3").await;
    assert_eq!(status, ContainerStatus::Failed);
    assert!(!why.is_empty());
    eprintln!("missing alias: {why}");
    // A corrupt image, a server the host proxy refuses, a cut-off tarball stream: the same.
    c.call(create("c4", &server, "corrupt", 0)).await.unwrap();
    let (status, why, _) = create_result(&mut events, "c4").await;
    assert_eq!(status, ContainerStatus::Failed);
    eprintln!("corrupt image: {why}");
    let refused = format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1024));
    c.call(create("c5", &refused, "busybox", 0)).await.unwrap();
    let (status, why, _) = create_result(&mut events, "c5").await;
    assert_eq!(status, ContainerStatus::Failed);
    assert!(why.contains("image proxy") && why.contains("403"), "{why}");
    eprintln!("refused server: {why}");
    c.call(create("c6", "", "", UPLOAD_PORT + 1)).await.unwrap();
    let (status, why, _) = create_result(&mut events, "c6").await;
    assert_eq!(status, ContainerStatus::Failed);
    assert!(why.contains("ended early"), "{why}");
    eprintln!("cut-off upload: {why}");
    let list = sandbox.run("lxc list --format csv -c n");
    assert_eq!(
        list.split_whitespace().collect::<Vec<_>>(),
        ["c1", "c2"],
        "{list}"
    );
    // Only c2's cached image from the server: nothing from the failed imports.
    let images = sandbox.run("lxc image list --format csv -c f");
    assert_eq!(images.lines().count(), 1, "{images}");

    // User, start, garcon, token.
    let r = c
        .call(TremplinRequest::SetUpUser {
            name: "c1".into(),
            username: "alice".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        r,
        TremplinReply::UserSetUp {
            name: "c1".into(),
            username: "alice".into(),
            homedir: "/home/alice".into()
        }
    );
    let r = c
        .call(TremplinRequest::StartContainer {
            name: "c1".into(),
            token: TOKEN.into(),
            privilege_level: Default::default(),
        })
        .await
        .unwrap();
    assert!(
        matches!(
            status_of(&r),
            ContainerStatus::Starting | ContainerStatus::Remapping
        ),
        "{r:?}"
    );
    let started = next_event(&mut events, |e| matches!(e, TremplinEvent::UpdateStartStatus { status, .. } if *status != ContainerStatus::Starting && *status != ContainerStatus::Remapping)).await;
    assert!(
        matches!(
            &started,
            TremplinEvent::UpdateStartStatus {
                status: ContainerStatus::Started,
                ..
            }
        ),
        "{started:?}"
    );
    assert_eq!(
        status_of(
            &c.call(TremplinRequest::StartContainer {
                name: "c1".into(),
                token: TOKEN.into(),
                privilege_level: Default::default(),
            })
            .await
            .unwrap()
        ),
        ContainerStatus::Running
    );
    assert_eq!(
        sandbox.run("lxc exec c1 -- cat /dev/.container_token"),
        TOKEN
    );
    let id = sandbox.run("lxc exec c1 -- id alice");
    for want in [
        "uid=1000(alice)",
        "chronos-access",
        "android-everybody",
        "sudo",
        "audio",
    ] {
        assert!(id.contains(want), "{want} not in {id}");
    }
    assert!(
        sandbox
            .run("lxc exec c1 -- ls -ln /home")
            .contains("1000     1000")
    );
    sandbox.run("lxc exec c1 -- ls /var/lib/systemd/linger/alice");
    let uid_map = sandbox.run("lxc exec c1 -- cat /proc/self/uid_map");
    assert!(
        uid_map
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["0", "1000000", "1000"],
        "{uid_map}"
    );
    let mut ran = false;
    for _ in 0..100 {
        if sandbox
            .run("lxc exec c1 -- cat /tmp/garcon-ran || true")
            .trim()
            == "ran"
        {
            ran = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ran, "garcon was not started in c1");

    let r = c
        .call(TremplinRequest::GetContainerInfo { name: "c1".into() })
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            TremplinReply::ContainerInfo {
                status: ContainerStatus::Running,
                ..
            }
        ),
        "{r:?}"
    );
    let r = c.call(TremplinRequest::ListContainers {}).await.unwrap();
    let TremplinReply::Containers { containers } = r else {
        panic!("{r:?}")
    };
    let names: Vec<(&str, ContainerStatus)> = containers
        .iter()
        .map(|e| (e.name.as_str(), e.status))
        .collect();
    assert_eq!(
        names,
        [
            ("c1", ContainerStatus::Running),
            ("c2", ContainerStatus::Stopped)
        ]
    );

    // Stop: the reply, and ContainerShutdown from LXD's events.
    let r = c
        .call(TremplinRequest::StopContainer { name: "c1".into() })
        .await
        .unwrap();
    assert_eq!(status_of(&r), ContainerStatus::Stopped);
    next_event(
        &mut events,
        |e| matches!(e, TremplinEvent::ContainerShutdown { name } if name == "c1"),
    )
    .await;

    let r = c
        .call(TremplinRequest::DeleteContainer { name: "c2".into() })
        .await
        .unwrap();
    assert_eq!(status_of(&r), ContainerStatus::Deleted);
    assert!(!sandbox.run("lxc list --format csv -c n").contains("c2"));
    let err = c
        .call(TremplinRequest::DeleteContainer { name: "c2".into() })
        .await
        .unwrap_err();
    assert_eq!(err.kind, cros_messages::ErrorKind::NotFound, "{err:?}");

    // A create that died with tremplin leaves a temporary instance; a new tremplin adopts the
    // running LXD and removes it at StartLxd.
    sandbox.run("lxc copy c1 crostini-inprogress-zz");
    sandbox.restart_tremplin(tremplin, &args);
    next_event(&mut events, |e| {
        matches!(e, TremplinEvent::TremplinReady {})
    })
    .await;
    let mut c = Client::connect(&dir.join("tremplin.sock")).await;
    assert_eq!(
        c.call(TremplinRequest::StartLxd {}).await.unwrap(),
        TremplinReply::Ack {}
    );
    let list = sandbox.run("lxc list --format csv -c n");
    assert_eq!(list.trim(), "c1", "{list}");

    // LXD stopped too: the next tremplin starts it over the state on disk, set-up and all.
    sandbox.run("lxd shutdown");
    sandbox.restart_tremplin(tremplin, &args);
    next_event(&mut events, |e| {
        matches!(e, TremplinEvent::TremplinReady {})
    })
    .await;
    let mut c = Client::connect(&dir.join("tremplin.sock")).await;
    assert_eq!(
        c.call(TremplinRequest::StartLxd {}).await.unwrap(),
        TremplinReply::Ack {}
    );
    let r = c.call(TremplinRequest::ListContainers {}).await.unwrap();
    let TremplinReply::Containers { containers } = r else {
        panic!("{r:?}")
    };
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].name, "c1");
    drop(sandbox);
}
