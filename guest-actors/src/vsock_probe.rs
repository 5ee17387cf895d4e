//! The wire protocol of the vsock test guest (`vsock_echo`, run as /init by the QEMU end-to-end
//! test and benchmark), shared with the host side so both agree on ports, payloads and markers.
//!
//! Guest listeners (ports from the kernel command line, defaults below):
//! - echo: every byte read is written back, until EOF;
//! - sink: reads `<n>\n`, then n bytes, answers `<n>\n` (host → guest throughput);
//! - source: reads `<n>\n`, writes n bytes of [`pattern`] (guest → host throughput);
//! - control: line commands: `ping` → `pong`; `dial <port> <n>` → the guest connects to host
//!   (cid 2) `<port>`, writes `<n>\n` and n bytes of [`pattern`], reads `<n>\n` back, and answers
//!   `dialed <n>`; `quit` → `bye`, then the guest powers off.
//!
//! At boot, with `crosd.dial_port=P`, the guest connects to host port P, writes
//! `CROSD-DIAL <n>\n` and n bytes of [`pattern`], reads n bytes that must equal them, and prints
//! a [`MARKER`] line with the result on the console.

/// Prefix of every line the test guest prints on the console.
pub const MARKER: &str = "CROSD-GUEST";

pub const DEFAULT_ECHO_PORT: u32 = 5000;
pub const DEFAULT_SINK_PORT: u32 = 5001;
pub const DEFAULT_SOURCE_PORT: u32 = 5002;
pub const DEFAULT_CONTROL_PORT: u32 = 5003;
/// Where the initramfs holds the modules and their `load-order` file.
pub const DEFAULT_MODULES_DIR: &str = "/lib/modules/crosd";
/// The guest powers itself off after this long, so a lost host never leaves a VM running.
pub const DEFAULT_TIMEOUT_S: u32 = 600;
/// Bytes the guest sends on its boot-time dial.
pub const DIAL_PAYLOAD_LEN: usize = 100_000;
/// Largest `<n>` a sink, source or dial request may ask for (the guest is the test's peer, but
/// its parsers still refuse absurd sizes).
pub const MAX_TRANSFER: u64 = 16 << 30;

/// Deterministic payload byte at offset `i` (period 251, a prime, so shifted or dropped chunks
/// of power-of-two size never line up by accident).
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Fills `buf` with the pattern starting at stream offset `offset`.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// The first `len` pattern bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(&mut v, 0);
    v
}

/// The pattern at any stream offset without recomputing it: one precomputed buffer a period
/// longer than the largest slice, sliced at `offset % 251`.
pub struct PatternBuf {
    buf: Vec<u8>,
    max_len: usize,
}

impl PatternBuf {
    /// Serves slices of up to `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        PatternBuf {
            buf: pattern(max_len + 251),
            max_len,
        }
    }

    /// The `len` pattern bytes at stream offset `offset` (`len` is capped at `max_len`).
    pub fn slice(&self, offset: u64, len: usize) -> &[u8] {
        let start = (offset % 251) as usize;
        &self.buf[start..start + len.min(self.max_len)]
    }
}

/// Parses a decimal size line (`"4096"`, trailing newline allowed) no larger than
/// [`MAX_TRANSFER`].
pub fn parse_size(line: &str) -> Option<u64> {
    line.trim().parse().ok().filter(|n| *n <= MAX_TRANSFER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_periodic_and_offset_consistent() {
        let p = pattern(600);
        assert_eq!(p[0], 0);
        assert_eq!(p[250], 250);
        assert_eq!(p[251], 0);
        let mut tail = vec![0; 100];
        fill_pattern(&mut tail, 500);
        assert_eq!(&tail[..], &p[500..600]);
    }

    #[test]
    fn pattern_buf_matches_the_pattern_at_any_offset() {
        let p = pattern(2000);
        let pb = PatternBuf::new(300);
        for off in [0u64, 1, 250, 251, 252, 999, 1700] {
            assert_eq!(pb.slice(off, 300), &p[off as usize..off as usize + 300]);
        }
        assert_eq!(pb.slice(5, 1000).len(), 300);
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(parse_size("4096\n"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(&(MAX_TRANSFER + 1).to_string()), None);
    }
}
