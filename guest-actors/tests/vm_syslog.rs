//! vm_syslog as a real process on the host: it reads a kmsg-format file and a syslog datagram
//! socket and ships the records to a Unix socket standing in for the host's vsock port 9999
//! (no VM in this test, so the guest→host vsock hop is replaced by a Unix socket).

use std::os::unix::net::{UnixDatagram, UnixListener};
use std::process::Command;
use std::time::{Duration, Instant};

use cros_messages::framing::{MAX_CONTROL_FRAME, handshake, read_message, write_message};
use cros_messages::vmlog::{VmlogReply, VmlogRequest};
use cros_messages::{Addr, Body, Envelope};

#[test]
fn ships_kernel_and_syslog_records() {
    let dir = tempfile::tempdir().unwrap();
    let kmsg = dir.path().join("kmsg");
    std::fs::write(
        &kmsg,
        "6,1,100,-;first kernel line\n3,2,200,-;second kernel line\n",
    )
    .unwrap();
    let syslog = dir.path().join("log");
    let host = dir.path().join("host.sock");
    let listener = UnixListener::bind(&host).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vm_syslog"))
        .arg("--kmsg")
        .arg(&kmsg)
        .arg("--syslog-socket")
        .arg(&syslog)
        .arg("--connect")
        .arg(format!("unix:{}", host.display()))
        .spawn()
        .unwrap();

    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let peer = handshake(&mut s, &Addr::host("vmlog_forwarder")).unwrap();
    assert_eq!(peer.actor.actor, "vm_syslog");

    let start = Instant::now();
    while !syslog.exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"<11>myprog[3]: it broke", &syslog)
        .unwrap();

    let mut messages = Vec::new();
    while messages.len() < 3 {
        let env: Envelope = read_message(&mut s, MAX_CONTROL_FRAME).unwrap();
        let Body::VmlogForwarder(VmlogRequest::Records { records }) = &env.body else {
            panic!("unexpected {env:?}")
        };
        messages.extend(
            records
                .iter()
                .map(|r| (r.source.clone(), r.message.clone(), r.severity.to_string())),
        );
        let reply = env.reply(
            1,
            Body::VmlogReply(VmlogReply::Written {
                count: records.len() as u32,
            }),
        );
        write_message(&mut s, &reply, MAX_CONTROL_FRAME).unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        messages.contains(&("kernel".into(), "first kernel line".into(), "Info".into())),
        "{messages:?}"
    );
    assert!(
        messages.contains(&("kernel".into(), "second kernel line".into(), "Error".into())),
        "{messages:?}"
    );
    assert!(
        messages.contains(&("myprog".into(), "it broke".into(), "Error".into())),
        "{messages:?}"
    );
}
