//! The guard in front of the `p9` crate's server: every 9P2000.L request a guest sends is read
//! here first, checked, and only then handed to `p9::Server::handle_message`.
//!
//! The `p9` crate does the file work (as Crostini's 9s does) but trusts its client more than we
//! may: it follows `/` inside names, walks `..`, keeps any mode bits it is given and keeps every
//! fid a client makes. This guard, a pure function of the bytes and of what it has seen on the
//! connection, refuses what a well-behaved kernel client never sends and bounds what it may:
//!
//! - names (walk elements, create, mkdir, link, rename, unlink, symlink and mknod names) are
//!   1..=255 bytes, without `/` or NUL, and never `.` or `..` (the Linux client resolves those
//!   itself and never sends them);
//! - a walk has at most 16 elements (MAXWELEM), a connection at most [`MAX_FIDS`] fids;
//! - setuid and setgid bits are cleared from the modes of setattr, create and mkdir;
//! - every fid is tracked to the share (first path element under the root) it lives in, so that
//!   once a share is withdrawn every request on its fids answers EIO (the guest sees an I/O
//!   error on its open files, never a hang);
//! - a frame that does not parse, or is larger than the negotiated msize, is [`Verdict::Drop`]:
//!   the connection is closed, the server goes on.
//!
//! The message layouts are those of the Linux kernel's include/net/9p/9p.h and the 9P2000.L
//! protocol description; the `p9` crate keeps its own wire types private, so the few fields read
//! here are decoded by hand.

use std::collections::HashMap;

/// 9P2000.L message types (include/net/9p/9p.h).
pub mod msg {
    pub const RLERROR: u8 = 7;
    pub const TSTATFS: u8 = 8;
    pub const TLOPEN: u8 = 12;
    pub const TLCREATE: u8 = 14;
    pub const TSYMLINK: u8 = 16;
    pub const TMKNOD: u8 = 18;
    pub const TRENAME: u8 = 20;
    pub const TREADLINK: u8 = 22;
    pub const TGETATTR: u8 = 24;
    pub const TSETATTR: u8 = 26;
    pub const TXATTRWALK: u8 = 30;
    pub const TXATTRCREATE: u8 = 32;
    pub const TREADDIR: u8 = 40;
    pub const TFSYNC: u8 = 50;
    pub const TLOCK: u8 = 52;
    pub const TGETLOCK: u8 = 54;
    pub const TLINK: u8 = 70;
    pub const TMKDIR: u8 = 72;
    pub const TRENAMEAT: u8 = 74;
    pub const TUNLINKAT: u8 = 76;
    pub const TVERSION: u8 = 100;
    pub const RVERSION: u8 = 101;
    pub const TAUTH: u8 = 102;
    pub const TATTACH: u8 = 104;
    pub const RATTACH: u8 = 105;
    pub const TFLUSH: u8 = 108;
    pub const TWALK: u8 = 110;
    pub const RWALK: u8 = 111;
    pub const TREAD: u8 = 116;
    pub const TWRITE: u8 = 118;
    pub const TCLUNK: u8 = 120;
    pub const TREMOVE: u8 = 122;
}

/// size[4] type[1] tag[2].
pub const HEADER: usize = 7;
/// The largest element count of one Twalk (MAXWELEM).
pub const MAX_WALK: usize = 16;
/// The longest name accepted (NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Fids one connection may hold at once: each is an open descriptor in the server.
pub const MAX_FIDS: usize = 4096;
/// The smallest msize a client may negotiate (the `p9` crate's own minimum).
pub const MIN_MSIZE: u32 = 256;
/// setuid and setgid: never set through the share.
const SUID_SGID: u32 = 0o6000;
const SETATTR_MODE: u32 = 0x1;

/// What the guard decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the (possibly rewritten) frame to the server.
    Forward,
    /// Answer the request with this errno without serving it.
    Refuse(i32),
    /// Close the connection: the frame is garbage.
    Drop(String),
}

/// Where a fid lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// The root of the export: the directory of shares.
    Root,
    /// Inside share `name`, as it was when the fid was made (`epoch`).
    Share { name: String, epoch: u64 },
}

