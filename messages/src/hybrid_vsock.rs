//! The text handshake of a hybrid vsock socket (the Firecracker convention): a host client
//! connects to the VM's Unix socket, writes `CONNECT <port>\n` and reads `OK <hostport>\n`;
//! from then on the stream reaches the guest listener on `<port>`.

/// Longest reply line a client accepts (`OK 4294967295` fits with room to spare).
pub const MAX_REPLY_LINE: usize = 32;

/// The line a host client sends to reach guest port `port`.
pub fn connect_request(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// The host-side port from an `OK <hostport>` reply line (newline already stripped); `None` for
/// anything else.
pub fn parse_connect_reply(line: &str) -> Option<u32> {
    line.strip_prefix("OK ")?.parse().ok()
}

/// Longest request line a server accepts: `CONNECT 4294967295\n` is 19 bytes.
pub const MAX_REQUEST_LINE: usize = 32;
const REQUEST_PREFIX: &[u8] = b"CONNECT ";

/// The line a server (the VMM's vsock device) answers once the guest accepted.
pub fn connect_reply(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

/// How far a server got reading a client's `CONNECT <port>\n`.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectRequest {
    /// No newline yet and nothing wrong so far.
    Incomplete,
    /// A valid line naming this guest port.
    Port(u32),
    /// The line is malformed (the reason names what was wrong); the client gets closed.
    Invalid(String),
}

/// Checks the bytes a client sent so far (the server reads byte by byte, so no stream byte
/// after the newline is consumed with the line).
pub fn parse_connect_request(line: &[u8]) -> ConnectRequest {
    let n = line.len().min(REQUEST_PREFIX.len());
    if line[..n] != REQUEST_PREFIX[..n] {
        return ConnectRequest::Invalid(format!(
            "expected `CONNECT <port>\\n`, got {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    let Some(end) = line.iter().position(|b| *b == b'\n') else {
        if line.len() >= MAX_REQUEST_LINE {
            return ConnectRequest::Invalid(format!(
                "CONNECT line longer than {MAX_REQUEST_LINE} bytes"
            ));
        }
        return ConnectRequest::Incomplete;
    };
    let digits = &line[REQUEST_PREFIX.len().min(end)..end];
    let port = std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u32>().ok());
    match port {
        Some(port) if end >= REQUEST_PREFIX.len() => ConnectRequest::Port(port),
        _ => ConnectRequest::Invalid(format!(
            "bad port in CONNECT line {:?}",
            String::from_utf8_lossy(&line[..end])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_round_trips_the_client_side() {
        let req = connect_request(8888);
        assert_eq!(
            parse_connect_request(req.as_bytes()),
            ConnectRequest::Port(8888)
        );
        let reply = connect_reply(1 << 30);
        assert_eq!(parse_connect_reply(reply.trim_end()), Some(1 << 30));
    }

    #[test]
    fn request_is_accepted_only_when_complete() {
        assert_eq!(parse_connect_request(b"CONN"), ConnectRequest::Incomplete);
        assert_eq!(
            parse_connect_request(b"CONNECT 88"),
            ConnectRequest::Incomplete
        );
        assert_eq!(
            parse_connect_request(b"CONNECT 4294967295\n"),
            ConnectRequest::Port(u32::MAX)
        );
    }

    #[test]
    fn malformed_requests_are_invalid() {
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
                matches!(parse_connect_request(bad), ConnectRequest::Invalid(_)),
                "{:?} should be rejected",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_and_reply() {
        assert_eq!(connect_request(9001), "CONNECT 9001\n");
        assert_eq!(parse_connect_reply("OK 1073741824"), Some(1 << 30));
        for bad in ["", "OK", "OK x", "ok 5", "OK 5 6", "ERR 5"] {
            assert_eq!(parse_connect_reply(bad), None, "{bad:?}");
        }
    }
}
