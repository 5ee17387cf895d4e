//! Long disk operations: export a disk as a zstd stream, import one back.
//!
//! Each runs on its own thread in 1 MiB chunks, checks for cancellation between chunks, and is
//! recorded in STATE/disk_ops/<uuid>.json so that a crosd killed mid-operation can, on its next
//! start, remove the partial files and report the operation as failed. The disk is never
//! written in place: an import goes to a temporary file beside the disk, renamed over it only
//! once complete and verified. The export target and the import stream are open files (see
//! [`super::client_files`]): the client's own, passed over the socket, or, for an
//! administrator, a `<FILE>.partial` crosd made and renames once complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cros_hypervisor::fsutil::{commit_file, write_atomically};
use cros_messages::concierge::{DiskOpInfo, DiskOpKind, DiskOpState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Work unit: progress, cancellation and I/O all go by this much.
pub const CHUNK: usize = 1 << 20;
/// zstd level: level 1 is what `zstd -1` does, fast and good on the zero runs of a disk.
const ZSTD_LEVEL: i32 = 1;
/// Runs of zeros this long are left as holes when an import writes the disk.
const HOLE_GRAIN: usize = 64 << 10;
/// At most one progress event per this long.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
pub const INTERRUPTED: &str = "crosd stopped during the operation";

#[derive(Debug, thiserror::Error)]
pub enum DiskOpError {
    #[error("cancelled")]
    Cancelled,
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not a valid disk export: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{} does not match its digest {}: expected {expected}, got {actual}", path.display(), digest.display())]
    DigestMismatch {
        path: PathBuf,
        digest: PathBuf,
        expected: String,
        actual: String,
    },
    /// A step of a resize that the VMM or the guest refused.
    #[error("{step}: {reason}")]
    Step { step: &'static str, reason: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskOpError + use<> {
    let path = path.to_path_buf();
    move |source| DiskOpError::Io { what, path, source }
}

/// What is persisted per operation: its public state and the files to remove if it dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[doc(hidden)]
pub struct OpRecord {
    pub info: DiskOpInfo,
    pub partial_files: Vec<PathBuf>,
}

/// Parses one STATE/disk_ops/<uuid>.json, as [`recover`] reads it.
#[doc(hidden)]
pub fn parse_op_record(json: &[u8]) -> Result<OpRecord, serde_json::Error> {
    serde_json::from_slice(json)
}

/// Operations running in this process: a concierge restarted by its supervisor must not
/// treat its own live workers as interrupted, and finds them here to report and cancel.
static LIVE: Mutex<BTreeMap<String, Arc<Operation>>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<String, Arc<Operation>>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn ops_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("disk_ops")
}

/// `<path>.partial`: where an export (and every atomic write) goes before its rename.
pub use cros_hypervisor::fsutil::partial_path;

pub fn new_uuid() -> Result<String, DiskOpError> {
    let mut bytes = [0u8; 16];
    let urandom = Path::new("/dev/urandom");
    File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("read", urandom))?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string())
}

/// Publishes `DiskImageProgress { uuid, percent }`.
pub type ProgressFn = Box<dyn Fn(&str, u8) + Send + Sync>;

/// One export or import; shared by the worker thread and the concierge.
pub struct Operation {
    info: Mutex<DiskOpInfo>,
    partial_files: Vec<PathBuf>,
    record_path: PathBuf,
    cancel: AtomicBool,
    last_event: Mutex<Option<Instant>>,
    on_progress: ProgressFn,
}

