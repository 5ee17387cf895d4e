//! `crosimg build-container busybox` and `crosimg serve`, with the real tools: the image is
//! built into a temporary tree, unpacked with tar and unsquashfs, hashed with sha256sum,
//! served over HTTP on a free port and fetched back; its init is run in fresh namespaces the
//! way LXD runs it (PID 1, its own network namespace) and stopped with SIGPWR as `lxc stop`
//! does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cros_tools::crosimg::serve::Server;
use cros_tools::crosimg::simplestreams::{IMAGES_PATH, INDEX_PATH, Index, Products};

fn crosimg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crosimg"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn build_busybox(tree: &Path, extra: &[&str]) -> PathBuf {
    let out = run(crosimg()
        .args(["build-container", "busybox", "--out"])
        .arg(tree)
        .args(extra));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn sha256sum(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn products(tree: &Path) -> Products {
    serde_json::from_slice(&std::fs::read(tree.join(IMAGES_PATH)).unwrap()).unwrap()
}

/// A minimal HTTP/1.0 client: status, headers (lower-case names) and body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn busybox_image_is_lxd_split_format_in_a_simplestreams_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let version_dir = build_busybox(&tree, &["--serial", "20260101_0000"]);
    let shown = version_dir.to_string_lossy().into_owned();
    assert!(
        shown.contains("/tree/images/busybox/") && shown.ends_with("/amd64/default/20260101_0000"),
        "{shown}"
    );
    let meta = version_dir.join("lxd.tar.xz");
    let root = version_dir.join("rootfs.squashfs");

    // The metadata tarball: metadata.yaml with LXD's fields and the templates it names.
    let list = run(Command::new("tar").arg("-tJf").arg(&meta)).stdout;
    let list = String::from_utf8(list).unwrap();
    for f in [
        "metadata.yaml",
        "templates/hostname.tpl",
        "templates/hosts.tpl",
    ] {
        assert!(list.lines().any(|l| l == f), "{f} not in {list}");
    }
    let yaml = run(Command::new("tar")
        .arg("-xOJf")
        .arg(&meta)
        .arg("metadata.yaml"))
    .stdout;
    let md: serde_json::Value = serde_json::from_slice(&yaml).unwrap();
    assert_eq!(md["architecture"], "x86_64");
    assert!(md["creation_date"].as_u64().unwrap() > 1_700_000_000);
    let props = &md["properties"];
    assert_eq!(props["os"], "busybox");
    assert_eq!(props["architecture"], "amd64");
    assert_eq!(props["variant"], "default");
    assert_eq!(props["serial"], "20260101_0000");
    assert!(props["release"].as_str().unwrap().starts_with("1."));
    assert!(props["description"].as_str().unwrap().contains("BusyBox"));
    for t in ["/etc/hostname", "/etc/hosts"] {
        assert_eq!(
            md["templates"][t]["when"],
            serde_json::json!(["create", "copy"])
        );
    }
    assert_eq!(md["templates"]["/etc/hostname"]["template"], "hostname.tpl");
    let tpl = run(Command::new("tar")
        .arg("-xOJf")
        .arg(&meta)
        .arg("templates/hostname.tpl"))
    .stdout;
    assert_eq!(tpl, b"{{ container.name }}\n");

    // The rootfs squashfs holds the tree at its top: busybox, init and what init runs.
    let ls =
        String::from_utf8(run(Command::new("unsquashfs").arg("-lls").arg(&root)).stdout).unwrap();
    let has = |p: &str| {
        ls.lines()
            .any(|l| l.contains(&format!("squashfs-root/{p}")))
    };
    for p in [
        "bin/busybox",
        "sbin/init -> /bin/busybox",
        "bin/sh -> busybox",
        "etc/inittab",
        "etc/init.d/rcS",
        "etc/passwd",
        "etc/group",
        "usr/share/udhcpc/default.script",
    ] {
        assert!(has(p), "{p} not in the squashfs:\n{ls}");
    }
    assert!(!has("lib/systemd"), "busybox image has no systemd");
    assert!(
        ls.lines()
            .filter(|l| l.contains("squashfs-root/"))
            .all(|l| l.contains(" root/root ")),
        "every file is root's:\n{ls}"
    );

    // images.json describes exactly these files, and the fingerprint is sha256(meta ‖ rootfs).
    let cat = products(&tree);
    assert_eq!(cat.content_id, "images");
    assert_eq!(cat.format, "products:1.0");
    assert_eq!(cat.datatype, "image-downloads");
    let (id, product) = cat.products.iter().next().unwrap();
    assert!(
        id.starts_with("busybox:1.") && id.ends_with(":amd64:default"),
        "{id}"
    );
    assert_eq!(product.arch, "amd64");
    assert_eq!(product.os, "busybox");
    let aliases: Vec<&str> = product.aliases.split(',').collect();
    assert!(aliases.contains(&"busybox") && aliases.contains(&"busybox/default"));
    let version = &product.versions["20260101_0000"];
    let (meta_bytes, root_bytes) = (std::fs::read(&meta).unwrap(), std::fs::read(&root).unwrap());
    let m = &version.items["lxd.tar.xz"];
    let r = &version.items["rootfs.squashfs"];
    assert_eq!(
        (m.ftype.as_str(), r.ftype.as_str()),
        ("lxd.tar.xz", "squashfs")
    );
    assert_eq!(tree.join(&m.path), meta);
    assert_eq!(tree.join(&r.path), root);
    assert_eq!(m.size, meta_bytes.len() as u64);
    assert_eq!(r.size, root_bytes.len() as u64);
    assert_eq!(m.sha256, sha256sum(&meta_bytes));
    assert_eq!(r.sha256, sha256sum(&root_bytes));
    let combined = sha256sum(&[meta_bytes.as_slice(), root_bytes.as_slice()].concat());
    assert_eq!(
        m.combined_squashfs_sha256.as_deref(),
        Some(combined.as_str())
    );
    assert_eq!(m.combined_rootxz_sha256, None);

    let index: Index =
        serde_json::from_slice(&std::fs::read(tree.join(INDEX_PATH)).unwrap()).unwrap();
    assert_eq!(index.format, "index:1.0");
    let entry = &index.index["images"];
    assert_eq!(entry.datatype, "image-downloads");
    assert_eq!(entry.path, "streams/v1/images.json");
    assert_eq!(entry.products, std::slice::from_ref(id));

    // A tar.xz build of a new serial adds a version and keeps the first; nothing is left over.
    let second = build_busybox(
        &tree,
        &["--serial", "20260102_0000", "--rootfs-format", "tar.xz"],
    );
    let rootxz = second.join("root.tar.xz");
    let top = String::from_utf8(run(Command::new("tar").arg("-tJf").arg(&rootxz)).stdout).unwrap();
    assert!(top.lines().any(|l| l == "./bin/busybox"), "{top}");
    let cat = products(&tree);
    let product = &cat.products[id];
    assert_eq!(product.versions.len(), 2);
    let m2 = &product.versions["20260102_0000"].items["lxd.tar.xz"];
    let combined = sha256sum(
        &[
            std::fs::read(second.join("lxd.tar.xz")).unwrap(),
            std::fs::read(&rootxz).unwrap(),
        ]
        .concat(),
    );
    assert_eq!(
        m2.combined_rootxz_sha256.as_deref(),
        Some(combined.as_str())
    );
    assert!(root.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&tree)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".build-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // --keep 1 drops the older version and its directory.
    let third = build_busybox(&tree, &["--serial", "20260103_0000", "--keep", "1"]);
    assert_eq!(products(&tree).products[id].versions.len(), 1);
    assert!(!version_dir.exists() && !second.exists() && third.exists());
}

