//! Parsing /dev/kmsg records and syslog datagrams into [`LogRecord`]s.

use cros_messages::vmlog::{LogRecord, Severity};

/// Longest message kept; longer ones are cut (a guest program cannot make the host store more).
pub const MAX_MESSAGE: usize = 4096;

pub fn severity(level: u32) -> Severity {
    match level & 7 {
        0 => Severity::Emergency,
        1 => Severity::Alert,
        2 => Severity::Critical,
        3 => Severity::Error,
        4 => Severity::Warning,
        5 => Severity::Notice,
        6 => Severity::Info,
        _ => Severity::Debug,
    }
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_MESSAGE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// One /dev/kmsg record: `PRI,SEQ,USEC,FLAGS[,...];MESSAGE` (continuation lines after `\n`
/// start with a space and are dropped). `boot_wall_ns` converts the monotonic stamp to wall time.
pub fn parse_kmsg(record: &str, boot_wall_ns: u64) -> Option<LogRecord> {
    let (head, msg) = record.split_once(';')?;
    let mut fields = head.split(',');
    let pri: u32 = fields.next()?.parse().ok()?;
    let _seq = fields.next()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    let msg = msg.split('\n').next().unwrap_or("");
    Some(LogRecord {
        time_ns: boot_wall_ns.saturating_add(usec.saturating_mul(1000)),
        severity: severity(pri),
        source: "kernel".into(),
        message: clip(msg),
    })
}

/// One syslog datagram: `<PRI>[TIMESTAMP ]TAG[PID]: MESSAGE` (RFC 3164 as libc and busybox
/// `logger` send it). Whatever does not parse is kept whole as the message.
pub fn parse_syslog(datagram: &str, now_ns: u64) -> LogRecord {
    let text = datagram.trim_end_matches(['\n', '\0']);
    let (pri, rest) = match text.strip_prefix('<').and_then(|t| t.split_once('>')) {
        Some((p, rest)) => (p.parse::<u32>().unwrap_or(13), rest),
        None => (13, text),
    };
    // Skip an RFC 3164 timestamp "Mmm dd hh:mm:ss ".
    let rest = if rest.len() > 16
        && rest.as_bytes().get(3) == Some(&b' ')
        && rest.as_bytes().get(15) == Some(&b' ')
    {
        &rest[16..]
    } else {
        rest
    };
    let (source, message) = match rest.split_once(": ") {
        Some((tag, msg)) if !tag.is_empty() && tag.len() <= 64 && !tag.contains(' ') => {
            (tag.split('[').next().unwrap_or(tag).to_string(), msg)
        }
        _ => ("user".to_string(), rest),
    };
    LogRecord {
        time_ns: now_ns,
        severity: severity(pri),
        source: clip(&source),
        message: clip(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records() {
        let r = parse_kmsg(
            "6,339,5140900,-;NET: Registered PF_VSOCK protocol family\n SUBSYSTEM=net",
            1_000,
        )
        .unwrap();
        assert_eq!(r.severity, Severity::Info);
        assert_eq!(r.source, "kernel");
        assert_eq!(r.message, "NET: Registered PF_VSOCK protocol family");
        assert_eq!(r.time_ns, 1_000 + 5_140_900_000);
        assert!(parse_kmsg("garbage", 0).is_none());
        assert!(parse_kmsg("x,1,2,-;m", 0).is_none());
    }

    #[test]
    fn syslog_datagrams() {
        let r = parse_syslog("<11>Nov 26 20:01:02 vshd[42]: session failed\n", 7);
        assert_eq!(
            (r.severity, r.source.as_str(), r.message.as_str()),
            (Severity::Error, "vshd", "session failed")
        );
        let r = parse_syslog("<14>root: hello world", 7);
        assert_eq!(
            (r.severity, r.source.as_str(), r.message.as_str()),
            (Severity::Info, "root", "hello world")
        );
        let r = parse_syslog("no header at all", 7);
        assert_eq!(
            (r.source.as_str(), r.message.as_str()),
            ("user", "no header at all")
        );
        let long = format!("<14>t: {}", "é".repeat(5000));
        assert!(parse_syslog(&long, 0).message.len() <= MAX_MESSAGE);
    }
}
