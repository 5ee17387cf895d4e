//! Bounded logs: the guest's serial console, the guest syslog, and reading their ends.
//!
//! A guest can write its console flat out, and the console log lives on the run directory's
//! tmpfs. So the VMM never writes the log file itself: it writes into a pipe ([`ConsolePipe`],
//! opened by the VMM as `/dev/fd/N`), and a thread of ours ([`ConsoleLogger`]) copies the pipe
//! into a [`RotatingLog`]: `console.log` up to [`MAX_CONSOLE_BYTES`], then renamed to
//! `console.log.1` and started afresh, so the two files together hold at most twice the bound.
//! A guest that writes faster than the thread copies is slowed by the full pipe, never buffered.
//! [`tail`] reads the last lines by seeking to the end, never the whole file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

/// `console.log` is rotated once the next write would take it past this.
pub const MAX_CONSOLE_BYTES: u64 = 1 << 20;
/// How much of a log's end [`tail`] reads at most, per file.
pub const TAIL_WINDOW: u64 = 64 << 10;
/// One read from the console pipe.
const PUMP_CHUNK: usize = 64 << 10;

/// `<path>.1`: where a rotated log goes.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// An append-only log file kept under `max` bytes by renaming it to `<path>.1` (replacing the
/// previous one) before a write that would cross the bound. A single write larger than `max`
/// still goes whole into a fresh file.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max: u64,
    mode: u32,
    file: File,
    len: u64,
}

impl RotatingLog {
    /// Opens (creating with `mode`) the log at `path`, appending to what is there.
    pub fn open(path: &Path, max: u64, mode: u32) -> io::Result<Self> {
        let file = Self::open_file(path, mode, false)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max,
            mode,
            file,
            len,
        })
    }

    fn open_file(path: &Path, mode: u32, truncate: bool) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.create(true).mode(mode);
        if truncate {
            o.write(true).truncate(true);
        } else {
            o.append(true);
        }
        o.open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.len > 0 && self.len + bytes.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        self.file = Self::open_file(&self.path, self.mode, true)?;
        self.len = 0;
        Ok(())
    }
}

/// The last `max` bytes of `path` (fewer when the file is shorter), read by seeking to them.
pub fn read_end(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut out = Vec::with_capacity((len - start) as usize);
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// The complete lines at the end of `path`, read from at most [`TAIL_WINDOW`] bytes; a line
/// cut by the window's start is left out. Empty when the file cannot be read.
fn end_lines(path: &Path) -> Vec<String> {
    let Ok(bytes) = read_end(path, TAIL_WINDOW) else {
        return Vec::new();
    };
    let whole = std::fs::metadata(path).is_ok_and(|m| m.len() <= bytes.len() as u64);
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if !whole && !lines.is_empty() {
        lines.remove(0);
    }
    lines
}

/// The last `lines` lines of the log at `path`, taking the older ones from `<path>.1` when
/// the log was rotated just before; for error messages. Reads only the files' ends.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut last = end_lines(path);
    let short_and_whole =
        last.len() < lines && std::fs::metadata(path).is_ok_and(|m| m.len() <= TAIL_WINDOW);
    if short_and_whole {
        let mut older = end_lines(&rotated_path(path));
        older.append(&mut last);
        last = older;
    }
    last[last.len().saturating_sub(lines)..].join("\n")
}

/// The pipe a VMM writes the guest console into. Create it, [`ConsolePipe::pass_to`] the VMM's
/// command with [`ConsolePipe::vmm_path`] as its console file, spawn, then
/// [`ConsolePipe::start_logging`].
#[derive(Debug)]
pub struct ConsolePipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl ConsolePipe {
    pub fn new() -> io::Result<Self> {
        // Close-on-exec: only the VMM, through pass_to, may keep the write end; a process
        // another thread starts meanwhile must not, or the logger would never see the end.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Self { read, write })
    }

    /// The file name under which the VMM opens the pipe's write end.
    pub fn vmm_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/fd/{}", self.write.as_raw_fd()))
    }

    /// Lets the process `cmd` starts inherit the write end under the same descriptor number.
    pub fn pass_to(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.write.as_raw_fd();
        // SAFETY: fcntl is async-signal-safe; it changes the child's descriptor table only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Closes our write end (the VMM holds its own now) and starts the thread that copies the
    /// console into `log` (rotated at `max`). The thread ends when the VMM has exited.
    pub fn start_logging(self, log: &Path, max: u64) -> io::Result<ConsoleLogger> {
        let Self { read, write } = self;
        drop(write);
        let mut out = RotatingLog::open(log, max, 0o600)?;
        let mut pipe = File::from(read);
        let thread = std::thread::Builder::new()
            .name("console-log".into())
            .spawn(move || copy_console(&mut pipe, &mut out))?;
        Ok(ConsoleLogger {
            thread: Some(thread),
        })
    }
}