#[test]
fn serve_answers_get_and_head_with_the_files_bytes_and_refuses_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let version_dir = build_busybox(&tree, &[]);
    let (tx, rx) = std::sync::mpsc::channel();
    let server = Server::bind(&tree, "127.0.0.1:0").unwrap();
    let running = server.start(move |served| {
        let _ = tx.send(served.clone());
    });
    let addr = running.addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(running.url(), format!("http://{addr}/"));

    for rel in [INDEX_PATH, IMAGES_PATH] {
        let (status, headers, body) = http(addr, "GET", &format!("/{rel}"));
        assert_eq!(status, 200, "{rel}");
        assert_eq!(body, std::fs::read(tree.join(rel)).unwrap(), "{rel}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(
            header(&headers, "content-length"),
            Some(body.len().to_string().as_str())
        );
    }
    let rootfs = version_dir.join("rootfs.squashfs");
    let rel = rootfs
        .strip_prefix(&tree)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let want = std::fs::read(&rootfs).unwrap();
    let (status, headers, body) = http(addr, "GET", &format!("/{rel}"));
    assert_eq!(status, 200);
    assert!(
        body == want,
        "rootfs bytes differ ({} vs {})",
        body.len(),
        want.len()
    );
    assert_eq!(
        header(&headers, "content-length"),
        Some(want.len().to_string().as_str())
    );
    let (status, headers, body) = http(addr, "HEAD", &format!("/{rel}"));
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&headers, "content-length"),
        Some(want.len().to_string().as_str())
    );

    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    for (path, want) in [
        ("/../secret", 400),
        ("/streams/../../secret", 400),
        ("/streams/%2e%2e/%2e%2e/secret", 400),
        ("/.crosimg.lock", 404),
        ("/streams/v1", 404),
        ("/nothing-here", 404),
    ] {
        let (status, _, body) = http(addr, "GET", path);
        assert_eq!(status, want, "{path}");
        assert!(!body.starts_with(b"outside"), "{path}");
    }
    let (status, headers, _) = http(addr, "POST", &format!("/{INDEX_PATH}"));
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));

    running.stop();
    let log: Vec<_> = rx.try_iter().collect();
    assert!(
        log.iter()
            .any(|s| s.url == format!("/{rel}") && s.status == 200 && s.bytes == want.len() as u64),
        "{log:?}"
    );
    assert!(log.iter().any(|s| s.url == "/../secret" && s.status == 400));
    assert!(http_fails(addr), "the server still answers after stop");
}

