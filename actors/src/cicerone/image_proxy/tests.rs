//! The proxy against real TCP servers on loopback, reached the way a guest reaches it: over the
//! VM's `vsock.sock_3128` Unix socket.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

/// A loopback server that answers every connection with `reply` after reading the request head.
async fn server(reply: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::task::spawn_local(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ = s.write_all(reply).await;
        }
    });
    port
}

async fn ask(uds: &Path, request: String) -> String {
    let mut s = UnixStream::connect(format!("{}_{}", uds.display(), ports::IMAGE_PROXY))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn server_urls_give_the_host_and_port_the_proxy_sees() {
    assert_eq!(
        server_host_port("https://images.lxd.canonical.com").unwrap(),
        ("images.lxd.canonical.com".into(), 443)
    );
    assert_eq!(
        server_host_port("http://127.0.0.1:8080/").unwrap(),
        ("127.0.0.1".into(), 8080)
    );
    assert_eq!(
        server_host_port("http://[::1]:81").unwrap(),
        ("::1".into(), 81)
    );
    for bad in ["ftp://x", "images.example", "", "http://"] {
        assert!(server_host_port(bad).is_err(), "{bad:?}");
    }
}

#[actix::test]
async fn only_named_servers_are_reached() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let uds = dir.path().join("vsock.sock");
            let named = server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nimage").await;
            let secret = server(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret").await;
            let allowed = AllowedServers::default();
            allowed.allow("127.0.0.1", named);
            let _proxy = ImageProxy::start(&uds, allowed).unwrap();

            let got = ask(&uds, format!("GET http://127.0.0.1:{named}/streams/v1/index.json HTTP/1.1\r\nHost: 127.0.0.1:{named}\r\nConnection: close\r\n\r\n")).await;
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
            assert!(got.ends_with("image"), "{got}");

            let got = ask(&uds, format!("GET http://127.0.0.1:{secret}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await;
            assert!(got.starts_with("HTTP/1.1 403"), "{got}");
            assert!(!got.contains("secret\n") && got.contains("not an image server"), "{got}");

            let got = ask(&uds, format!("CONNECT 127.0.0.1:{secret} HTTP/1.1\r\nHost: 127.0.0.1:{secret}\r\n\r\n")).await;
            assert!(got.starts_with("HTTP/1.1 403"), "{got}");

            // An allowed CONNECT is a byte tunnel: the server's bytes come through as they are.
            let got = ask(&uds, format!("CONNECT 127.0.0.1:{named} HTTP/1.1\r\nHost: 127.0.0.1:{named}\r\n\r\nGET / HTTP/1.1\r\n\r\n")).await;
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
            assert!(got.ends_with("image"), "{got}");

            let got = ask(&uds, "garbage\r\n\r\n".into()).await;
            assert!(got.starts_with("HTTP/1.1 400") || got.is_empty(), "{got}");
        })
        .await;
}