/// Copies until the VMM closes the pipe. A write error is logged once and the copying goes on
/// (discarding), so that a full disk never blocks the guest on a full pipe.
fn copy_console(pipe: &mut File, out: &mut RotatingLog) {
    let mut buf = vec![0u8; PUMP_CHUNK];
    let mut failing = false;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(log = %out.path().display(), error = %e, "cannot read the console pipe");
                return;
            }
        };
        match out.append(&buf[..n]) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(log = %out.path().display(), error = %e, "cannot write the console log; discarding console output until it works again");
            }
            Err(_) => {}
        }
    }
}

/// The thread copying a VM's console into its log.
#[derive(Debug)]
pub struct ConsoleLogger {
    thread: Option<JoinHandle<()>>,
}

impl ConsoleLogger {
    /// Waits until everything the VMM wrote is in the log. Call it once the VMM has exited
    /// (otherwise it waits for that).
    pub fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn rotating_log_stays_under_its_bound_and_keeps_one_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = RotatingLog::open(&path, 100, 0o600).unwrap();
        for i in 0..50 {
            log.append(format!("line {i:04}\n").as_bytes()).unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= 100, "{len} bytes after line {i}");
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let older = std::fs::read_to_string(rotated_path(&path)).unwrap();
        assert!(current.ends_with("line 0049\n"), "{current}");
        // 10-byte lines, 100-byte files: the rotated file holds the ten lines before.
        assert_eq!(older.lines().count(), 10);
        assert_eq!(
            older.lines().last().unwrap(),
            format!("line {:04}", 49 - current.lines().count())
        );
        // A reopened log counts what is there: the full file is rotated before the next line.
        assert_eq!(current.len(), 100);
        drop(log);
        let mut log = RotatingLog::open(&path, 100, 0o600).unwrap();
        log.append(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        let older = std::fs::read_to_string(rotated_path(&path)).unwrap();
        assert!(older.ends_with("line 0049\n"), "{older}");
    }

    #[test]
    fn tail_reads_the_last_lines_and_reaches_into_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        assert_eq!(tail(&path, 5), "", "a missing log is empty");
        // Bigger than the tail window, with long lines: only the end is read.
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("boot message number {i}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            tail(&path, 3),
            "boot message number 19997\nboot message number 19998\nboot message number 19999"
        );
        // Just rotated: two lines here, the rest from console.log.1.
        std::fs::rename(&path, rotated_path(&path)).unwrap();
        std::fs::write(&path, "fresh 1\nfresh 2\n").unwrap();
        assert_eq!(
            tail(&path, 4),
            "boot message number 19998\nboot message number 19999\nfresh 1\nfresh 2"
        );
        // A last line without its newline still counts.
        std::fs::write(&path, "a\nb\nc").unwrap();
        assert_eq!(tail(&path, 2), "b\nc");
    }

    #[test]
    fn read_end_returns_only_the_last_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_end(&path, 4).unwrap(), b"6789");
        assert_eq!(read_end(&path, 100).unwrap(), b"0123456789");
    }

    /// A stand-in VMM (a shell writing flat out to the console file it is given) fills the
    /// console: the log stays bounded and ends with the writer's last lines.
    #[test]
    fn a_flat_out_writer_keeps_the_console_log_bounded_and_its_tail_current() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let pipe = ConsolePipe::new().unwrap();
        let mut cmd = Command::new("sh");
        // 8 MiB of console, eight times the bound, through the path a VMM is given.
        cmd.arg("-c")
            .arg(
                "exec >\"$1\"; pad=$(printf '%080d' 0); i=0; while [ $i -lt 80000 ]; do \
                 echo \"console line $i: $pad\"; i=$((i+1)); done; echo last line",
            )
            .arg("sh")
            .arg(pipe.vmm_path())
            .stdin(Stdio::null());
        pipe.pass_to(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut logger = pipe.start_logging(&log, MAX_CONSOLE_BYTES).unwrap();
        assert!(child.wait().unwrap().success());
        logger.finish();
        let len = std::fs::metadata(&log).unwrap().len();
        let older = std::fs::metadata(rotated_path(&log)).unwrap().len();
        assert!(len <= MAX_CONSOLE_BYTES, "console.log is {len} bytes");
        assert!(older <= MAX_CONSOLE_BYTES, "console.log.1 is {older} bytes");
        let last = tail(&log, 2);
        assert!(
            last.starts_with("console line 79999: ") && last.ends_with("\nlast line"),
            "{last}"
        );
    }
}
