//! vshd: the vsh shell server. In the VM it listens on vsock port 9001 (started by maitred);
//! in a container garcon starts it with `--connect` to dial the host's waiting vsh.

use std::process::ExitCode;
use std::sync::Arc;

use nix::sys::signal::{SigHandler, Signal, signal};

use cros_guest::vshd::{self, AccountFiles, ConnectAddr, ListenAddr, ServerConfig};

const USAGE: &str = "\
usage: vshd (--listen ADDR | --connect ADDR) [options]

Serves vsh sessions: runs a command or a login shell in a pty (or with pipes), as the user the
client asks for, and relays its input, output, window size, signals and exit status.

  --listen ADDR        accept sessions, one thread each, forever. ADDR is
                       vsock:PORT (in the VM: vsock:9001) or unix:PATH (tests)
  --connect ADDR       dial ADDR (vsock:CID:PORT or unix:PATH) and serve that one session
  --target NAME        the only target this server accepts (default: /vm_shell; in a
                       container, the container's name)
  --default-user USER  user for requests that name none (default: root)
  --passwd PATH        account database (default: /etc/passwd)
  --group PATH         group database (default: /etc/group)
  -h, --help           this help
";

enum Mode {
    Listen(ListenAddr),
    Connect(ConnectAddr),
}

fn parse_args() -> Result<(Mode, ServerConfig), String> {
    let mut mode = None;
    let mut config = ServerConfig::default();
    let mut accounts = AccountFiles::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--listen" => {
                let v = value("--listen")?;
                mode = Some(Mode::Listen(
                    v.parse().map_err(|e| format!("--listen: {e}"))?,
                ));
            }
            "--connect" => {
                let v = value("--connect")?;
                mode = Some(Mode::Connect(
                    v.parse().map_err(|e| format!("--connect: {e}"))?,
                ));
            }
            "--target" => config.target = value("--target")?,
            "--default-user" => config.default_user = value("--default-user")?,
            "--passwd" => accounts.passwd = value("--passwd")?.into(),
            "--group" => accounts.group = value("--group")?.into(),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    config.accounts = accounts;
    let mode = mode.ok_or("one of --listen or --connect is required")?;
    Ok((mode, config))
}

fn main() -> ExitCode {
    let (mode, config) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("vshd: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Whoever started us (maitred, garcon) may have left SIGCHLD ignored, which would make
    // the kernel reap session children before their exit status can be read.
    // SAFETY: restoring a default disposition installs no handler code.
    if let Err(e) = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) } {
        eprintln!("vshd: cannot restore SIGCHLD: {e}");
    }
    let config = Arc::new(config);
    let err = match mode {
        Mode::Listen(ListenAddr::Vsock { port }) => {
            match vsock::VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, port) {
                Ok(l) => {
                    eprintln!("vshd: listening on vsock port {port}");
                    vshd::serve(l, config)
                }
                Err(e) => {
                    eprintln!("vshd: cannot listen on vsock port {port}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Mode::Listen(ListenAddr::Unix(path)) => match vshd::listener::bind_unix(&path) {
            Ok(l) => {
                eprintln!("vshd: listening on {}", path.display());
                vshd::serve(l, config)
            }
            Err(e) => {
                eprintln!("vshd: cannot listen on {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        Mode::Connect(ConnectAddr::Vsock { cid, port }) => {
            match vsock::VsockStream::connect_with_cid_port(cid, port) {
                Ok(s) => {
                    vshd::serve_stream(s, format!("vsock cid {cid} port {port}"), &config);
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    eprintln!("vshd: cannot connect to vsock cid {cid} port {port}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Mode::Connect(ConnectAddr::Unix(path)) => {
            match std::os::unix::net::UnixStream::connect(&path) {
                Ok(s) => {
                    vshd::serve_stream(s, path.display().to_string(), &config);
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    eprintln!("vshd: cannot connect to {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    eprintln!("vshd: accepting sessions failed: {err}");
    ExitCode::FAILURE
}
