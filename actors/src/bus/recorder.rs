//! The trace recorder: every routed envelope goes down a channel to a writer thread, so the
//! routing path pays for a clone and a channel send, never for encoding or file I/O.

use cros_messages::Envelope;
use cros_messages::trace::{TraceRecord, TraceWriter};
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("cannot create trace file {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot start the trace writer thread: {0}")]
    Thread(io::Error),
}

struct Record {
    mono_ns: u64,
    wall_ns: u64,
    env: Envelope,
}

/// A record to write, or `None`: write what came before, flush, and stop.
type Msg = Option<Record>;

/// Handle held by the bus; cheap to call from any thread.
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    start: Instant,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    /// Creates (truncates) `path`, writes the trace header and starts the writer thread.
    pub fn create(path: &Path) -> Result<Self, RecorderError> {
        let create_err = |source| RecorderError::Create {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(create_err)?;
        let mut writer = TraceWriter::new(BufWriter::new(file)).map_err(create_err)?;
        writer.flush().map_err(create_err)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let shown = path.display().to_string();
        let handle = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || write_loop(rx, writer, &shown))
            .map_err(RecorderError::Thread)?;
        Ok(Self {
            tx,
            start: Instant::now(),
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn record(&self, env: &Envelope) {
        let mono_ns = self.start.elapsed().as_nanos() as u64;
        let wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // After stop() the writer is gone and the record is dropped: shutdown is under way.
        let _ = self.tx.send(Some(Record {
            mono_ns,
            wall_ns,
            env: env.clone(),
        }));
    }

    /// Writes everything queued so far, flushes the file and stops the writer thread.
    pub fn stop(&self) {
        let _ = self.tx.send(None);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn write_loop(rx: mpsc::Receiver<Msg>, mut writer: TraceWriter<BufWriter<File>>, path: &str) {
    let mut failed = false;
    let mut write = |msg: Msg, writer: &mut TraceWriter<BufWriter<File>>| -> bool {
        match msg {
            None => false,
            Some(Record {
                mono_ns,
                wall_ns,
                env,
            }) => {
                if failed {
                    return true;
                }
                let res = TraceRecord::new(mono_ns, wall_ns, &env).and_then(|r| writer.append(&r));
                if let Err(e) = res {
                    // One failure (disk full) stops recording but never routing.
                    tracing::error!(trace = path, error = %e, "trace recording stopped");
                    failed = true;
                }
                true
            }
        }
    };
    // Block for the next record, then drain the burst and flush once: a reader of a live trace
    // sees every record soon, and a busy bus pays one flush per burst.
    while let Ok(msg) = rx.recv() {
        if !write(msg, &mut writer) {
            break;
        }
        let mut stop = false;
        while let Ok(msg) = rx.try_recv() {
            if !write(msg, &mut writer) {
                stop = true;
                break;
            }
        }
        if let Err(e) = writer.flush() {
            tracing::error!(trace = path, error = %e, "cannot flush trace");
        }
        if stop {
            break;
        }
    }
    let _ = writer.flush();
}