/// After stop the listener may still accept (tiny_http closes it when dropped) but nothing
/// answers.
fn http_fails(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return true;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = write!(s, "GET /{INDEX_PATH} HTTP/1.0\r\n\r\n");
    let mut buf = [0u8; 16];
    !matches!(s.read(&mut buf), Ok(n) if n > 0)
}

#[test]
fn serve_as_a_child_prints_its_url_first_and_refuses_a_tree_without_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = crosimg()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("not a simplestreams tree") && err.contains("streams/v1/index.json"),
        "{err}"
    );

    let tree = dir.path().join("tree");
    build_busybox(&tree, &[]);
    let mut child = crosimg()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(&tree)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim()
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("first line {first:?}"));
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix('/'))
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0);
    let (status, _, body) = http(addr, "GET", &format!("/{INDEX_PATH}"));
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(tree.join(INDEX_PATH)).unwrap());
    // One log line per request, on stderr.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains(&format!("GET /{INDEX_PATH} 200")),
        "log line {line:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The first line of stderr (crosimg's own error line) and how many lines there were.
fn failure(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    err.lines().next().unwrap_or("").to_string()
}

#[test]
fn bad_input_gives_one_clear_line_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let line = failure(
        crosimg()
            .args(["build-container", "alpine", "--out"])
            .arg(dir.path().join("t")),
    );
    assert!(
        line.contains("invalid value 'alpine'") && line.contains("KIND"),
        "{line}"
    );
    let line = failure(crosimg().args(["build-container", "busybox"]));
    assert!(line.contains("--out"), "{line}");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let line = failure(
        crosimg()
            .args(["build-container", "busybox", "--out"])
            .arg(&file),
    );
    assert!(
        line.contains(&file.display().to_string())
            && line.contains("exists and is not a directory"),
        "{line}"
    );
    let line = failure(
        crosimg()
            .args([
                "build-container",
                "busybox",
                "--busybox",
                "/bin/true",
                "--out",
            ])
            .arg(dir.path().join("t")),
    );
    assert!(
        line.contains("/bin/true") && line.contains("static busybox"),
        "{line}"
    );
    assert!(
        !dir.path().join("t").exists(),
        "a failed build left its tree"
    );
    // In an existing tree a failed build leaves what was there and nothing more.
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    failure(
        crosimg()
            .args([
                "build-container",
                "busybox",
                "--busybox",
                "/bin/true",
                "--out",
            ])
            .arg(&tree),
    );
    let left: Vec<_> = std::fs::read_dir(&tree)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".crosimg.lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn mmdebstrap_failing_is_one_line_and_leaves_no_image_and_no_cache() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mmdebstrap's root mode needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let cache = dir.path().join("cache");
    // Nothing listens on port 9 here: apt-get update fails at once, as with no network.
    let out = crosimg()
        .args([
            "build-container",
            "debian",
            "--mirror",
            "http://127.0.0.1:9/debian",
            "--out",
        ])
        .arg(&tree)
        .env("CROSD_CACHE", &cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("mmdebstrap could not build Debian bookworm")
            && errors[0].contains("127.0.0.1:9"),
        "{err}"
    );
    // The build made the tree, so it removed it again.
    assert!(!tree.exists(), "a failed build left {}", tree.display());
    // Neither a tarball nor a partial one (the lock file may stay).
    let cached: Vec<_> = std::fs::read_dir(cache.join("rootfs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".lock")
                .collect()
        })
        .unwrap_or_default();
    assert!(cached.is_empty(), "{cached:?}");
}