/// The shares a server exports now, by name, with the epoch each was (re)added in: a fid made
/// under an earlier epoch of a name is stale even when the name is shared again.
pub type Shares = HashMap<String, u64>;

/// What a request will change in the fid table once the server answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    None,
    /// Tattach: `fid` becomes a root fid on success.
    Attach {
        fid: u32,
    },
    /// Twalk of `n` elements from a fid at `from` to `newfid`.
    Walk {
        newfid: u32,
        place: Place,
        n: usize,
    },
    /// Tclunk/Tremove: the fid is gone whatever the answer.
    Forget {
        fid: u32,
    },
    /// Tversion: every fid is gone.
    Reset,
}

/// One connection's guard.
#[derive(Debug)]
pub struct Guard {
    msize: u32,
    fids: HashMap<u32, Place>,
    pending: Pending,
}

/// A malformed frame.
#[derive(Debug)]
struct Malformed(&'static str);

/// Reads the fields of a frame body, refusing to run past its end.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn skip(&mut self, n: usize) -> Result<(), Malformed> {
        self.take(n).map(|_| ())
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(Malformed("a field runs past the end of the frame"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// A 9P string: len[2] bytes.
    fn string(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Why a name is refused, as an errno; None when it is a plain name.
pub fn check_name(name: &[u8]) -> Option<i32> {
    if name.is_empty() {
        return Some(libc::EINVAL);
    }
    if name.len() > MAX_NAME {
        return Some(libc::ENAMETOOLONG);
    }
    if name == b"." || name == b".." {
        return Some(libc::EPERM);
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Some(libc::EINVAL);
    }
    None
}

impl Default for Guard {
    fn default() -> Self {
        Self::new(MIN_MSIZE)
    }
}

impl Guard {
    /// A guard for a fresh connection; frames may be `max_msize` bytes until Tversion says less.
    pub fn new(max_msize: u32) -> Self {
        Self {
            msize: max_msize.max(MIN_MSIZE),
            fids: HashMap::new(),
            pending: Pending::None,
        }
    }

    /// The largest frame accepted now.
    pub fn msize(&self) -> u32 {
        self.msize
    }

    /// Fids the connection holds.
    pub fn fid_count(&self) -> usize {
        self.fids.len()
    }

    /// Checks one whole frame (size field included), rewriting mode bits in place. `shares` is
    /// what the server exports now.
    pub fn check(&mut self, frame: &mut [u8], shares: &Shares) -> Verdict {
        self.pending = Pending::None;
        match self.check_frame(frame, shares) {
            Ok(v) => v,
            Err(Malformed(why)) => Verdict::Drop(why.to_string()),
        }
    }

    fn check_frame(&mut self, frame: &mut [u8], shares: &Shares) -> Result<Verdict, Malformed> {
        if frame.len() < HEADER {
            return Err(Malformed("a frame shorter than its header"));
        }
        let size = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if size as usize != frame.len() {
            return Err(Malformed("a frame whose size field is not its length"));
        }
        if size > self.msize {
            return Err(Malformed("a frame larger than the negotiated msize"));
        }
        let ty = frame[4];
        let mut f = Fields {
            buf: frame,
            pos: HEADER,
        };
        use msg::*;
        let verdict = match ty {
            TVERSION => {
                let msize = f.u32()?;
                f.string()?;
                if msize >= MIN_MSIZE {
                    self.pending = Pending::Reset;
                }
                Verdict::Forward
            }
            TAUTH => Verdict::Forward,
            TFLUSH => {
                f.u16()?;
                Verdict::Forward
            }
            TATTACH => {
                let fid = f.u32()?;
                f.u32()?;
                f.string()?;
                f.string()?;
                f.u32()?;
                if !self.fids.contains_key(&fid) && self.fids.len() >= MAX_FIDS {
                    return Ok(Verdict::Refuse(libc::EMFILE));
                }
                self.pending = Pending::Attach { fid };
                Verdict::Forward
            }
            TWALK => {
                let fid = f.u32()?;
                let newfid = f.u32()?;
                let n = usize::from(f.u16()?);
                if n > MAX_WALK {
                    return Ok(Verdict::Refuse(libc::E2BIG));
                }
                let mut first = None;
                for i in 0..n {
                    let name = f.string()?;
                    if let Some(errno) = check_name(name) {
                        return Ok(Verdict::Refuse(errno));
                    }
                    if i == 0 {
                        first = Some(name);
                    }
                }
                let Some(from) = self.live(fid, shares)? else {
                    return Ok(Verdict::Refuse(libc::EIO));
                };
                let place = match (&from, first) {
                    (Place::Root, Some(name)) => {
                        let name = String::from_utf8_lossy(name).into_owned();
                        match shares.get(&name) {
                            Some(&epoch) => Place::Share { name, epoch },
                            // Not shared: the server answers ENOENT; nothing to track.
                            None => Place::Root,
                        }
                    }
                    (p, _) => p.clone(),
                };
                if newfid != fid && !self.fids.contains_key(&newfid) && self.fids.len() >= MAX_FIDS
                {
                    return Ok(Verdict::Refuse(libc::EMFILE));
                }
                self.pending = Pending::Walk { newfid, place, n };
                Verdict::Forward
            }
            TCLUNK | TREMOVE => {
                let fid = f.u32()?;
                self.pending = Pending::Forget { fid };
                if ty == TREMOVE && self.live(fid, shares)?.is_none() {
                    return Ok(Verdict::Refuse(libc::EIO));
                }
                Verdict::Forward
            }
            TREAD | TSTATFS | TLOPEN | TREADLINK | TGETATTR | TREADDIR | TFSYNC | TLOCK
            | TGETLOCK | TWRITE => self.on_fids(&[f.u32()?], shares)?,
            TXATTRWALK => {
                let fid = f.u32()?;
                f.u32()?;
                f.string()?;
                self.on_fids(&[fid], shares)?
            }
            TXATTRCREATE => {
                let fid = f.u32()?;
                f.string()?;
                self.on_fids(&[fid], shares)?
            }
            TSETATTR => {
                let fid = f.u32()?;
                let valid = f.u32()?;
                let mode_at = f.pos;
                let mode = f.u32()?;
                f.skip(4 + 4 + 8 * 5)?;
                if valid & SETATTR_MODE != 0 {
                    clear_mode_bits(frame, mode_at, mode);
                }
                self.on_fids(&[fid], shares)?
            }
            TLCREATE | TMKDIR => {
                let fid = f.u32()?;
                let name = f.string()?;
                if ty == TLCREATE {
                    f.u32()?; // flags
                }
                let mode_at = f.pos;
                let mode = f.u32()?;
                f.u32()?; // gid
                if let Some(errno) = check_name(name) {
                    return Ok(Verdict::Refuse(errno));
                }
                clear_mode_bits(frame, mode_at, mode);
                self.on_fids(&[fid], shares)?
            }
            TSYMLINK | TMKNOD | TUNLINKAT => {
                let fid = f.u32()?;
                let name = f.string()?;
                if let Some(errno) = check_name(name) {
                    return Ok(Verdict::Refuse(errno));
                }
                self.on_fids(&[fid], shares)?
            }
            TRENAME => {
                let fid = f.u32()?;
                let dfid = f.u32()?;
                let name = f.string()?;
                if let Some(errno) = check_name(name) {
                    return Ok(Verdict::Refuse(errno));
                }
                self.on_fids(&[fid, dfid], shares)?
            }
            TLINK => {
                let dfid = f.u32()?;
                let fid = f.u32()?;
                let name = f.string()?;
                if let Some(errno) = check_name(name) {
                    return Ok(Verdict::Refuse(errno));
                }
                self.on_fids(&[dfid, fid], shares)?
            }
            TRENAMEAT => {
                let old = f.u32()?;
                let oldname = f.string()?;
                let new = f.u32()?;
                let newname = f.string()?;
                if let Some(errno) = check_name(oldname).or_else(|| check_name(newname)) {
                    return Ok(Verdict::Refuse(errno));
                }
                self.on_fids(&[old, new], shares)?
            }
            _ => return Err(Malformed("an unknown or reply message type")),
        };
        Ok(verdict)
    }

    /// EIO when any of `fids` is in a withdrawn share; otherwise the server decides.
    fn on_fids(&self, fids: &[u32], shares: &Shares) -> Result<Verdict, Malformed> {
        for &fid in fids {
            if self.live(fid, shares)?.is_none() {
                return Ok(Verdict::Refuse(libc::EIO));
            }
        }
        Ok(Verdict::Forward)
    }

    /// Where `fid` lives, None when its share was withdrawn. An unknown fid is the server's to
    /// refuse (EBADF), so it counts as live here.
    fn live(&self, fid: u32, shares: &Shares) -> Result<Option<Place>, Malformed> {
        Ok(match self.fids.get(&fid) {
            None | Some(Place::Root) => Some(Place::Root),
            Some(Place::Share { name, epoch }) => match shares.get(name) {
                Some(e) if e == epoch => Some(Place::Share {
                    name: name.clone(),
                    epoch: *epoch,
                }),
                _ => None,
            },
        })
    }

    /// Updates the fid table from the server's answer to the request last checked.
    pub fn answered(&mut self, reply: &[u8]) {
        let ty = reply.get(4).copied();
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::None => {}
            Pending::Reset => {
                if ty == Some(msg::RVERSION) {
                    self.fids.clear();
                    if let Some(b) = reply.get(HEADER..HEADER + 4) {
                        let msize = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        self.msize = self.msize.min(msize).max(MIN_MSIZE);
                    }
                }
            }
            Pending::Attach { fid } => {
                if ty == Some(msg::RATTACH) {
                    self.fids.insert(fid, Place::Root);
                }
            }
            Pending::Walk { newfid, place, n } => {
                // Rwalk: nwqid[2]; the new fid exists only when every element was walked.
                let walked = reply
                    .get(HEADER..HEADER + 2)
                    .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
                if ty == Some(msg::RWALK) && walked == Some(n) {
                    self.fids.insert(newfid, place);
                }
            }
            Pending::Forget { fid } => {
                self.fids.remove(&fid);
            }
        }
    }
}

fn clear_mode_bits(frame: &mut [u8], at: usize, mode: u32) {
    let cleared = mode & !SUID_SGID;
    frame[at..at + 4].copy_from_slice(&cleared.to_le_bytes());
}

/// An Rlerror frame answering `tag` with `errno`.
pub fn rlerror(tag: u16, errno: i32) -> [u8; 11] {
    let mut out = [0u8; 11];
    out[0..4].copy_from_slice(&11u32.to_le_bytes());
    out[4] = msg::RLERROR;
    out[5..7].copy_from_slice(&tag.to_le_bytes());
    out[7..11].copy_from_slice(&(errno as u32).to_le_bytes());
    out
}

/// The tag of a frame of at least [`HEADER`] bytes.
pub fn tag_of(frame: &[u8]) -> u16 {
    u16::from_le_bytes([frame[5], frame[6]])
}

/// Builders of request frames, for tests and the fuzz target's seeds.
pub mod build {
    use super::msg;

    /// A frame of type `ty` and `tag` around `body`.
    pub fn frame(ty: u8, tag: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(7 + body.len());
        out.extend_from_slice(&((7 + body.len()) as u32).to_le_bytes());
        out.push(ty);
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Appends a 9P string.
    pub fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s);
    }

    pub fn version(msize: u32) -> Vec<u8> {
        let mut b = msize.to_le_bytes().to_vec();
        string(&mut b, b"9P2000.L");
        frame(msg::TVERSION, 0xffff, &b)
    }

    pub fn attach(tag: u16, fid: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        string(&mut b, b"root");
        string(&mut b, b"");
        b.extend_from_slice(&0u32.to_le_bytes());
        frame(msg::TATTACH, tag, &b)
    }

    pub fn walk(tag: u16, fid: u32, newfid: u32, names: &[&[u8]]) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&newfid.to_le_bytes());
        b.extend_from_slice(&(names.len() as u16).to_le_bytes());
        for n in names {
            string(&mut b, n);
        }
        frame(msg::TWALK, tag, &b)
    }

    /// Tlopen with Linux open flags (9P's match Linux's on x86).
    pub fn lopen(tag: u16, fid: u32, flags: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&flags.to_le_bytes());
        frame(msg::TLOPEN, tag, &b)
    }

    pub fn lcreate(tag: u16, fid: u32, name: &[u8], flags: u32, mode: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        string(&mut b, name);
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&mode.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        frame(msg::TLCREATE, tag, &b)
    }

    pub fn read(tag: u16, fid: u32, offset: u64, count: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        frame(msg::TREAD, tag, &b)
    }

    pub fn write(tag: u16, fid: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        frame(msg::TWRITE, tag, &b)
    }

    pub fn clunk(tag: u16, fid: u32) -> Vec<u8> {
        frame(msg::TCLUNK, tag, &fid.to_le_bytes())
    }

    pub fn getattr(tag: u16, fid: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&0x7ffu64.to_le_bytes());
        frame(msg::TGETATTR, tag, &b)
    }

    /// Tsetattr of the mode only.
    pub fn chmod(tag: u16, fid: u32, mode: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&mode.to_le_bytes());
        b.extend_from_slice(&[0u8; 4 + 4 + 8 * 5]);
        frame(msg::TSETATTR, tag, &b)
    }

    /// Tsetattr of the size only (truncate).
    pub fn truncate(tag: u16, fid: u32, size: u64) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&[0u8; 12]);
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&[0u8; 8 * 4]);
        frame(msg::TSETATTR, tag, &b)
    }

    pub fn mkdir(tag: u16, dfid: u32, name: &[u8], mode: u32) -> Vec<u8> {
        let mut b = dfid.to_le_bytes().to_vec();
        string(&mut b, name);
        b.extend_from_slice(&mode.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        frame(msg::TMKDIR, tag, &b)
    }

    pub fn mknod(tag: u16, dfid: u32, name: &[u8], mode: u32) -> Vec<u8> {
        let mut b = dfid.to_le_bytes().to_vec();
        string(&mut b, name);
        b.extend_from_slice(&mode.to_le_bytes());
        b.extend_from_slice(&[0u8; 12]);
        frame(msg::TMKNOD, tag, &b)
    }

    pub fn unlinkat(tag: u16, dfid: u32, name: &[u8]) -> Vec<u8> {
        let mut b = dfid.to_le_bytes().to_vec();
        string(&mut b, name);
        b.extend_from_slice(&0u32.to_le_bytes());
        frame(msg::TUNLINKAT, tag, &b)
    }

    pub fn renameat(tag: u16, old: u32, oldname: &[u8], new: u32, newname: &[u8]) -> Vec<u8> {
        let mut b = old.to_le_bytes().to_vec();
        string(&mut b, oldname);
        b.extend_from_slice(&new.to_le_bytes());
        string(&mut b, newname);
        frame(msg::TRENAMEAT, tag, &b)
    }

    pub fn symlink(tag: u16, dfid: u32, name: &[u8], target: &[u8]) -> Vec<u8> {
        let mut b = dfid.to_le_bytes().to_vec();
        string(&mut b, name);
        string(&mut b, target);
        b.extend_from_slice(&0u32.to_le_bytes());
        frame(msg::TSYMLINK, tag, &b)
    }

    pub fn readdir(tag: u16, fid: u32, offset: u64, count: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        frame(msg::TREADDIR, tag, &b)
    }

    pub fn readlink(tag: u16, fid: u32) -> Vec<u8> {
        frame(msg::TREADLINK, tag, &fid.to_le_bytes())
    }

    pub fn statfs(tag: u16, fid: u32) -> Vec<u8> {
        frame(msg::TSTATFS, tag, &fid.to_le_bytes())
    }

    pub fn fsync(tag: u16, fid: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        frame(msg::TFSYNC, tag, &b)
    }

    pub fn xattrwalk(tag: u16, fid: u32, newfid: u32, name: &[u8]) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&newfid.to_le_bytes());
        string(&mut b, name);
        frame(msg::TXATTRWALK, tag, &b)
    }

    pub fn link(tag: u16, dfid: u32, fid: u32, name: &[u8]) -> Vec<u8> {
        let mut b = dfid.to_le_bytes().to_vec();
        b.extend_from_slice(&fid.to_le_bytes());
        string(&mut b, name);
        frame(msg::TLINK, tag, &b)
    }
}