impl Operation {
    /// Records a new RUNNING operation on disk; `partial_files` are removed if it fails.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        state_dir: &Path,
        uuid: String,
        kind: DiskOpKind,
        name: &str,
        owner_id: String,
        path: &Path,
        partial_files: Vec<PathBuf>,
        on_progress: ProgressFn,
    ) -> Result<Arc<Self>, DiskOpError> {
        let dir = ops_dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let op = Arc::new(Self {
            record_path: dir.join(format!("{uuid}.json")),
            info: Mutex::new(DiskOpInfo {
                uuid,
                kind,
                name: name.to_string(),
                path: path.display().to_string(),
                state: DiskOpState::Running,
                percent: 0,
                processed_bytes: 0,
                total_bytes: 0,
                message: String::new(),
                owner_id,
            }),
            partial_files,
            cancel: AtomicBool::new(false),
            last_event: Mutex::new(None),
            on_progress,
        });
        op.persist()?;
        Ok(op)
    }

    fn lock(&self) -> MutexGuard<'_, DiskOpInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn info(&self) -> DiskOpInfo {
        self.lock().clone()
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    fn check_cancelled(&self) -> Result<(), DiskOpError> {
        if self.cancel.load(Ordering::SeqCst) {
            Err(DiskOpError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Written atomically and durably (temp file, fsync, rename, fsync of the directory) so a
    /// crash never leaves half a record, or none where the operation had started.
    fn persist(&self) -> Result<(), DiskOpError> {
        let record = OpRecord {
            info: self.info(),
            partial_files: self.partial_files.clone(),
        };
        write_record(&self.record_path, &record)
    }

    pub fn progress(&self, done: u64, total: u64) {
        let percent = if total == 0 {
            100
        } else {
            (u128::from(done.min(total)) * 100 / u128::from(total)) as u8
        };
        let (uuid, changed) = {
            let mut info = self.lock();
            let changed = info.percent != percent;
            info.processed_bytes = done;
            info.total_bytes = total;
            info.percent = percent;
            (info.uuid.clone(), changed)
        };
        if !changed {
            return;
        }
        let mut last = self.last_event.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            *last = Some(Instant::now());
            (self.on_progress)(&uuid, percent);
            // How far it got survives a crash, for DiskImageStatus after a restart.
            if let Err(e) = self.persist() {
                tracing::warn!(error = %e, "cannot record disk operation progress");
            }
        }
    }

    /// Runs `work` on a new thread; records how it ended and cleans up after a failure.
    pub fn spawn(
        self: &Arc<Self>,
        work: impl FnOnce(&Operation) -> Result<(), DiskOpError> + Send + 'static,
    ) -> Result<(), DiskOpError> {
        let uuid = self.info().uuid;
        live().insert(uuid.clone(), self.clone());
        let op = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("disk-op-{}", &uuid[..8.min(uuid.len())]))
            .spawn(move || {
                let result = work(&op);
                op.finish(result);
                live().remove(&op.info().uuid);
            });
        if let Err(e) = spawned {
            live().remove(&uuid);
            let reason = e.to_string();
            self.finish(Err(DiskOpError::Io {
                what: "start a thread for",
                path: self.record_path.clone(),
                source: e,
            }));
            return Err(DiskOpError::Io {
                what: "start a thread for",
                path: self.record_path.clone(),
                source: io::Error::other(reason),
            });
        }
        Ok(())
    }

    pub fn finish(&self, result: Result<(), DiskOpError>) {
        let (state, message) = match result {
            Ok(()) => (DiskOpState::Done, String::new()),
            Err(DiskOpError::Cancelled) => (DiskOpState::Cancelled, "cancelled".to_string()),
            Err(e) => (DiskOpState::Failed, e.to_string()),
        };
        if state != DiskOpState::Done {
            remove_partials(&self.partial_files);
        } else {
            // Before the state says Done: whoever sees Done has been sent the 100% event.
            (self.on_progress)(&self.info().uuid, 100);
        }
        {
            let mut info = self.lock();
            info.state = state;
            info.message = message.clone();
            if state == DiskOpState::Done {
                info.percent = 100;
                info.processed_bytes = info.total_bytes;
            }
        }
        let info = self.info();
        tracing::info!(uuid = %info.uuid, kind = %info.kind, vm = %info.name, %state, %message, "disk operation finished");
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "cannot record the end of a disk operation");
        }
    }
}

fn write_record(path: &Path, record: &OpRecord) -> Result<(), DiskOpError> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| DiskOpError::Io {
        what: "encode",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    write_atomically(path, &json, 0o600).map_err(io_err("write", path))
}

fn remove_partials(files: &[PathBuf]) {
    for f in files {
        match std::fs::remove_file(f) {
            Ok(()) => tracing::info!(file = %f.display(), "removed a partial file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "cannot remove a partial file")
            }
        }
    }
}

/// The operation of this process with this uuid, while it runs.
pub fn live_op(uuid: &str) -> Option<Arc<Operation>> {
    live().get(uuid).cloned()
}

