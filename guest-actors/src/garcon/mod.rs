//! garcon: the agent in each container (REFERENCE.md, "Garcon").
//!
//! It reads the token tremplin put at `/dev/.container_token`, listens on the first free vsock
//! port of 10000–20000, and tells cicerone ContainerReady{token, port} on host port 8889; then
//! it serves cicerone's requests (LaunchVshd, GetDebugInformation) and reports the TCP ports
//! the container listens on. One garcon per container: a second one (the image's own unit and
//! tremplin's exec both start one) finds the lock taken and exits.

pub mod forward;
pub mod listening;
pub mod requests;

use std::path::PathBuf;

/// Where the tools image is bind-mounted in every container.
pub const TOOLS_BIN: &str = "/opt/google/cros-containers/bin";

#[derive(Debug, Clone)]
pub struct GarconConfig {
    pub token_file: PathBuf,
    pub lock_file: PathBuf,
    pub vshd: PathBuf,
    pub passwd: PathBuf,
}

impl Default for GarconConfig {
    fn default() -> Self {
        Self {
            token_file: "/dev/.container_token".into(),
            lock_file: "/run/garcon.lock".into(),
            vshd: PathBuf::from(TOOLS_BIN).join("vshd"),
            passwd: "/etc/passwd".into(),
        }
    }
}

/// The container's token: the file's first line, which must look like one.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the container token {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() || token.len() > 128 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{} holds no token (expected one line of up to 128 printable characters)",
            path.display()
        ));
    }
    Ok(token)
}

/// The name of uid 1000 in `passwd` (the user tremplin set up), for shells that name none.
pub fn container_user(passwd: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let uid = f.nth(1)?;
        (uid == "1000").then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_users_are_read_as_tremplin_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("token");
        std::fs::write(&t, "0c6e1d2a-4a7e-4f43-9d0b-8f0a0c6f2b11\n").unwrap();
        assert_eq!(
            read_token(&t).unwrap(),
            "0c6e1d2a-4a7e-4f43-9d0b-8f0a0c6f2b11"
        );
        std::fs::write(&t, "\n").unwrap();
        assert!(read_token(&t).unwrap_err().contains("holds no token"));
        assert!(read_token(&dir.path().join("none")).is_err());
        let p = dir.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/bash\n",
        )
        .unwrap();
        assert_eq!(container_user(&p).as_deref(), Some("alice"));
        std::fs::write(&p, "root:x:0:0::/root:/bin/sh\n").unwrap();
        assert_eq!(container_user(&p), None);
    }
}