/// The fuzz target's entry: the `p9` decoder over the bytes, then the bytes as a stream of
/// frames through one guard, with the server's answers simulated (every request succeeds),
/// over a fixed set of shares; nothing may panic and the fid table stays bounded.
#[doc(hidden)]
pub fn fuzz_frames(data: &[u8]) {
    // The `p9` crate's own decoder, which the server runs on every frame the guard forwards.
    p9::fuzzing::tframe_decode(data);
    let shares: Shares = [("a".to_string(), 1), ("b".to_string(), 2)].into();
    let mut guard = Guard::new(1 << 16);
    let mut rest = data;
    while rest.len() >= 4 {
        let size = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let size = size.clamp(4, rest.len());
        let mut frame = rest[..size].to_vec();
        rest = &rest[size..];
        match guard.check(&mut frame, &shares) {
            Verdict::Forward => {
                // An answer of the matching type with a zero count field.
                let ty = frame.get(4).copied().unwrap_or(0).wrapping_add(1);
                let mut reply = build::frame(ty, tag_of(&frame), &[0; 8]);
                if ty == msg::RWALK {
                    let n = frame.get(HEADER + 8..HEADER + 10).unwrap_or(&[0, 0]);
                    reply[HEADER..HEADER + 2].copy_from_slice(n);
                }
                guard.answered(&reply);
            }
            Verdict::Refuse(_) => {}
            Verdict::Drop(_) => guard = Guard::new(1 << 16),
        }
        assert!(guard.fid_count() <= MAX_FIDS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares() -> Shares {
        [("docs".to_string(), 1)].into()
    }

    fn ok(g: &mut Guard, mut frame: Vec<u8>, reply: &[u8]) -> Vec<u8> {
        assert_eq!(g.check(&mut frame, &shares()), Verdict::Forward);
        g.answered(reply);
        frame
    }

    #[test]
    fn names_are_plain() {
        assert_eq!(check_name(b"file.txt"), None);
        assert_eq!(check_name(b".."), Some(libc::EPERM));
        assert_eq!(check_name(b"."), Some(libc::EPERM));
        assert_eq!(check_name(b"a/b"), Some(libc::EINVAL));
        assert_eq!(check_name(b""), Some(libc::EINVAL));
        assert_eq!(check_name(b"a\0b"), Some(libc::EINVAL));
        assert_eq!(check_name(&[b'x'; 256]), Some(libc::ENAMETOOLONG));
        assert_eq!(check_name(&[b'x'; 255]), None);
    }

    #[test]
    fn walks_are_bounded_and_dotdot_refused() {
        let mut g = Guard::new(8192);
        let s = shares();
        let mut f = build::walk(1, 0, 1, &[b"docs", b".."]);
        assert_eq!(g.check(&mut f, &s), Verdict::Refuse(libc::EPERM));
        let mut f = build::walk(1, 0, 1, &[b"docs/../.."]);
        assert_eq!(g.check(&mut f, &s), Verdict::Refuse(libc::EINVAL));
        let names: Vec<&[u8]> = vec![b"x"; 17];
        let mut f = build::walk(1, 0, 1, &names);
        assert_eq!(g.check(&mut f, &s), Verdict::Refuse(libc::E2BIG));
    }

    #[test]
    fn garbage_drops_the_connection() {
        let mut g = Guard::new(8192);
        let s = shares();
        for mut bad in [
            vec![1, 2, 3],
            build::frame(200, 1, &[]),
            // A walk whose name runs past the end.
            {
                let mut f = build::walk(1, 0, 1, &[b"docs"]);
                let n = f.len();
                f.truncate(n - 2);
                f[0..4].copy_from_slice(&((n - 2) as u32).to_le_bytes());
                f
            },
            // Size field lies.
            {
                let mut f = build::clunk(1, 0);
                f[0] = 200;
                f
            },
        ] {
            assert!(matches!(g.check(&mut bad, &s), Verdict::Drop(_)), "{bad:?}");
        }
        let mut big = build::write(1, 0, 0, &vec![0; 9000]);
        assert!(matches!(g.check(&mut big, &s), Verdict::Drop(_)));
    }

    #[test]
    fn setuid_bits_are_cleared() {
        let mut g = Guard::new(8192);
        let f = ok(&mut g, build::chmod(1, 0, 0o4755), &[]);
        assert_eq!(f, build::chmod(1, 0, 0o755));
        let f = ok(&mut g, build::lcreate(1, 0, b"x", 0, 0o6777), &[]);
        assert_eq!(f, build::lcreate(1, 0, b"x", 0, 0o777));
        let f = ok(&mut g, build::mkdir(1, 0, b"d", 0o2775), &[]);
        assert_eq!(f, build::mkdir(1, 0, b"d", 0o775));
    }

    #[test]
    fn fids_of_a_withdrawn_share_answer_eio() {
        let mut g = Guard::new(8192);
        let rattach = build::frame(msg::RATTACH, 1, &[0; 13]);
        ok(&mut g, build::attach(1, 0), &rattach);
        let mut rwalk = build::frame(msg::RWALK, 1, &[2, 0]);
        rwalk.extend_from_slice(&[0; 26]);
        ok(&mut g, build::walk(1, 0, 1, &[b"docs", b"f"]), &rwalk);
        assert_eq!(g.fid_count(), 2);
        let mut f = build::read(1, 1, 0, 10);
        assert_eq!(g.check(&mut f, &shares()), Verdict::Forward);
        // Withdrawn, then shared again: the old fid stays dead.
        for now in [Shares::new(), [("docs".to_string(), 2)].into()] {
            let mut f = build::read(1, 1, 0, 10);
            assert_eq!(g.check(&mut f, &now), Verdict::Refuse(libc::EIO));
            let mut f = build::walk(1, 1, 2, &[]);
            assert_eq!(g.check(&mut f, &now), Verdict::Refuse(libc::EIO));
        }
        // The root is never withdrawn; clunk always passes and forgets.
        let mut f = build::getattr(1, 0);
        assert_eq!(g.check(&mut f, &Shares::new()), Verdict::Forward);
        let mut f = build::clunk(1, 1);
        assert_eq!(g.check(&mut f, &Shares::new()), Verdict::Forward);
        g.answered(&[]);
        assert_eq!(g.fid_count(), 1);
    }

    #[test]
    fn a_flood_of_fids_is_refused_at_the_bound() {
        let mut g = Guard::new(8192);
        let mut rwalk = build::frame(msg::RWALK, 1, &[1, 0]);
        rwalk.extend_from_slice(&[0; 13]);
        for fid in 1..=MAX_FIDS as u32 {
            ok(&mut g, build::walk(1, 0, fid, &[b"docs"]), &rwalk);
        }
        assert_eq!(g.fid_count(), MAX_FIDS);
        let mut f = build::walk(1, 0, MAX_FIDS as u32 + 1, &[b"docs"]);
        assert_eq!(g.check(&mut f, &shares()), Verdict::Refuse(libc::EMFILE));
        let mut f = build::attach(1, MAX_FIDS as u32 + 2);
        assert_eq!(g.check(&mut f, &shares()), Verdict::Refuse(libc::EMFILE));
        // Reusing a fid it holds is fine; a clunk makes room.
        let mut f = build::walk(1, 0, 1, &[b"docs"]);
        assert_eq!(g.check(&mut f, &shares()), Verdict::Forward);
        ok(&mut g, build::clunk(1, 5), &[]);
        let mut f = build::walk(1, 0, MAX_FIDS as u32 + 1, &[b"docs"]);
        assert_eq!(g.check(&mut f, &shares()), Verdict::Forward);
    }

    #[test]
    fn a_failed_walk_makes_no_fid() {
        let mut g = Guard::new(8192);
        let rlerror = rlerror(1, libc::ENOENT);
        ok(&mut g, build::walk(1, 0, 1, &[b"docs"]), &rlerror);
        assert_eq!(g.fid_count(), 0);
        let mut partial = build::frame(msg::RWALK, 1, &[1, 0]);
        partial.extend_from_slice(&[0; 13]);
        ok(&mut g, build::walk(1, 0, 1, &[b"docs", b"nope"]), &partial);
        assert_eq!(g.fid_count(), 0);
    }

    #[test]
    fn fuzz_entry_survives_garbage() {
        fuzz_frames(&[]);
        fuzz_frames(&[0xff; 64]);
        let mut stream = build::attach(1, 0);
        stream.extend(build::walk(2, 0, 1, &[b"a", b"x"]));
        stream.extend(build::read(3, 1, 0, 100));
        stream.extend([5, 0, 0, 0, 1]);
        fuzz_frames(&stream);
    }
}