/// Reads every recorded operation. Ones still RUNNING that no thread of this process runs
/// were interrupted by a crash: their partial files are removed and they become FAILED.
pub fn recover(state_dir: &Path) -> Vec<DiskOpInfo> {
    let dir = ops_dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let live: Vec<String> = live().keys().cloned().collect();
    let mut ops = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let record: OpRecord = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| parse_op_record(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping an unreadable disk operation record");
                continue;
            }
        };
        let mut record = record;
        if record.info.state == DiskOpState::Running && !live.contains(&record.info.uuid) {
            tracing::warn!(uuid = %record.info.uuid, vm = %record.info.name, "disk operation interrupted by a crosd stop: failed");
            remove_partials(&record.partial_files);
            record.info.state = DiskOpState::Failed;
            record.info.message = INTERRUPTED.to_string();
            if let Err(e) = write_record(&path, &record) {
                tracing::warn!(error = %e, "cannot record a disk operation as failed");
            }
        }
        ops.push(record.info);
    }
    ops
}

/// Hashes what passes through it.
struct Hashing<T> {
    inner: T,
    hash: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The next data region at or after `pos` as `(start, end)`, by SEEK_DATA/SEEK_HOLE; the whole
/// rest of the file when the filesystem cannot say.
fn next_data(file: &File, pos: u64, size: u64) -> (u64, u64) {
    use nix::unistd::{Whence, lseek};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let Ok(off) = i64::try_from(pos) else {
        return (pos, size);
    };
    match lseek(fd, off, Whence::SeekData) {
        Ok(start) => {
            let start = (start as u64).min(size);
            let end = lseek(fd, start as i64, Whence::SeekHole)
                .map(|e| (e as u64).min(size))
                .unwrap_or(size);
            (start, end.max(start))
        }
        // ENXIO: only a hole is left.
        Err(nix::errno::Errno::ENXIO) => (size, size),
        Err(_) => (pos, size),
    }
}

static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// Writes disk `src` into `out` (labelled `dst` in messages) as one zstd frame (with a
/// checksum), and the SHA-256 of what it wrote into `digest` in `sha256sum` format, naming
/// `dst`'s file name. Both files are emptied first. Holes are fed to the compressor as zeros
/// without reading them.
pub fn export(
    src: &Path,
    out: &File,
    dst: &Path,
    digest: Option<(&File, &Path)>,
    op: &Operation,
) -> Result<(), DiskOpError> {
    let disk = File::open(src).map_err(io_err("open", src))?;
    let size = disk.metadata().map_err(io_err("stat", src))?.len();
    let tmp = dst;
    let mut out = out;
    out.set_len(0)
        .and_then(|_| std::io::Seek::rewind(&mut out))
        .map_err(io_err("empty", tmp))?;
    let mut enc = zstd::stream::write::Encoder::new(
        Hashing::new(BufWriter::with_capacity(CHUNK, out)),
        ZSTD_LEVEL,
    )
    .map_err(io_err("start compressing into", tmp))?;
    // One worker thread, as the `zstd` command uses by default: compression overlaps reading,
    // and blocks are split as `zstd -1` splits them. No content-size field: import reads the
    // stream to its end anyway, and without it the file is no larger than `zstd -1`'s.
    enc.multithread(1)
        .and_then(|_| enc.include_checksum(true))
        .and_then(|_| enc.include_contentsize(false))
        .and_then(|_| enc.set_pledged_src_size(Some(size)))
        .map_err(io_err("set up compression of", tmp))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    op.progress(0, size);
    while pos < size {
        let (data, hole) = next_data(&disk, pos, size);
        while pos < data {
            op.check_cancelled()?;
            let n = (data - pos).min(CHUNK as u64) as usize;
            enc.write_all(&ZEROS[..n]).map_err(io_err("write", tmp))?;
            pos += n as u64;
            op.progress(pos, size);
        }
        while pos < hole {
            op.check_cancelled()?;
            let n = (hole - pos).min(CHUNK as u64) as usize;
            disk.read_exact_at(&mut buf[..n], pos)
                .map_err(io_err("read", src))?;
            enc.write_all(&buf[..n]).map_err(io_err("write", tmp))?;
            pos += n as u64;
            op.progress(pos, size);
        }
    }
    op.check_cancelled()?;
    let hashing = enc.finish().map_err(io_err("finish", tmp))?;
    let sha = hex(&hashing.hash.finalize());
    let out = hashing.inner.into_inner().map_err(|e| DiskOpError::Io {
        what: "flush",
        path: tmp.to_path_buf(),
        source: e.into_error(),
    })?;
    out.sync_all().map_err(io_err("sync", tmp))?;
    if let Some((digest, label)) = digest {
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        digest
            .set_len(0)
            .and_then(|_| digest.write_all_at(format!("{sha}  {name}\n").as_bytes(), 0))
            .and_then(|_| digest.sync_all())
            .map_err(io_err("write", label))?;
    }
    Ok(())
}

/// The SHA-256 a `sha256sum`-style line names (its first word, 64 hex digits), lower case.
pub fn parse_digest(text: &str) -> Result<String, String> {
    let word = text.split_whitespace().next().unwrap_or("").to_lowercase();
    if word.len() != 64 || !word.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("it does not start with a SHA-256 of 64 hex digits".into());
    }
    Ok(word)
}

