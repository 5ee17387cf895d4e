//! `crosvm vhost-user-blk` as a process: its help documents every flag, it says when it can be
//! connected to, names a bad image or socket path in its error and exits non-zero, and exits 0
//! when the frontend disconnects. (The protocol is tested in vmm/tests/vhost_user_blk.rs, and
//! with Linux's driver under QEMU in tests/tests/vhost_user_blk.rs.)

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

const CROSVM: &str = env!("CARGO_BIN_EXE_crosvm");

#[test]
fn help_documents_every_flag() {
    let out = Command::new(CROSVM)
        .args(["vhost-user-blk", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--socket <SOCK>",
        "--path <IMAGE>",
        "--read-only",
        "--serial <SERIAL>",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = Command::new(CROSVM)
        .args(["resize-disk", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for arg in ["<CTRL>", "<INDEX>", "<SIZE>", "multiple of 512"] {
        assert!(help.contains(arg), "{arg} missing from:\n{help}");
    }
}

#[test]
fn bad_image_and_socket_paths_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, [0u8; 4096]).unwrap();
    let socket = dir.path().join("blk.sock");
    let missing = dir.path().join("missing.img");
    let cases: [(&std::path::Path, &std::path::Path, &str); 2] = [
        (&socket, &missing, "missing.img"),
        (&dir.path().join("no/dir/blk.sock"), &image, "no/dir"),
    ];
    for (sock, path, needle) in cases {
        let out = Command::new(CROSVM)
            .args(["vhost-user-blk", "--socket"])
            .arg(sock)
            .arg("--path")
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("crosvm: error: vhost-user-blk") && stderr.contains(needle),
            "{stderr}"
        );
    }
    assert!(!socket.exists());
}

#[test]
fn reports_listening_and_exits_0_when_the_frontend_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, [0u8; 4096]).unwrap();
    let socket = dir.path().join("blk.sock");
    let mut child = Command::new(CROSVM)
        .args([
            "vhost-user-blk",
            "--read-only",
            "--serial",
            "e2e",
            "--socket",
        ])
        .arg(&socket)
        .arg("--path")
        .arg(&image)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), format!("listening on {}", socket.display()));
    drop(UnixStream::connect(&socket).expect("listening means connectable"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket left behind");
}
