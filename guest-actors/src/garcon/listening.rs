//! The TCP ports a container listens on, from /proc/net/tcp and /proc/net/tcp6 (what garcon
//! reports for port forwarding, as Crostini's does).

use std::collections::BTreeSet;
use std::path::Path;

/// `st` of a listening socket in /proc/net/tcp.
const TCP_LISTEN: &str = "0A";

/// Listening ports in one /proc/net/tcp{,6} table. Lines that do not parse are skipped (the
/// format is the kernel's, but nothing here may panic on it).
pub fn parse_table(text: &str) -> BTreeSet<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// Listening ports of this network namespace (both tables; a missing one counts as empty).
pub fn listening_ports(proc_net: &Path) -> BTreeSet<u16> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(proc_net.join(t)).ok())
        .flat_map(|text| parse_table(&text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_sockets_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:0016 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n   2: garbage\n";
        assert_eq!(parse_table(table), BTreeSet::from([8080]));
        assert!(parse_table("").is_empty());
    }

    #[test]
    fn this_hosts_listeners_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports(Path::new("/proc/net")).contains(&port));
    }
}
