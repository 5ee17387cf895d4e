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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply() {
        assert_eq!(connect_request(9001), "CONNECT 9001\n");
        assert_eq!(parse_connect_reply("OK 1073741824"), Some(1 << 30));
        for bad in ["", "OK", "OK x", "ok 5", "OK 5 6", "ERR 5"] {
            assert_eq!(parse_connect_reply(bad), None, "{bad:?}");
        }
    }
}
