//! The kernel command line (/proc/cmdline) as the guest's configuration: the host passes
//! `crosd.KEY=VALUE` parameters to the guest's init this way.

use std::collections::BTreeMap;

/// Prefix of the parameters meant for crosd's guest programs.
pub const PREFIX: &str = "crosd.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("cannot read /proc/cmdline: {0}")]
    Read(String),
    #[error("kernel parameter {key}={value} is not a valid {what}")]
    BadValue {
        key: String,
        value: String,
        what: &'static str,
    },
}

/// The `crosd.*` parameters of a kernel command line, keyed without the prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrosdParams {
    params: BTreeMap<String, String>,
}

impl CrosdParams {
    /// Parses `crosd.key=value` words; other words are the kernel's and are ignored.
    /// (No quoting: crosd's values never contain spaces.)
    pub fn parse(cmdline: &str) -> Self {
        let params = cmdline
            .split_whitespace()
            .filter_map(|word| word.strip_prefix(PREFIX))
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect();
        CrosdParams { params }
    }

    /// Reads /proc/cmdline (proc must be mounted).
    pub fn from_proc() -> Result<Self, CmdlineError> {
        std::fs::read_to_string("/proc/cmdline")
            .map(|s| Self::parse(&s))
            .map_err(|e| CmdlineError::Read(e.to_string()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// `crosd.<key>` parsed as a number, `None` when absent.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, CmdlineError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| CmdlineError::BadValue {
                    key: format!("{PREFIX}{key}"),
                    value: v.to_string(),
                    what: "number (0..=4294967295)",
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_crosd_parameters_only() {
        let p = CrosdParams::parse(
            "console=ttyS0 crosd.echo_port=5000 quiet crosd.modules=/lib/modules/crosd crosd.flag\n",
        );
        assert_eq!(p.get("echo_port"), Some("5000"));
        assert_eq!(p.get("modules"), Some("/lib/modules/crosd"));
        assert_eq!(p.get("flag"), Some(""));
        assert_eq!(p.get("console"), None);
        assert_eq!(p.get_u32("echo_port"), Ok(Some(5000)));
        assert_eq!(p.get_u32("dial_port"), Ok(None));
    }

    #[test]
    fn bad_number_names_the_parameter() {
        let p = CrosdParams::parse("crosd.echo_port=50x0");
        let err = p.get_u32("echo_port").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel parameter crosd.echo_port=50x0 is not a valid number (0..=4294967295)"
        );
    }
}
