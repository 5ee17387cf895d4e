//! vm_syslog: reads /dev/kmsg and /dev/log in the guest and ships the records to the host's
//! vmlog_forwarder on vsock port 9999 (`--connect unix:PATH` instead, for tests on the host,
//! with `--kmsg FILE` and `--syslog-socket PATH`).

use std::io::Read;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{SystemTime, UNIX_EPOCH};

use cros_guest::cmdline::CrosdParams;
use cros_guest::vm_syslog::{parse, shipper};
use cros_messages::{Addr, ports};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Wall-clock time of boot, to turn kmsg's monotonic stamps into wall time.
fn boot_wall_ns() -> u64 {
    let up = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    now_ns().saturating_sub(up)
}

fn read_kmsg(path: String, tx: SyncSender<cros_messages::vmlog::LogRecord>) {
    let Ok(mut f) = std::fs::File::open(&path) else {
        eprintln!("vm_syslog: cannot open {path}");
        return;
    };
    let boot = boot_wall_ns();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                // /dev/kmsg returns one record per read; a plain file (tests) may hold several lines.
                for line in String::from_utf8_lossy(&buf[..n]).split_inclusive('\n') {
                    if let Some(rec) = parse::parse_kmsg(line, boot) {
                        let _ = tx.try_send(rec);
                    }
                }
            }
            // EPIPE: records were overwritten before we read them; go on with the next ones.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("vm_syslog: reading {path}: {e}");
                return;
            }
        }
    }
}

fn read_syslog(path: String, tx: SyncSender<cros_messages::vmlog::LogRecord>) {
    let _ = std::fs::remove_file(&path);
    let sock = match UnixDatagram::bind(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vm_syslog: cannot bind {path}: {e}");
            return;
        }
    };
    let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = sock.recv(&mut buf) {
        let _ = tx.try_send(parse::parse_syslog(
            &String::from_utf8_lossy(&buf[..n]),
            now_ns(),
        ));
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "vm_syslog [--kmsg FILE] [--syslog-socket PATH] [--connect unix:PATH]\n  ships guest logs to the host's vmlog_forwarder (vsock port 9999 by default)"
        );
        return;
    }
    let kmsg = flag(&args, "--kmsg").unwrap_or_else(|| "/dev/kmsg".into());
    let syslog = flag(&args, "--syslog-socket").unwrap_or_else(|| "/dev/log".into());
    let vm = CrosdParams::from_proc()
        .ok()
        .and_then(|p| p.get("vm").map(str::to_string))
        .unwrap_or_else(|| "termina".into());
    let me = Addr::in_vm("vm_syslog", vm);
    let (tx, rx) = sync_channel(shipper::MAX_QUEUED);
    let tx2 = tx.clone();
    std::thread::spawn(move || read_kmsg(kmsg, tx));
    std::thread::spawn(move || read_syslog(syslog, tx2));
    match flag(&args, "--connect")
        .as_deref()
        .map(|c| c.strip_prefix("unix:").map(str::to_string))
    {
        Some(Some(path)) => shipper::run(rx, me, || UnixStream::connect(&path)),
        Some(None) => {
            eprintln!("vm_syslog: --connect needs unix:PATH");
            std::process::exit(2);
        }
        None => shipper::run(rx, me, || {
            vsock::VsockStream::connect_with_cid_port(
                vsock::VMADDR_CID_HOST,
                ports::VMLOG_FORWARDER,
            )
        }),
    }
}
