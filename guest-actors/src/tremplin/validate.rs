//! Checks of request fields before anything reaches LXD or the filesystem. The host is trusted
//! more than the guest, but a bad name must still be one clear error, never a path or a panic.

use cros_messages::addr::valid_name;

/// Instances being created carry this prefix until they are renamed.
pub const INPROGRESS_PREFIX: &str = "crostini-inprogress-";
/// LXD instance names are hostnames: at most 63 characters.
pub const MAX_LXD_NAME: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRequest {
    #[error(
        "container name {0:?} is not valid: use 1-63 letters, digits and '-', starting with a letter and not ending with '-'"
    )]
    ContainerName(String),
    #[error("container name {0:?} is reserved for containers being created")]
    Reserved(String),
    #[error(
        "user name {0:?} is not valid: use 1-32 lowercase letters, digits, '_' and '-', starting with a letter or '_'"
    )]
    UserName(String),
    #[error("container token is not valid: 1-128 printable characters without spaces expected")]
    Token,
    #[error("image server {0:?} is not an http:// or https:// URL with a host")]
    Server(String),
    #[error("image alias {0:?} is not valid: 1-256 printable characters without spaces expected")]
    Alias(String),
    #[error("give an image server and alias, or an upload port for rootfs and metadata tarballs")]
    NoImage,
    #[error(
        "tarballs are streamed by the host: rootfs_path/metadata_path need a non-zero upload_port"
    )]
    PathsWithoutUpload,
}

/// An LXD instance name (a hostname label) that is also a crosd address segment.
pub fn container_name(name: &str) -> Result<(), InvalidRequest> {
    let b = name.as_bytes();
    let ok = valid_name(name)
        && b.len() <= MAX_LXD_NAME
        && b[0].is_ascii_alphabetic()
        && b.last() != Some(&b'-')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
    if !ok {
        return Err(InvalidRequest::ContainerName(name.to_string()));
    }
    if name.starts_with(INPROGRESS_PREFIX) {
        return Err(InvalidRequest::Reserved(name.to_string()));
    }
    Ok(())
}

/// A user name as useradd's default pattern takes it.
pub fn user_name(name: &str) -> Result<(), InvalidRequest> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidRequest::UserName(name.to_string()))
    }
}

pub fn token(token: &str) -> Result<(), InvalidRequest> {
    if !token.is_empty() && token.len() <= 128 && token.bytes().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(InvalidRequest::Token)
    }
}

pub fn alias(alias: &str) -> Result<(), InvalidRequest> {
    if !alias.is_empty() && alias.len() <= 256 && alias.bytes().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(InvalidRequest::Alias(alias.to_string()))
    }
}

/// The temporary name of a container while it is created: `crostini-inprogress-<name>`, or,
/// when that is longer than a hostname may be, a shortened name with a hash of the full one.
pub fn inprogress_name(name: &str) -> String {
    let full = format!("{INPROGRESS_PREFIX}{name}");
    if full.len() <= MAX_LXD_NAME {
        return full;
    }
    // FNV-1a: stable across runs, no dependency; only has to tell long names apart.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let keep = MAX_LXD_NAME - INPROGRESS_PREFIX.len() - 9;
    let head = name[..keep].trim_end_matches('-');
    format!("{INPROGRESS_PREFIX}{head}-{h:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_hostnames() {
        for ok in ["penguin", "c2", "a-b", &"a".repeat(63)] {
            assert_eq!(container_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "2c",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a/b",
            "../x",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(container_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            container_name("crostini-inprogress-x"),
            Err(InvalidRequest::Reserved("crostini-inprogress-x".into()))
        );
    }

    #[test]
    fn user_names_and_tokens() {
        assert!(user_name("alice").is_ok());
        assert!(user_name("_svc-1").is_ok());
        for bad in ["", "Alice", "1a", "a:b", "a/b", "a\nb", &"a".repeat(33)] {
            assert!(user_name(bad).is_err(), "{bad:?}");
        }
        assert!(token("0123e4567-e89b-12d3-a456-426614174000").is_ok());
        assert!(token("").is_err());
        assert!(token("a b").is_err());
        assert!(token(&"a".repeat(129)).is_err());
    }

    #[test]
    fn inprogress_names_stay_hostnames() {
        assert_eq!(inprogress_name("penguin"), "crostini-inprogress-penguin");
        let long = "a".repeat(63);
        let tmp = inprogress_name(&long);
        assert!(tmp.len() <= MAX_LXD_NAME, "{tmp}");
        assert!(tmp.starts_with(INPROGRESS_PREFIX));
        assert_ne!(tmp, inprogress_name(&"a".repeat(62)));
        let dashed = format!("{}-{}", "a".repeat(33), "b".repeat(29));
        assert!(!inprogress_name(&dashed).contains("--"));
    }
}
