//! garcon: the crosd agent in a container (see `cros_guest::garcon`).

use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cros_guest::envelopes::HostLink;
use cros_guest::garcon::{GarconConfig, forward, listening, read_token, requests};
use cros_messages::cicerone::CiceroneRequest;
use cros_messages::garcon::GarconEvent;
use cros_messages::{Addr, Body, ports};

const USAGE: &str = "\
usage: garcon [options]

The crosd agent in a container: reports the container to cicerone (ContainerReady with the token
tremplin gave it), starts vshd for `vsh --target_container`, reports listening TCP ports.

  --token-file PATH   the container token (default: /dev/.container_token)
  --lock-file PATH    one garcon per container (default: /run/garcon.lock)
  --vshd PATH         the shell server (default: /opt/google/cros-containers/bin/vshd)
  -h, --help          this help
";

/// How often the listening ports are looked at.
const PORT_SCAN: Duration = Duration::from_secs(2);

fn parse_args() -> Result<GarconConfig, String> {
    let mut config = GarconConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--token-file" => config.token_file = value("--token-file")?.into(),
            "--lock-file" => config.lock_file = value("--lock-file")?.into(),
            "--vshd" => config.vshd = value("--vshd")?.into(),
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(config)
}

/// Takes the per-container lock, or says another garcon has it.
fn lock(config: &GarconConfig) -> Result<Option<std::fs::File>, String> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&config.lock_file)
        .map_err(|e| format!("cannot open {}: {e}", config.lock_file.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(f))
}

fn listen() -> Result<(vsock::VsockListener, u32), String> {
    for port in ports::GARCON_FIRST..=ports::GARCON_LAST {
        if let Ok(l) = vsock::VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, port) {
            return Ok((l, port));
        }
    }
    Err(format!(
        "no free vsock port in {}..={}",
        ports::GARCON_FIRST,
        ports::GARCON_LAST
    ))
}

/// Serves cicerone's requests on the listener, one thread a connection.
fn serve(listener: vsock::VsockListener, config: Arc<GarconConfig>, port: u32) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("garcon: accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let config = config.clone();
        std::thread::spawn(move || {
            let me = Addr::host("garcon");
            let served = forward::serve_host_connection(stream, &me, |body| {
                requests::handle(&config, port, body)
            });
            if let Err(e) = served {
                eprintln!("garcon: host connection: {e}");
            }
        });
    }
}

/// Reports to cicerone: ContainerReady, then listening ports as they change; reconnects when
/// the host closes the connection. Returns only when cicerone refuses the token.
fn report(token: &str, port: u32) -> String {
    let cicerone = Addr::host("cicerone");
    let mut delay = Duration::from_millis(200);
    loop {
        let link =
            vsock::VsockStream::connect_with_cid_port(ports::HOST_CID, ports::CICERONE_CONTAINER)
                .map_err(|e| e.to_string())
                .and_then(|s| HostLink::open(s, Addr::host("garcon")).map_err(|e| e.to_string()));
        let mut link = match link {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "garcon: cannot reach cicerone on host port {}: {e}",
                    ports::CICERONE_CONTAINER
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let ready = Body::Cicerone(CiceroneRequest::ContainerReady {
            token: token.to_string(),
            garcon_port: port,
        });
        match link.call(&cicerone, ready) {
            Ok(Body::Error(e)) => return format!("cicerone refused ContainerReady: {e}"),
            Ok(_) => eprintln!("garcon: ready on vsock port {port}"),
            Err(e) => {
                eprintln!("garcon: ContainerReady: {e}");
                std::thread::sleep(delay);
                continue;
            }
        }
        delay = Duration::from_millis(200);
        let mut reported = None;
        loop {
            let now = listening::listening_ports(std::path::Path::new("/proc/net"));
            if reported.as_ref() != Some(&now) {
                let event = Body::GarconEvent(GarconEvent::ListeningPorts {
                    token: token.to_string(),
                    ports: now.iter().copied().collect(),
                });
                if link.event(&cicerone, event).is_err() {
                    break;
                }
                reported = Some(now);
            }
            std::thread::sleep(PORT_SCAN);
        }
    }
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("garcon: {e}");
            return ExitCode::from(2);
        }
    };
    let _lock = match lock(&config) {
        Ok(Some(f)) => f,
        Ok(None) => {
            eprintln!("garcon: another garcon runs in this container");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("garcon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let token = match read_token(&config.token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("garcon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (listener, port) = match listen() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("garcon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Arc::new(config);
    std::thread::spawn(move || serve(listener, config, port));
    let why = report(&token, port);
    eprintln!("garcon: {why}");
    ExitCode::FAILURE
}
