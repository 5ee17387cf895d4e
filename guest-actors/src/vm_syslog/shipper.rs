//! Ships batches of records to the host, reconnecting when the host goes away. The queue is
//! bounded: if the host cannot take logs, the oldest are dropped and the drop is counted.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, read_message, write_message};
use cros_messages::vmlog::{LogRecord, Severity, VmlogRequest};
use cros_messages::{Addr, Body, Envelope, FrameError};

pub const MAX_QUEUED: usize = 10_000;
pub const MAX_BATCH: usize = 256;
const BATCH_WAIT: Duration = Duration::from_millis(100);

/// Sends one batch and waits for the host's reply.
pub fn send_batch<S: Read + Write>(
    stream: &mut S,
    me: &Addr,
    id: u64,
    records: Vec<LogRecord>,
) -> Result<(), FrameError> {
    let env = Envelope::new(
        id,
        0,
        me.clone(),
        Addr::host("vmlog_forwarder"),
        Body::VmlogForwarder(VmlogRequest::Records { records }),
    );
    write_message(stream, &env, MAX_CONTROL_FRAME)?;
    let _reply: Envelope = read_message(stream, MAX_CONTROL_FRAME)?;
    Ok(())
}

/// Runs forever: drains `rx` into batches and ships them over streams from `connect`.
pub fn run<S: Read + Write>(
    rx: Receiver<LogRecord>,
    me: Addr,
    mut connect: impl FnMut() -> std::io::Result<S>,
) {
    let mut queue: VecDeque<LogRecord> = VecDeque::new();
    let mut dropped = 0u64;
    let mut stream: Option<S> = None;
    let mut id = 0u64;
    loop {
        match rx.recv_timeout(BATCH_WAIT) {
            Ok(rec) => {
                queue.push_back(rec);
                while let Ok(rec) = rx.try_recv() {
                    queue.push_back(rec);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if queue.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => {}
        }
        while queue.len() > MAX_QUEUED {
            queue.pop_front();
            dropped += 1;
        }
        if queue.is_empty() {
            continue;
        }
        if stream.is_none() {
            stream = connect()
                .ok()
                .and_then(|mut s| handshake(&mut s, &me).ok().map(|_| s));
        }
        let Some(s) = stream.as_mut() else {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        if dropped > 0 {
            let note = LogRecord {
                time_ns: queue.front().map(|r| r.time_ns).unwrap_or(0),
                severity: Severity::Warning,
                source: "vm_syslog".into(),
                message: format!("{dropped} log records dropped while the host was unreachable"),
            };
            queue.push_front(note);
            dropped = 0;
        }
        let n = queue.len().min(MAX_BATCH);
        let batch: Vec<LogRecord> = queue.iter().take(n).cloned().collect();
        id += 1;
        match send_batch(s, &me, id, batch) {
            Ok(()) => {
                queue.drain(..n);
            }
            Err(_) => stream = None,
        }
    }
}
