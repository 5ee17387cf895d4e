//! The 9P server process (`crosd-9s`), one per VM, as Crostini's 9s: started by seneschal as
//! root, it confines itself and then serves the `p9` crate's server behind [`Guard`].
//!
//! Confinement, in order ([`enter_sandbox`]):
//! 1. a private mount namespace, every mount a slave of crosd's (so nothing it mounts leaks
//!    out, and the shares seneschal bind-mounts into `<server dir>/shares` later still appear);
//! 2. a new root of its own (a read-only tmpfs) holding only `/shares` (that directory of
//!    shares) and `/proc` (the `p9` crate reopens walked files through /proc/self/fd); the old
//!    root is detached (pivot_root), so no other host path exists for the process;
//! 3. no supplementary groups, then the sharing user's gid and uid (never root), no new
//!    privileges;
//! 4. a seccomp filter (the VMM's helper, kind `FileServer`), installed by the binary.
//!
//! The 9P root is `/shares`: the guest sees one directory per share. The guard refuses `..`,
//! so `/proc` beside it cannot be walked to; symlinks are never followed by the server (each
//! walk step is `O_NOFOLLOW`, opening a symlink's fid fails with ELOOP), and the guest
//! resolves the links it reads inside its own tree.
//!
//! The listening socket (fd 3) is bound by seneschal in the VM's runtime directory; the
//! control socket (fd 4) carries seneschal's `share NAME` / `unshare NAME` lines, each answered
//! `ok`. When the control socket closes the server exits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::filter::{Guard, Shares, Verdict, rlerror, tag_of};

/// The listening socket's descriptor in the server process.
pub const LISTEN_FD: i32 = 3;
/// The control socket's descriptor.
pub const CONTROL_FD: i32 = 4;
/// The largest msize offered: the Linux fd transport's own maximum (MAX_SOCK_BUF, 1 MiB)
/// plus the 9P read header, so a 1 MiB msize mount reads 1 MiB per request.
pub const MAX_MSIZE: u32 = 1024 * 1024;
/// Connections served at once (the guest mounts once; more is a guest misbehaving).
pub const MAX_CONNECTIONS: usize = 8;
/// Where the shares are inside the server's root.
const SHARES: &str = "/shares";

/// What the server process is told on its command line.
#[derive(Debug, Clone)]
pub struct ServerArgs {
    /// `<server dir>`: holds `shares` (seneschal's bind mounts) and `root` (an empty directory
    /// the new root is mounted on).
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Host uid → uid the guest sees (getattr).
    pub uid_map: BTreeMap<u32, u32>,
    pub gid_map: BTreeMap<u32, u32>,
    /// Only connections whose peer is this uid (the VM's vsock device, crosd's user) are served.
    pub accept_uid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NineSError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to serve as root: the server runs as the sharing user")]
    Root,
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> NineSError {
    let what = what.into();
    move |e| NineSError::Sys {
        what,
        source: std::io::Error::from(e),
    }
}

/// Steps 1–3 of the module docs; the caller installs seccomp next, then calls [`serve`].
pub fn enter_sandbox(args: &ServerArgs) -> Result<(), NineSError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, unshare};
    if args.uid == 0 || args.gid == 0 {
        return Err(NineSError::Root);
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare(CLONE_NEWNS)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(sys("make every mount a slave"))?;
    let root = args.dir.join("root");
    let shares = args.dir.join("shares");
    let fixed = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        fixed,
        Some("size=64k,nr_inodes=16,mode=0755"),
    )
    .map_err(sys(format!("mount a tmpfs on {}", root.display())))?;
    for d in ["shares", "proc"] {
        std::fs::create_dir(root.join(d)).map_err(|source| NineSError::Sys {
            what: format!("create {}", root.join(d).display()),
            source,
        })?;
    }
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(
        Some(&shares),
        &root.join("shares"),
        None::<&str>,
        bind,
        None::<&str>,
    )
    .map_err(sys(format!("bind {}", shares.display())))?;
    mount(
        Some("/proc"),
        &root.join("proc"),
        None::<&str>,
        bind,
        None::<&str>,
    )
    .map_err(sys("bind /proc"))?;
    std::env::set_current_dir(&root).map_err(|source| NineSError::Sys {
        what: format!("chdir {}", root.display()),
        source,
    })?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
    std::env::set_current_dir("/").map_err(|source| NineSError::Sys {
        what: "chdir /".into(),
        source,
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | fixed,
        None::<&str>,
    )
    .map_err(sys("make the new root read-only"))?;
    drop_privileges(args.uid, args.gid)
}

