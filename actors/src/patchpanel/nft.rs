//! Forwarding and NAT for the VMs' taps, in an nftables table of crosd's own (`inet crosd`).
//!
//! Through the `nft` command, fed a script on stdin, rather than a Rust crate: the kept crates
//! are either bindings that need libnftnl/libmnl and hand-built expressions for every match
//! (nftnl) or do not cover NAT and conntrack matches yet (rustables), while `nft -f -` applies a
//! whole script as one kernel transaction, so the table is always either the old one or the
//! new one, never half of each. Every change rewrites the whole table from the current VMs
//! (`add table` first so that `delete table` never fails on a missing one), and removing it
//! is one `delete table`: nothing of crosd's is left among the host's own rules.

use super::pool::{Pool, Subnet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

pub const TABLE: &str = "crosd";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run `nft` ({0}): install nftables")]
    Spawn(std::io::Error),
    #[error("nft refused crosd's rules: {stderr}\nthe script was:\n{script}")]
    Refused { stderr: String, script: String },
}

/// One VM's tap and /30, as the rules need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapRule {
    pub tap: String,
    pub subnet: Subnet,
}

/// The script that makes `inet crosd` hold exactly the rules for `taps` (and removes it when
/// there are none).
pub fn table_script(pool: Pool, taps: &[TapRule]) -> String {
    let mut s = format!("add table inet {TABLE}\ndelete table inet {TABLE}\n");
    if taps.is_empty() {
        return s;
    }
    let _ = writeln!(s, "table inet {TABLE} {{");
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    for t in taps {
        let (tap, guest) = (&t.tap, t.subnet.guest());
        // A guest speaks only from its own address, and nobody opens connections into it:
        // only replies to what it opened come back (Crostini's VMs are not reachable either).
        let _ = writeln!(s, "\t\tiifname \"{tap}\" ip saddr != {guest} drop");
        let _ = writeln!(s, "\t\tiifname \"{tap}\" accept");
        let _ = writeln!(
            s,
            "\t\toifname \"{tap}\" ct state established,related accept"
        );
        let _ = writeln!(s, "\t\toifname \"{tap}\" drop");
    }
    s.push_str("\t}\n");
    s.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for t in taps {
        let _ = writeln!(
            s,
            "\t\tip saddr {}/{} oifname != \"{}\" masquerade",
            t.subnet.network,
            super::pool::SUBNET_PREFIX,
            t.tap
        );
    }
    let _ = writeln!(s, "\t}}\n}}\n# pool {pool}");
    s
}

/// Applies `script` in one transaction.
pub fn apply(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error shows again as nft's failure below, with its own words.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            script: script.to_string(),
        })
    }
}

/// Whether `inet crosd` exists (a read-only question, so crosd's start-up cleanup changes
/// nothing on a host that never ran a networked crosd).
pub fn table_exists() -> Result<bool, NftError> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(NftError::Spawn)?;
    Ok(out.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pool: Pool, index: u32) -> TapRule {
        TapRule {
            tap: format!("crosdtap{index}"),
            subnet: pool.subnet(index).unwrap(),
        }
    }

    #[test]
    fn no_taps_removes_the_table() {
        assert_eq!(
            table_script(Pool::default(), &[]),
            "add table inet crosd\ndelete table inet crosd\n"
        );
    }

    #[test]
    fn each_tap_gets_forwarding_antispoofing_and_nat() {
        let pool = Pool::default();
        let script = table_script(pool, &[rule(pool, 0), rule(pool, 1)]);
        assert!(
            script
                .starts_with("add table inet crosd\ndelete table inet crosd\ntable inet crosd {\n")
        );
        for line in [
            "iifname \"crosdtap0\" ip saddr != 100.115.92.2 drop",
            "iifname \"crosdtap1\" ip saddr != 100.115.92.6 drop",
            "oifname \"crosdtap1\" ct state established,related accept",
            "ip saddr 100.115.92.0/30 oifname != \"crosdtap0\" masquerade",
            "ip saddr 100.115.92.4/30 oifname != \"crosdtap1\" masquerade",
            "type nat hook postrouting priority srcnat; policy accept;",
        ] {
            assert!(script.contains(line), "{line:?} missing from:\n{script}");
        }
    }
}