/// Counts the compressed bytes read, for progress.
struct Counting<R> {
    inner: R,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Fills `buf` unless the stream ends first; how much it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Decodes the zstd stream in `input` (labelled `src`) into `tmp` (sparse: zero runs stay
/// holes), checks the stream's own checksum and, when given, the file's SHA-256 against the
/// one `digest` (the SHA-256 and the digest file's label) names, and only then renames `tmp`
/// over `disk`. On any error `disk` is untouched.
pub fn import(
    input: &File,
    src: &Path,
    digest: Option<(&str, &Path)>,
    disk: &Path,
    tmp: &Path,
    op: &Operation,
) -> Result<(), DiskOpError> {
    let mut input = input;
    std::io::Seek::rewind(&mut input).map_err(io_err("read", src))?;
    let total = input.metadata().map_err(io_err("stat", src))?.len();
    let consumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = Hashing::new(Counting {
        inner: input,
        count: consumed.clone(),
    });
    let corrupt = |reason: String| DiskOpError::Corrupt {
        path: src.to_path_buf(),
        reason,
    };
    let mut dec = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(CHUNK, reader))
        .map_err(|e| corrupt(e.to_string()))?;
    let out = File::create(tmp).map_err(io_err("create", tmp))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    op.progress(0, total);
    loop {
        op.check_cancelled()?;
        let n = read_full(&mut dec, &mut buf).map_err(|e| corrupt(e.to_string()))?;
        if n == 0 {
            break;
        }
        for (i, block) in buf[..n].chunks(HOLE_GRAIN).enumerate() {
            if !is_zero(block) {
                out.write_all_at(block, pos + (i * HOLE_GRAIN) as u64)
                    .map_err(io_err("write", tmp))?;
            }
        }
        pos += n as u64;
        op.progress(consumed.load(Ordering::Relaxed), total);
    }
    // Whatever the decoder left unread still counts for the digest (and must not exist).
    let mut rest = dec.finish();
    let mut trailing = Vec::new();
    rest.read_to_end(&mut trailing)
        .map_err(io_err("read", src))?;
    if !trailing.is_empty() {
        return Err(corrupt(format!(
            "{} bytes of trailing data after the stream",
            trailing.len()
        )));
    }
    if pos == 0 {
        return Err(corrupt("the stream holds an empty disk".into()));
    }
    let hashing = rest.into_inner();
    if let Some((expected, digest)) = digest {
        let actual = hex(&hashing.hash.finalize());
        if actual != expected {
            return Err(DiskOpError::DigestMismatch {
                path: src.to_path_buf(),
                digest: digest.to_path_buf(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    out.set_len(pos).map_err(io_err("size", tmp))?;
    drop(out);
    op.check_cancelled()?;
    commit_file(tmp, disk).map_err(io_err("sync and rename into place", disk))
}

/// [`import`] of `stream`, as the bytes of an export file, into a disk inside `work_dir`, with
/// no digest (for the fuzzer: the decoder and checks over any input). The error is what the
/// client would read.
#[doc(hidden)]
pub fn fuzz_import(stream: &[u8], work_dir: &Path) -> Result<(), String> {
    let src = work_dir.join("export.zst");
    std::fs::write(&src, stream).map_err(|e| e.to_string())?;
    let op = Operation::create(
        work_dir,
        "fuzz".into(),
        DiskOpKind::Import,
        "fuzz",
        String::new(),
        &src,
        Vec::new(),
        Box::new(|_, _| {}),
    )
    .map_err(|e| e.to_string())?;
    let input = File::open(&src).map_err(|e| e.to_string())?;
    import(
        &input,
        &src,
        None,
        &work_dir.join("disk.img"),
        &work_dir.join("disk.img.partial"),
        &op,
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1 << 20;

    /// Incompressible bytes without a rand dependency (xorshift64).
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.extend_from_slice(&seed.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// A 64 MiB sparse disk with random data, text and a partial block here and there.
    fn sparse_disk(path: &Path) -> Vec<u8> {
        let f = File::create(path).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.write_all_at(&noise(3 * MIB as usize, 7), 5 * MIB)
            .unwrap();
        f.write_all_at("hello crosd\n".repeat(50_000).as_bytes(), 20 * MIB + 123)
            .unwrap();
        f.write_all_at(b"tail", 64 * MIB - 4).unwrap();
        drop(f);
        std::fs::read(path).unwrap()
    }

    fn op(state: &Path, kind: DiskOpKind, partial: Vec<PathBuf>) -> Arc<Operation> {
        let uuid = new_uuid().unwrap();
        Operation::create(
            state,
            uuid,
            kind,
            "termina",
            "0".into(),
            Path::new("/x"),
            partial,
            Box::new(|_, _| {}),
        )
        .unwrap()
    }

    /// `export` into new files at `dst` and `digest`, as a client would pass them.
    fn export_to(
        disk: &Path,
        dst: &Path,
        digest: Option<&Path>,
        op: &Operation,
    ) -> Result<(), DiskOpError> {
        let out = File::create(dst).unwrap();
        let digest = digest.map(|d| (File::create(d).unwrap(), d));
        export(disk, &out, dst, digest.as_ref().map(|(f, d)| (f, *d)), op)
    }

    /// `import` from the file at `src`, checked against the digest file at `digest`.
    fn import_from(
        src: &Path,
        digest: Option<&Path>,
        disk: &Path,
        tmp: &Path,
        op: &Operation,
    ) -> Result<(), DiskOpError> {
        let input = File::open(src).unwrap();
        let expected = digest.map(|d| parse_digest(&std::fs::read_to_string(d).unwrap()).unwrap());
        let digest = expected.as_deref().zip(digest);
        import(&input, src, digest, disk, tmp, op)
    }

    fn wait_done(op: &Operation) -> DiskOpInfo {
        // A bound only against a hung worker, not a performance check.
        for _ in 0..6000 {
            let info = op.info();
            // The state changes before finish() has recorded it and sent the last event; the
            // worker leaves the live list after that.
            if info.state != DiskOpState::Running && live_op(&info.uuid).is_none() {
                return info;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("operation did not finish: {:?}", op.info())
    }

    /// The record on disk after each call, read back as a fresh crosd would read it.
    fn record_on_disk(state: &Path, uuid: &str) -> OpRecord {
        let path = ops_dir(state).join(format!("{uuid}.json"));
        assert!(!partial_path(&path).exists(), "no temporary record left");
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    #[test]
    fn the_record_is_complete_on_disk_after_create_progress_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("out.zst.partial");
        let o = op(dir.path(), DiskOpKind::Export, vec![partial.clone()]);
        let uuid = o.info().uuid;
        let r = record_on_disk(dir.path(), &uuid);
        assert_eq!(r.info.state, DiskOpState::Running);
        assert_eq!(r.partial_files, vec![partial]);
        // The first progress step is recorded at once (later ones at most once a second).
        o.progress(5, 10);
        assert_eq!(record_on_disk(dir.path(), &uuid).info.percent, 50);
        o.finish(Ok(()));
        let r = record_on_disk(dir.path(), &uuid);
        assert_eq!((r.info.state, r.info.percent), (DiskOpState::Done, 100));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(ops_dir(dir.path()).join(format!("{uuid}.json")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn sparse_disk_round_trips_and_stays_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, export_file, digest) = (
            dir.path().join("disk.img"),
            dir.path().join("disk.zst"),
            dir.path().join("disk.zst.sha256"),
        );
        let original = sparse_disk(&disk);
        let ex = op(dir.path(), DiskOpKind::Export, vec![]);
        export_to(&disk, &export_file, Some(&digest), &ex).unwrap();
        let exported = std::fs::read(&export_file).unwrap();
        // 3 MiB of noise plus well-compressible text and zeros.
        assert!(exported.len() < 4 * MIB as usize, "{}", exported.len());
        let want = hex(&Sha256::digest(&exported));
        assert_eq!(
            std::fs::read_to_string(&digest).unwrap(),
            format!("{want}  disk.zst\n")
        );
        assert_eq!(ex.info().total_bytes, 64 * MIB);

        let imported = dir.path().join("new.img");
        let tmp = dir.path().join(".new.img.import");
        let im = op(dir.path(), DiskOpKind::Import, vec![tmp.clone()]);
        import_from(&export_file, Some(&digest), &imported, &tmp, &im).unwrap();
        assert!(!tmp.exists());
        assert!(std::fs::read(&imported).unwrap() == original);
        let meta = std::fs::metadata(&imported).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        assert!(
            meta.blocks() * 512 < 8 * MIB,
            "zero runs stay holes: {} bytes allocated",
            meta.blocks() * 512
        );
    }

    #[test]
    fn corrupted_or_truncated_stream_or_wrong_digest_leaves_the_old_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (src, export_file, digest) = (
            dir.path().join("src.img"),
            dir.path().join("src.zst"),
            dir.path().join("src.sha256"),
        );
        sparse_disk(&src);
        export_to(
            &src,
            &export_file,
            Some(&digest),
            &op(dir.path(), DiskOpKind::Export, vec![]),
        )
        .unwrap();
        let good = std::fs::read(&export_file).unwrap();
        let old_disk = dir.path().join("termina.img");
        std::fs::write(&old_disk, b"the old disk").unwrap();

        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let truncated = good[..good.len() - 100].to_vec();
        let cases: [(&str, Vec<u8>, Option<&Path>); 4] = [
            ("flipped", flipped, None),
            ("truncated", truncated, None),
            ("not zstd", b"plain text, not a stream".to_vec(), None),
            // A valid stream that is not the file the digest was made of.
            ("digest", good.clone(), Some(&digest)),
        ];
        for (what, bytes, dig) in cases {
            let bad = dir.path().join("bad.zst");
            std::fs::write(&bad, &bytes).unwrap();
            if what == "digest" {
                std::fs::write(&digest, format!("{}  x\n", "0".repeat(64))).unwrap();
            }
            let tmp = dir.path().join(".termina.img.import");
            let im = op(dir.path(), DiskOpKind::Import, vec![tmp.clone()]);
            let tmp2 = tmp.clone();
            let (old2, bad2, dig2) = (old_disk.clone(), bad.clone(), dig.map(Path::to_path_buf));
            im.spawn(move |op| import_from(&bad2, dig2.as_deref(), &old2, &tmp2, op))
                .unwrap();
            let info = wait_done(&im);
            assert_eq!(info.state, DiskOpState::Failed, "{what}: {info:?}");
            assert!(
                info.message.contains("bad.zst"),
                "{what}: the message names the file: {}",
                info.message
            );
            if what == "digest" {
                assert!(info.message.contains("digest"), "{}", info.message);
            }
            assert_eq!(std::fs::read(&old_disk).unwrap(), b"the old disk", "{what}");
            assert!(!tmp.exists(), "{what}: the temporary file is removed");
        }
    }

    #[test]
    fn cancelled_export_removes_its_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        sparse_disk(&disk);
        let dst = dir.path().join("out.zst");
        let partial = partial_path(&dst);
        let ex = op(dir.path(), DiskOpKind::Export, vec![partial.clone()]);
        ex.cancel();
        // Into the partial file, as crosd exports for an administrator.
        let (d, o) = (disk.clone(), partial.clone());
        ex.spawn(move |op| export_to(&d, &o, None, op)).unwrap();
        let info = wait_done(&ex);
        assert_eq!(info.state, DiskOpState::Cancelled);
        assert!(!dst.exists() && !partial.exists());
        // The record on disk says so too.
        let recovered = recover(dir.path());
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].state, DiskOpState::Cancelled);
    }

    #[test]
    fn running_operation_of_a_dead_crosd_becomes_failed_and_loses_its_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("out.zst.partial");
        std::fs::write(&partial, b"half an export").unwrap();
        // Recorded RUNNING, and no thread of this process works on it: as after a kill -9.
        let ex = op(dir.path(), DiskOpKind::Export, vec![partial.clone()]);
        let uuid = ex.info().uuid;
        let recovered = recover(dir.path());
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].uuid, uuid);
        assert_eq!(recovered[0].state, DiskOpState::Failed);
        assert_eq!(recovered[0].message, INTERRUPTED);
        assert!(!partial.exists());
        // Persisted: a second start reads FAILED without redoing anything.
        let again = recover(dir.path());
        assert_eq!(again[0].state, DiskOpState::Failed);
    }

    #[test]
    fn a_restarted_concierge_leaves_live_operations_of_its_process_alone() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("live.partial");
        std::fs::write(&partial, b"being written").unwrap();
        let running = op(dir.path(), DiskOpKind::Export, vec![partial.clone()]);
        let uuid = running.info().uuid;
        let (go, wait) = std::sync::mpsc::channel::<()>();
        running
            .spawn(move |_| {
                let _ = wait.recv();
                Ok(())
            })
            .unwrap();
        // What a concierge restarted by its supervisor does while the worker still runs.
        let recovered = recover(dir.path());
        assert_eq!(recovered[0].state, DiskOpState::Running);
        assert!(partial.exists());
        assert!(live_op(&uuid).is_some_and(|l| Arc::ptr_eq(&l, &running)));
        go.send(()).unwrap();
        assert_eq!(wait_done(&running).state, DiskOpState::Done);
    }

    #[test]
    fn progress_events_come_at_most_once_a_second_and_end_at_100() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        sparse_disk(&disk);
        let events: Arc<Mutex<Vec<(String, u8, Instant)>>> = Arc::default();
        let sink = events.clone();
        let ex = Operation::create(
            dir.path(),
            new_uuid().unwrap(),
            DiskOpKind::Export,
            "termina",
            "0".into(),
            Path::new("/x"),
            vec![],
            Box::new(move |uuid, percent| {
                sink.lock()
                    .unwrap()
                    .push((uuid.to_string(), percent, Instant::now()))
            }),
        )
        .unwrap();
        let (d, o) = (disk.clone(), dir.path().join("out.zst"));
        ex.spawn(move |op| export_to(&d, &o, None, op)).unwrap();
        assert_eq!(wait_done(&ex).state, DiskOpState::Done);
        let events = events.lock().unwrap();
        let uuid = ex.info().uuid;
        assert!(events.iter().all(|(u, ..)| *u == uuid));
        // The first change is reported at once, the end always; in between, a second apart.
        assert_eq!(events.first().map(|e| e.1), Some(1), "{events:?}");
        assert_eq!(events.last().map(|e| e.1), Some(100), "{events:?}");
        let rate_limited = &events[..events.len() - 1];
        for pair in rate_limited.windows(2) {
            assert!(pair[1].2 - pair[0].2 >= PROGRESS_EVERY, "{events:?}");
            assert!(pair[1].1 > pair[0].1, "{events:?}");
        }
    }

    #[test]
    fn fuzz_entry_imports_a_valid_stream_and_names_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = [b"disk".repeat(1000), vec![0; 4096]].concat();
        let stream = zstd::encode_all(&data[..], 1).unwrap();
        fuzz_import(&stream, dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("disk.img")).unwrap(), data);

        let err = fuzz_import(&stream[..stream.len() / 2], dir.path()).unwrap_err();
        assert!(err.contains("not a valid disk export"), "{err}");
        // The disk imported before is left as it was.
        assert_eq!(std::fs::read(dir.path().join("disk.img")).unwrap(), data);
    }

    #[test]
    fn digest_file_must_hold_a_sha256() {
        assert!(parse_digest("xyz  file\n").is_err());
        assert_eq!(
            parse_digest(&format!("{}  file\n", "AB".repeat(32))).unwrap(),
            "ab".repeat(32)
        );
    }
}
