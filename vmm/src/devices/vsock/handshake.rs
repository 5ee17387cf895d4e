//! The host side's `CONNECT <port>\n` line (Firecracker's hybrid vsock handshake).

/// Longest line accepted: "CONNECT 4294967295\n" is 19 bytes; a little slack for nothing else.
pub const MAX_CONNECT_LINE: usize = 32;
const PREFIX: &[u8] = b"CONNECT ";

#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeProgress {
    /// No newline yet and nothing wrong so far.
    Incomplete,
    /// A valid line naming this guest port.
    Connect(u32),
    /// The line is malformed; the client gets closed.
    Invalid(String),
}

/// Checks the bytes a host client sent so far.
pub fn parse_connect_line(line: &[u8]) -> HandshakeProgress {
    let n = line.len().min(PREFIX.len());
    if line[..n] != PREFIX[..n] {
        return HandshakeProgress::Invalid(format!(
            "expected `CONNECT <port>\\n`, got {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    let Some(end) = line.iter().position(|b| *b == b'\n') else {
        if line.len() >= MAX_CONNECT_LINE {
            return HandshakeProgress::Invalid(format!(
                "CONNECT line longer than {MAX_CONNECT_LINE} bytes"
            ));
        }
        return HandshakeProgress::Incomplete;
    };
    let digits = &line[PREFIX.len().min(end)..end];
    let port = std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u32>().ok());
    match port {
        Some(port) if end >= PREFIX.len() => HandshakeProgress::Connect(port),
        _ => HandshakeProgress::Invalid(format!(
            "bad port in CONNECT line {:?}",
            String::from_utf8_lossy(&line[..end])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_valid_line_only_when_complete() {
        assert_eq!(parse_connect_line(b"CONN"), HandshakeProgress::Incomplete);
        assert_eq!(
            parse_connect_line(b"CONNECT 88"),
            HandshakeProgress::Incomplete
        );
        assert_eq!(
            parse_connect_line(b"CONNECT 8888\n"),
            HandshakeProgress::Connect(8888)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967295\n"),
            HandshakeProgress::Connect(u32::MAX)
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            &b"GET / HTTP/1.1\n"[..],
            b"connect 1\n",
            b"CONNECT\n",
            b"CONNECT \n",
            b"CONNECT -1\n",
            b"CONNECT 4294967296\n",
            b"CONNECT 12x\n",
            b"CONNECT 1 2\n",
            b"CONNECT 0000000000000000000000001",
        ] {
            assert!(
                matches!(parse_connect_line(bad), HandshakeProgress::Invalid(_)),
                "{:?} should be rejected",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
