//! Reading crosd trace files: `crosmsg trace show` and `crosmsg trace stats` (replay is in
//! [`replay`]).
//!
//! A corrupt or truncated trace yields the records before the damage plus the error naming
//! its byte offset, so the readable part is never lost.

pub mod replay;

use cros_messages::trace::{TraceError, TraceReader, TraceRecord};
use cros_messages::{Addr, BodyKind, Envelope};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::Duration;

/// One readable record and where it starts in the file.
pub struct Entry {
    pub offset: u64,
    pub record: TraceRecord,
}

/// The readable records of a trace, and the error that stopped reading, if any.
pub struct Trace {
    pub entries: Vec<Entry>,
    pub error: Option<TraceError>,
}

impl Trace {
    /// Reads `path`. Only a file that cannot be opened or has no valid header is an `Err`.
    pub fn read(path: &Path) -> Result<Self, TraceError> {
        let file = File::open(path)?;
        let reader = TraceReader::new(BufReader::new(file))?;
        let mut entries = Vec::new();
        let mut error = None;
        for item in reader {
            match item {
                Ok((offset, record)) => entries.push(Entry { offset, record }),
                Err(e) => error = Some(e),
            }
        }
        Ok(Self { entries, error })
    }

    /// The records whose envelope decodes, with it (a record's envelope bytes can be damaged
    /// even when the record frame is intact).
    pub fn envelopes(&self) -> impl Iterator<Item = (&Entry, Envelope)> {
        self.entries
            .iter()
            .filter_map(|e| e.record.decode_envelope().ok().map(|env| (e, env)))
    }
}

/// `2026-11-26T20:02:05.123456Z` from nanoseconds since the Unix epoch (UTC).
pub fn format_wall(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// One line per record: time, from → to, type, ids.
pub fn show_line(entry: &Entry) -> String {
    let r = &entry.record;
    let mut line = format!(
        "{} +{:.6}s {} -> {} {}",
        format_wall(r.wall_ns),
        r.mono_ns as f64 / 1e9,
        r.from,
        r.to,
        r.msg_type
    );
    match r.decode_envelope() {
        Ok(env) => {
            let _ = write!(line, " id={} trace={}", env.id, env.trace);
            if let Some(to) = env.reply_to {
                let _ = write!(line, " reply_to={to}");
            }
        }
        Err(e) => {
            let _ = write!(line, " (envelope does not decode: {e})");
        }
    }
    line
}

/// The record as one JSON object (the envelope in full when it decodes).
pub fn show_json(entry: &Entry) -> serde_json::Value {
    let r = &entry.record;
    let mut v = serde_json::json!({
        "offset": entry.offset,
        "time": format_wall(r.wall_ns),
        "wall_ns": r.wall_ns,
        "mono_ns": r.mono_ns,
        "from": r.from.to_string(),
        "to": r.to.to_string(),
        "type": r.msg_type,
    });
    match r.decode_envelope() {
        Ok(env) => v["envelope"] = serde_json::to_value(&env).unwrap_or(serde_json::Value::Null),
        Err(e) => v["decode_error"] = serde_json::Value::String(e.to_string()),
    }
    v
}

/// Latency figures of one request type.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Records per message type.
    pub counts: BTreeMap<String, usize>,
    /// Request → reply latency per request type.
    pub latency: BTreeMap<String, Latency>,
    /// Requests whose reply is not in the trace.
    pub unanswered: usize,
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[Duration], q: f64) -> Duration {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn stats(trace: &Trace) -> Stats {
    let mut s = Stats::default();
    for e in &trace.entries {
        *s.counts.entry(e.record.msg_type.clone()).or_default() += 1;
    }
    // Requests by (asker, id) → (time, type); a reply names its asker in `to`.
    let mut open: HashMap<(Addr, u64), (u64, String)> = HashMap::new();
    let mut samples: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for (entry, env) in trace.envelopes() {
        match env.reply_to {
            None if env.body.kind() == BodyKind::Request => {
                open.insert(
                    (env.from.clone(), env.id),
                    (entry.record.mono_ns, entry.record.msg_type.clone()),
                );
            }
            Some(id) => {
                if let Some((t0, ty)) = open.remove(&(env.to.clone(), id)) {
                    let d = Duration::from_nanos(entry.record.mono_ns.saturating_sub(t0));
                    samples.entry(ty).or_default().push(d);
                }
            }
            None => {}
        }
    }
    s.unanswered = open.len();
    for (ty, mut v) in samples {
        v.sort();
        s.latency.insert(
            ty,
            Latency {
                count: v.len(),
                p50: quantile(&v, 0.50),
                p99: quantile(&v, 0.99),
                max: v[v.len() - 1],
            },
        );
    }
    s
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1}us")
    } else if us < 1e6 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.3}s", us / 1e6)
    }
}

/// The report `crosmsg trace stats` prints.
pub fn render_stats(s: &Stats) -> String {
    let mut out = String::new();
    let width = s
        .counts
        .keys()
        .chain(s.latency.keys())
        .map(String::len)
        .max()
        .unwrap_or(4)
        .max(12);
    let _ = writeln!(out, "{:<width$}  {:>7}", "MESSAGE TYPE", "COUNT");
    for (ty, n) in &s.counts {
        let _ = writeln!(out, "{ty:<width$}  {n:>7}");
    }
    let total: usize = s.counts.values().sum();
    let _ = writeln!(out, "{:<width$}  {total:>7}", "total");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<width$}  {:>7}  {:>10}  {:>10}  {:>10}",
        "REQUEST -> REPLY", "COUNT", "P50", "P99", "MAX"
    );
    for (ty, l) in &s.latency {
        let _ = writeln!(
            out,
            "{ty:<width$}  {:>7}  {:>10}  {:>10}  {:>10}",
            l.count,
            fmt_dur(l.p50),
            fmt_dur(l.p99),
            fmt_dur(l.max)
        );
    }
    if s.unanswered > 0 {
        let _ = writeln!(
            out,
            "{} request(s) without a reply in the trace",
            s.unanswered
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_is_utc_calendar_time() {
        assert_eq!(format_wall(0), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29T12:34:56.789Z, a leap day.
        assert_eq!(
            format_wall(1_709_210_096_789_000_000),
            "2024-02-29T12:34:56.789000Z"
        );
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_micros(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_micros(99));
        assert_eq!(quantile(&v[..1], 0.99), Duration::from_micros(1));
    }
}
