//! seneschal's 9P server, driven as concierge and a guest would: StartServer, SharePath, then
//! a 9P2000.L client on the VM's socket (`<run dir>/vsock.sock_<port>`, where the VM's hybrid
//! vsock device would connect a guest dialing the port) trying every way out of the shares.
//! The server is the real `crosd-9s` process, confined and under seccomp; needs root (it mounts
//! and changes ids), skipped otherwise.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::Actor;
use cros_actors::config::HypervisorConfig;
use cros_actors::seneschal::Seneschal;
use cros_actors::seneschal::filter::{build, msg};
use cros_actors::{BusConfig, BusHandle, HostConfig};
use cros_messages::seneschal::{SeneschalReply, SeneschalRequest};
use cros_messages::{Addr, Body};

/// The owner of the test VM: the server must run as this uid.
const OWNER: u32 = 4321;
const MSIZE: u32 = 1024 * 1024;

/// A 9P client speaking one request at a time.
struct Client {
    conn: UnixStream,
    tag: u16,
    /// The server's stderr, quoted when a connection fails.
    log: PathBuf,
}

/// An answer: its type and body.
struct Reply {
    ty: u8,
    body: Vec<u8>,
}

impl Reply {
    fn errno(&self) -> Option<i32> {
        (self.ty == msg::RLERROR).then(|| i32::from_le_bytes(self.body[..4].try_into().unwrap()))
    }
}

impl Client {
    fn connect(socket: &Path) -> Self {
        let conn = UnixStream::connect(socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let log = socket
            .ancestors()
            .nth(3)
            .unwrap()
            .join("state/logs/termina.9s.log");
        Client { conn, tag: 0, log }
    }

    fn send(&mut self, frame: Vec<u8>) -> std::io::Result<Reply> {
        self.conn.write_all(&frame)?;
        let mut size = [0u8; 4];
        self.conn.read_exact(&mut size)?;
        let mut rest = vec![0u8; u32::from_le_bytes(size) as usize - 4];
        self.conn.read_exact(&mut rest)?;
        Ok(Reply {
            ty: rest[0],
            body: rest[3..].to_vec(),
        })
    }

    fn ask(&mut self, f: impl FnOnce(u16) -> Vec<u8>) -> Reply {
        self.tag = self.tag.wrapping_add(1);
        let frame = f(self.tag);
        let ty = frame[4];
        self.send(frame).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("request type {ty}: {e}; the server's log: {log}")
        })
    }

    /// Tversion and Tattach of fid 0.
    fn start(socket: &Path) -> Self {
        let mut c = Self::connect(socket);
        let r = c.send(build::version(MSIZE)).unwrap();
        assert_eq!(r.ty, msg::RVERSION);
        let msize = u32::from_le_bytes(r.body[..4].try_into().unwrap());
        assert_eq!(msize, MSIZE, "the server takes a 1 MiB msize");
        let r = c.ask(|t| build::attach(t, 0));
        assert_eq!(r.ty, msg::RATTACH, "{:?}", r.errno());
        c
    }

    /// Walks from the root to `fid`; the errno on failure.
    fn walk(&mut self, fid: u32, path: &[&str]) -> Result<(), i32> {
        let names: Vec<&[u8]> = path.iter().map(|s| s.as_bytes()).collect();
        let r = self.ask(|t| build::walk(t, 0, fid, &names));
        match r.errno() {
            Some(e) => Err(e),
            None => {
                let n = u16::from_le_bytes([r.body[0], r.body[1]]) as usize;
                if n == path.len() {
                    Ok(())
                } else {
                    Err(libc::ENOENT)
                }
            }
        }
    }

    /// Walks to `fid` and opens it with `flags`.
    fn open(&mut self, fid: u32, path: &[&str], flags: i32) -> Result<(), i32> {
        self.walk(fid, path)?;
        match self.ask(|t| build::lopen(t, fid, flags as u32)).errno() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn read(&mut self, fid: u32, count: u32) -> Result<Vec<u8>, i32> {
        let r = self.ask(|t| build::read(t, fid, 0, count));
        match r.errno() {
            Some(e) => Err(e),
            None => Ok(r.body[4..].to_vec()),
        }
    }

    fn errno(&mut self, f: impl FnOnce(u16) -> Vec<u8>) -> Option<i32> {
        self.ask(f).errno()
    }
}