fn drop_privileges(uid: u32, gid: u32) -> Result<(), NineSError> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    setgroups(&[]).map_err(sys("setgroups([])"))?;
    let g = Gid::from_raw(gid);
    setresgid(g, g, g).map_err(sys(format!("setresgid({gid})")))?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(sys(format!("setresuid({uid})")))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(NineSError::Sys {
            what: "PR_SET_NO_NEW_PRIVS".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The shares exported now, shared by the control thread and every connection.
type SharedShares = Arc<RwLock<Shares>>;

/// Serves until the control socket closes. `listener` and `control` are fds 3 and 4.
pub fn serve(args: &ServerArgs, listener: UnixListener, control: UnixStream) {
    let shares: SharedShares = Arc::default();
    let active = Arc::new(AtomicUsize::new(0));
    {
        let (shares, args, active) = (shares.clone(), args.clone(), active.clone());
        std::thread::spawn(move || accept_loop(&args, listener, shares, active));
    }
    control_loop(control, &shares);
}

/// The server's own fds, as `crosd-9s` finds them.
///
/// # Safety
/// Only in the server process, where seneschal placed the sockets at fds 3 and 4.
pub unsafe fn inherited_sockets() -> (UnixListener, UnixStream) {
    // SAFETY: the caller guarantees these descriptors are ours and open.
    unsafe {
        (
            UnixListener::from(OwnedFd::from_raw_fd(LISTEN_FD)),
            UnixStream::from(OwnedFd::from_raw_fd(CONTROL_FD)),
        )
    }
}

fn control_loop(control: UnixStream, shares: &SharedShares) {
    let mut out = match control.try_clone() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crosd-9s: control socket: {e}");
            return;
        }
    };
    let mut epoch = 0u64;
    let _ = out.write_all(b"ready\n");
    for line in BufReader::new(control).lines() {
        let Ok(line) = line else { break };
        let mut table = match shares.write() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let answer = match line.split_once(' ') {
            Some(("share", name)) => {
                epoch += 1;
                table.insert(name.to_string(), epoch);
                "ok\n"
            }
            Some(("unshare", name)) => {
                table.remove(name);
                "ok\n"
            }
            _ => "error unknown command\n",
        };
        drop(table);
        if out.write_all(answer.as_bytes()).is_err() {
            break;
        }
    }
    // seneschal has gone (StopServer, or crosd died): so does the server.
}

fn accept_loop(
    args: &ServerArgs,
    listener: UnixListener,
    shares: SharedShares,
    active: Arc<AtomicUsize>,
) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        match peer_uid(&conn) {
            Some(uid) if uid == args.accept_uid => {}
            other => {
                eprintln!("crosd-9s: refused a connection from uid {other:?}");
                continue;
            }
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("crosd-9s: refused a connection: {MAX_CONNECTIONS} are open");
            continue;
        }
        let (args, shares, active) = (args.clone(), shares.clone(), active.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve_connection(&args, conn, &shares) {
                eprintln!("crosd-9s: connection closed: {e}");
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn peer_uid(conn: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

/// A `p9` server rooted at the shares, with the guest's view of ids.
fn p9_server(args: &ServerArgs, root: &Path) -> std::io::Result<p9::Server> {
    p9::Server::with_config(p9::Config {
        root: root.into(),
        msize: MAX_MSIZE,
        uid_map: args.uid_map.clone(),
        gid_map: args.gid_map.clone(),
        ascii_casefold: false,
    })
}

/// One guest connection: frames in, the guard's verdict, the server's answer out.
pub fn serve_connection(
    args: &ServerArgs,
    conn: UnixStream,
    shares: &SharedShares,
) -> std::io::Result<()> {
    serve_stream(args, Path::new(SHARES), conn, shares)
}

/// [`serve_connection`] with the 9P root at `root` (tests serve a temporary directory).
pub fn serve_stream(
    args: &ServerArgs,
    root: &Path,
    conn: UnixStream,
    shares: &SharedShares,
) -> std::io::Result<()> {
    let mut server = p9_server(args, root)?;
    let mut reader = BufReader::with_capacity(256 * 1024, conn.try_clone()?);
    let mut writer = conn;
    let mut guard = Guard::new(MAX_MSIZE);
    let mut frame = Vec::new();
    let mut reply = Vec::with_capacity(64 * 1024);
    loop {
        let mut size = [0u8; 4];
        match reader.read_exact(&mut size) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_le_bytes(size);
        if (n as usize) < super::filter::HEADER || n > guard.msize() {
            return Err(std::io::Error::other(format!(
                "a frame of {n} bytes (msize {})",
                guard.msize()
            )));
        }
        frame.clear();
        frame.extend_from_slice(&size);
        frame.resize(n as usize, 0);
        reader.read_exact(&mut frame[4..])?;
        let verdict = {
            let table = shares.read().unwrap_or_else(|p| p.into_inner());
            guard.check(&mut frame, &table)
        };
        match verdict {
            Verdict::Forward => {
                reply.clear();
                server.handle_message(&mut Cursor::new(&frame[..]), &mut reply)?;
                guard.answered(&reply);
                writer.write_all(&reply)?;
            }
            Verdict::Refuse(errno) => writer.write_all(&rlerror(tag_of(&frame), errno))?,
            Verdict::Drop(why) => return Err(std::io::Error::other(why)),
        }
    }
}

/// `crosd-9s`'s arguments: `--dir D --uid U --gid G --accept-uid A [--map-uid HOST:GUEST]...
/// [--map-gid HOST:GUEST]...`.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<ServerArgs, String> {
    let mut it = args.into_iter();
    let mut dir = None;
    let (mut uid, mut gid, mut accept_uid) = (None, None, None);
    let (mut uid_map, mut gid_map) = (BTreeMap::new(), BTreeMap::new());
    let num = |v: Option<String>, flag: &str| -> Result<u32, String> {
        v.and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))
    };
    let pair = |v: Option<String>, flag: &str| -> Result<(u32, u32), String> {
        v.as_deref()
            .and_then(|v| v.split_once(':'))
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| format!("{flag} needs HOST:GUEST"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from),
            "--uid" => uid = Some(num(it.next(), "--uid")?),
            "--gid" => gid = Some(num(it.next(), "--gid")?),
            "--accept-uid" => accept_uid = Some(num(it.next(), "--accept-uid")?),
            "--map-uid" => {
                let (h, g) = pair(it.next(), "--map-uid")?;
                uid_map.insert(h, g);
            }
            "--map-gid" => {
                let (h, g) = pair(it.next(), "--map-gid")?;
                gid_map.insert(h, g);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(ServerArgs {
        dir: dir.ok_or("--dir is required")?,
        uid: uid.ok_or("--uid is required")?,
        gid: gid.ok_or("--gid is required")?,
        uid_map,
        gid_map,
        accept_uid: accept_uid.ok_or("--accept-uid is required")?,
    })
}
