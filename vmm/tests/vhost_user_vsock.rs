//! The vhost-user-vsock server's life cycle with a real socket client: it listens before
//! reporting readiness, returns cleanly when the frontend disconnects, cleans its sockets up,
//! and refuses bad paths without touching what is there. (The full protocol with Linux's driver
//! is exercised under QEMU by the end-to-end tests.)

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;

use cros_vmm::devices::vsock::VsockConfig;
use cros_vmm::vhost_user::vsock::serve;

fn config(dir: &Path) -> VsockConfig {
    VsockConfig {
        guest_cid: 3,
        uds_path: dir.join("vsock.sock"),
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn listens_before_ready_and_exits_cleanly_when_the_frontend_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhost-user.sock");
    let cfg = config(dir.path());
    let (tx, rx) = mpsc::channel();
    let server = {
        let sock = sock.clone();
        std::thread::spawn(move || serve(&sock, &cfg, move || tx.send(()).unwrap(), None))
    };
    rx.recv().expect("serve never reported readiness");
    // Ready means a frontend can connect right now, and the host side is up too.
    assert!(is_socket(&sock));
    assert!(is_socket(&dir.path().join("vsock.sock")));
    let frontend = UnixStream::connect(&sock).expect("connect to the backend");
    drop(frontend);
    server
        .join()
        .unwrap()
        .expect("a frontend disconnect is a clean exit");
    assert!(!sock.exists(), "vhost-user socket left behind");
    assert!(!dir.path().join("vsock.sock").exists(), "uds left behind");
}

#[test]
fn bad_paths_are_clear_errors_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());

    let missing = dir.path().join("no/such/dir/vhost.sock");
    let err = serve(&missing, &cfg, || panic!("must not become ready"), None).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    let file = dir.path().join("precious.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let err = serve(&file, &cfg, || panic!("must not become ready"), None).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let bad_uds = VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("missing/vsock.sock"),
    };
    let err = serve(
        &dir.path().join("v.sock"),
        &bad_uds,
        || panic!("must not become ready"),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing/vsock.sock"), "{err}");
}