async fn ask(bus: &BusHandle, req: SeneschalRequest) -> Result<SeneschalReply, String> {
    match bus
        .request(
            &Addr::host("tester"),
            &Addr::host("seneschal"),
            Body::Seneschal(req),
        )
        .await
    {
        Ok(Body::SeneschalReply(r)) => Ok(r),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

fn uid_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string()
}

#[actix::test]
async fn the_server_is_confined_to_its_shares() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (mounts and another user's ids)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_dir = base.join("run/vm.3");
    std::fs::create_dir_all(&run_dir).unwrap();
    let outside = base.join("secret");
    std::fs::write(&outside, b"outside the shares").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rw = base.join("rw");
    let ro = base.join("ro");
    for d in [&rw, &ro] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("file"), b"inside").unwrap();
    }
    std::fs::write(rw.join("victim"), b"original").unwrap();
    std::os::unix::fs::symlink(&outside, rw.join("abs")).unwrap();
    std::os::unix::fs::symlink("../secret", rw.join("rel")).unwrap();
    std::fs::hard_link(&outside, rw.join("hard")).unwrap();
    nix::sys::stat::mknod(
        &rw.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    chown_tree(&rw, OWNER);
    chown_tree(&ro, OWNER);
    // The hard link stays root's: the outside file it is.
    std::os::unix::fs::lchown(&outside, Some(0), Some(0)).unwrap();

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_crosd-9s"));
    let config = HostConfig {
        hypervisor: HypervisorConfig {
            bin_dir: bin.parent().map(Path::to_path_buf),
            ..Default::default()
        },
        ..HostConfig::new(base.join("state"), base.join("run"))
    };
    let bus = BusHandle::new(BusConfig::default()).unwrap();
    bus.register(
        Addr::host("seneschal"),
        Seneschal::new(bus.clone(), config).start().recipient(),
    );
    let started = ask(
        &bus,
        SeneschalRequest::StartServer {
            port: 0,
            accept_cid: 3,
            uid_map: vec![],
            gid_map: vec![],
            vm: "termina".into(),
            owner_uid: OWNER,
            run_dir: run_dir.display().to_string(),
        },
    )
    .await
    .unwrap();
    let SeneschalReply::ServerStarted { handle, port } = started else {
        panic!("{started:?}")
    };
    assert_eq!(port, 16384);
    for (path, writable, name) in [(&rw, true, "rw"), (&ro, false, "ro")] {
        let shared = ask(
            &bus,
            SeneschalRequest::SharePath {
                vm: "termina".into(),
                path: path.display().to_string(),
                writable,
            },
        )
        .await
        .unwrap();
        assert_eq!(shared, SeneschalReply::PathShared { path: name.into() });
    }
    let SeneschalReply::Servers { servers } =
        ask(&bus, SeneschalRequest::ListServers {}).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].shares.len(), 2);
    let pid = servers[0].pid;
    assert_eq!(
        uid_of(pid),
        format!("Uid:\t{OWNER}\t{OWNER}\t{OWNER}\t{OWNER}"),
        "the server runs as the sharing user"
    );

    let socket = run_dir.join(format!("vsock.sock_{port}"));
    let mut c = Client::start(&socket);
    // Reading and writing inside.
    c.open(1, &["rw", "file"], libc::O_RDONLY).unwrap();
    assert_eq!(c.read(1, 100).unwrap(), b"inside");
    c.walk(2, &["rw"]).unwrap();
    assert_eq!(
        c.errno(|t| build::lcreate(t, 2, b"new", libc::O_WRONLY as u32, 0o6755)),
        None
    );
    assert_eq!(c.errno(|t| build::write(t, 2, 0, b"hello")), None);
    let new = rw.join("new");
    assert_eq!(std::fs::read(&new).unwrap(), b"hello");
    let meta = std::fs::metadata(&new).unwrap();
    assert_eq!(meta.uid(), OWNER, "files are created as the sharing user");
    assert_eq!(
        meta.mode() & 0o7777,
        0o755,
        "setuid/setgid bits are cleared"
    );
    c.walk(3, &["rw", "file"]).unwrap();
    assert_eq!(c.errno(|t| build::chmod(t, 3, 0o4777)), None);
    assert_eq!(
        std::fs::metadata(rw.join("file")).unwrap().mode() & 0o7777,
        0o777,
        "chmod u+s is neutralised"
    );

    // What a kernel client does besides: directory listings, links, statfs, xattrs, fsync.
    c.walk(20, &[]).unwrap();
    assert_eq!(
        c.errno(|t| build::lopen(t, 20, libc::O_RDONLY as u32)),
        None
    );
    let listing = c.ask(|t| build::readdir(t, 20, 0, 8192));
    assert_eq!(listing.errno(), None);
    let names = String::from_utf8_lossy(&listing.body);
    assert!(names.contains("rw") && names.contains("ro"), "{names}");
    c.walk(21, &["rw"]).unwrap();
    assert_eq!(
        c.errno(|t| build::lopen(t, 21, libc::O_RDONLY as u32)),
        None
    );
    assert_eq!(c.ask(|t| build::readdir(t, 21, 0, 8192)).errno(), None);
    c.walk(22, &["rw", "abs"]).unwrap();
    let link = c.ask(|t| build::readlink(t, 22));
    assert_eq!(link.errno(), None);
    assert_eq!(c.errno(|t| build::statfs(t, 21)), None);
    assert_eq!(c.errno(|t| build::getattr(t, 22)), None);
    assert_eq!(
        c.errno(|t| build::xattrwalk(t, 22, 23, b"security.selinux")),
        Some(libc::EOPNOTSUPP)
    );
    assert_eq!(c.errno(|t| build::fsync(t, 1)), None);
    for fid in [20, 21, 22] {
        assert_eq!(c.errno(|t| build::clunk(t, fid)), None);
    }

    // `..` at the root and inside, names with slashes.
    assert_eq!(c.walk(4, &[".."]), Err(libc::EPERM));
    assert_eq!(c.walk(4, &["rw", ".."]), Err(libc::EPERM));
    assert_eq!(c.walk(4, &["rw/../.."]), Err(libc::EINVAL));
    assert_eq!(
        c.walk(4, &["proc"]),
        Err(libc::ENOENT),
        "only shares at the root"
    );
    // Symlinks pointing out are never followed by the server.
    assert_eq!(c.open(5, &["rw", "abs"], libc::O_RDONLY), Err(libc::ELOOP));
    assert_eq!(c.open(6, &["rw", "rel"], libc::O_RDONLY), Err(libc::ELOOP));
    // A hard link to an outside file has that file's owner and mode: the user cannot read it.
    assert_eq!(
        c.open(7, &["rw", "hard"], libc::O_RDONLY),
        Err(libc::EACCES)
    );
    // Device nodes do not open (nodev), and none can be made.
    assert_eq!(c.open(8, &["rw", "null"], libc::O_RDWR), Err(libc::EACCES));
    assert_eq!(
        c.errno(|t| build::mknod(t, 2, b"dev", libc::S_IFCHR | 0o666)),
        Some(libc::EACCES)
    );
    assert_eq!(
        c.errno(|t| build::symlink(t, 2, b"out", b"/etc/shadow")),
        Some(libc::EACCES)
    );
    // A symlink swapped in between walk and open: the open is of what was walked.
    c.walk(9, &["rw", "victim"]).unwrap();
    std::fs::rename(rw.join("victim"), base.join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, rw.join("victim")).unwrap();
    assert_eq!(c.errno(|t| build::lopen(t, 9, libc::O_RDONLY as u32)), None);
    assert_eq!(c.read(9, 100).unwrap(), b"original");

    // The read-only share refuses every change.
    c.walk(10, &["ro"]).unwrap();
    c.walk(11, &["ro", "file"]).unwrap();
    assert_eq!(
        c.errno(|t| build::lopen(t, 11, libc::O_WRONLY as u32)),
        Some(libc::EROFS)
    );
    assert_eq!(
        c.errno(|t| build::lcreate(t, 10, b"x", 1, 0o644)),
        Some(libc::EROFS)
    );
    assert_eq!(
        c.errno(|t| build::mkdir(t, 10, b"d", 0o755)),
        Some(libc::EROFS)
    );
    assert_eq!(
        c.errno(|t| build::unlinkat(t, 10, b"file")),
        Some(libc::EROFS)
    );
    assert_eq!(
        c.errno(|t| build::renameat(t, 10, b"file", 10, b"moved")),
        Some(libc::EROFS)
    );
    assert_eq!(c.errno(|t| build::chmod(t, 11, 0o777)), Some(libc::EROFS));
    assert_eq!(c.errno(|t| build::truncate(t, 11, 0)), Some(libc::EROFS));
    assert_eq!(
        c.errno(|t| build::mknod(t, 10, b"n", libc::S_IFIFO | 0o644)),
        Some(libc::EACCES)
    );
    assert_eq!(c.errno(|t| build::link(t, 10, 11, b"l")), Some(libc::EROFS));
    assert_eq!(std::fs::read(ro.join("file")).unwrap(), b"inside");

    // Garbage and oversized frames lose their connection, not the server.
    let mut bad = Client::start(&socket);
    assert!(bad.send(vec![9, 0, 0, 0, 0xee, 1, 0, 0, 0]).is_err());
    let mut big = Client::start(&socket);
    let mut frame = (MSIZE + 1).to_le_bytes().to_vec();
    frame.extend_from_slice(&[msg::TWRITE, 1, 0]);
    assert!(big.send(frame).is_err());
    assert_eq!(
        c.read(1, 100).unwrap(),
        b"inside",
        "the first connection still works"
    );

    // Unsharing a folder in use: its open files answer EIO at once, new walks find nothing.
    let unshared = ask(
        &bus,
        SeneschalRequest::UnsharePath {
            vm: "termina".into(),
            path: rw.display().to_string(),
        },
    )
    .await
    .unwrap();
    assert_eq!(unshared, SeneschalReply::PathUnshared { path: "rw".into() });
    assert_eq!(c.read(1, 100), Err(libc::EIO));
    assert_eq!(c.walk(12, &["rw"]), Err(libc::ENOENT));
    assert_eq!(
        c.read(11, 100).map(|_| ()).unwrap_err(),
        libc::EBADF,
        "ro unopened fid"
    );

    // Stopping the server ends the process and cleans up; the share is kept for the next boot.
    ask(&bus, SeneschalRequest::StopServer { handle })
        .await
        .unwrap();
    assert!(!socket.exists());
    assert!(!base.join("run/seneschal/1").exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            std::thread::sleep(Duration::from_millis(200));
            !Path::new(&format!("/proc/{pid}/status")).exists()
        }
    );
    let kept = std::fs::read_to_string(base.join("state/shares/termina.json")).unwrap();
    assert!(
        kept.contains("\"ro\"") && !kept.contains("\"rw\""),
        "{kept}"
    );
    assert_eq!(
        std::fs::read(rw.join("file")).unwrap(),
        b"inside",
        "user data untouched"
    );
}