fn children(pid: u32) -> Vec<(u32, String)> {
    let out = Command::new("ps")
        .args(["-o", "pid=,args=", "--ppid"])
        .arg(pid.to_string())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (pid, args) = l.trim().split_once(' ')?;
            Some((pid.parse().ok()?, args.trim().to_string()))
        })
        .collect()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    // A bound so that a broken image fails the test instead of hanging it; not a benchmark.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn busybox_init_keeps_running_as_pid_1_and_halts_on_sigpwr() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: new PID and network namespaces need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let version_dir = build_busybox(&tree, &[]);
    let root = dir.path().join("root");
    run(Command::new("unsquashfs")
        .args(["-q", "-d"])
        .arg(&root)
        .arg(version_dir.join("rootfs.squashfs")));
    // As LXD does: PID 1 of a new PID namespace, its own network, mount, UTS and IPC
    // namespaces, /proc mounted; LXD would give it an eth0, here it has only lo.
    let mut unshare = Command::new("unshare")
        .args(["--fork", "--pid", "--net", "--mount", "--uts", "--ipc"])
        .arg(format!("--mount-proc={}", root.join("proc").display()))
        .arg("chroot")
        .arg(&root)
        .arg("/sbin/init")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let init = wait_for("init", || children(unshare.id()).first().map(|c| c.0));
    // sysinit ran and the respawned network line idles (no eth0): init stays up.
    let idle = wait_for("init's respawned child", || {
        children(init)
            .into_iter()
            .find(|(_, args)| args == "sleep 2147483647")
    });
    assert!(unshare.try_wait().unwrap().is_none(), "init exited");
    // `lxc stop` sends SIGPWR to the container's init.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init as i32),
        nix::sys::signal::Signal::SIGPWR,
    )
    .unwrap();
    wait_for("init to halt", || unshare.try_wait().unwrap());
    assert!(
        !Path::new(&format!("/proc/{}", idle.0)).exists(),
        "init's children outlived it"
    );
}
