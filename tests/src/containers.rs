//! What the container tests share: the busybox test image, a loopback simplestreams server
//! for it (`crosimg serve`), and commands run in a container through `vsh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use crate::crosd::{Crosd, text};
use crate::{bin, bin_dir};

/// The busybox test image, built once into target/<profile>/e2e/images.
pub fn busybox_images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = bin_dir().join("e2e/images/busybox");
        if !out.join("streams/v1/images.json").exists() {
            let o = Command::new(bin("crosimg"))
                .args(["build-container", "busybox", "--out"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "crosimg build-container busybox: {}",
                text(&o)
            );
        }
        out
    })
}

/// `crosimg serve DIR --listen 127.0.0.1:0`; the URL it prints first.
pub struct ImageServer {
    child: Child,
    pub url: String,
}

impl ImageServer {
    pub fn start(dir: &Path) -> ImageServer {
        let mut child = Command::new(bin("crosimg"))
            .arg("serve")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("crosimg serve printed no URL: {line:?}"))
            .trim_end_matches('/')
            .to_string();
        ImageServer { child, url }
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vsh --vm_name termina --target_container CONTAINER [--user USER] -- CMD…`.
pub fn vsh_in(crosd: &Crosd, container: &str, user: Option<&str>, cmd: &[&str]) -> Output {
    let mut args = vec!["--vm_name", "termina", "--target_container", container];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    args.push("--");
    args.extend_from_slice(cmd);
    crosd.run("vsh", &args)
}

/// An output's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
