//! The VMs' DNS: the host's own name servers, from /etc/resolv.conf. crosd runs no resolver of
//! its own; a guest asks the host's upstream servers directly, through the NAT. Loopback
//! servers (systemd-resolved's 127.0.0.53, a local dnsmasq) are left out: from the guest
//! 127.0.0.1 is the guest itself, so with only such a server the guest gets none and says so.

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The host's non-loopback name servers (empty when it has none or no resolv.conf).
pub fn host_nameservers() -> Vec<String> {
    std::fs::read_to_string(RESOLV_CONF)
        .map(|text| nameservers(&text))
        .unwrap_or_default()
}

/// The `nameserver` lines of a resolv.conf that a guest can reach.
pub fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|addr| addr.parse::<std::net::IpAddr>().ok())
        .filter(|addr| !addr.is_loopback() && !addr.is_unspecified())
        .map(|addr| addr.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_reachable_servers_only() {
        let text = "# generated\nsearch example.test\nnameserver 192.0.2.53\n\
                    nameserver 127.0.0.53\nnameserver ::1\nnameserver 2001:db8::35\n\
                    nameserver not-an-address\noptions edns0\n";
        assert_eq!(nameservers(text), ["192.0.2.53", "2001:db8::35"]);
        assert!(nameservers("nameserver 127.0.0.53\n").is_empty());
    }
}
