//! tremplin: the container manager in the termina VM. See `cros_guest::tremplin`.
//!
//! maitred's StartTermina runs it as `/usr/bin/tremplin` with no arguments; the options point
//! it elsewhere for tests on the host.

use std::path::PathBuf;

use cros_guest::cmdline::CrosdParams;
use cros_guest::tremplin::host::{self, HostDialer};
use cros_guest::tremplin::server::{self, RequestListener};
use cros_guest::tremplin::{Config, Tremplin};
use cros_guest::vshd::listener::ListenAddr;
use cros_messages::{Addr, ports};

const USAGE: &str = "tremplin: crosd's container manager in the VM (drives LXD).

  --listen vsock:PORT|unix:PATH  where requests come in (vsock:8890)
  --host-dir DIR                 reach host port P at DIR/vsock.sock_P instead of vsock cid 2
  --stateful DIR                 the stateful disk; LXD_DIR is DIR/lxd (/mnt/stateful)
  --lxd PROGRAM                  the lxd daemon (lxd, from PATH)
  --lxd-logfile FILE             lxd --logfile FILE instead of --syslog
  --tokens DIR                   container token files (/run/tokens)
  --tools DIR                    the tools image with bin/garcon (/opt/google/cros-containers)
  --no-forwarder                 no image proxy forwarder on 127.0.0.1:3128
  --lxd-subnet ADDRESS/PREFIX    lxdbr0's address (100.115.93.1/28); maitred passes the host's
  --vm NAME                      the VM's name in this actor's address (crosd.vm=, else termina)";

fn fail(msg: &str) -> ! {
    eprintln!("tremplin: {msg}");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut config = Config::default();
    let mut listen = ListenAddr::Vsock {
        port: ports::TREMPLIN,
    };
    let mut vm = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            "--listen" => {
                listen = value("--listen")
                    .parse()
                    .unwrap_or_else(|e| fail(&format!("--listen: {e}")))
            }
            "--host-dir" => {
                config.host = HostDialer::Unix {
                    dir: PathBuf::from(value("--host-dir")),
                }
            }
            "--stateful" => config.stateful = value("--stateful").into(),
            "--lxd" => config.lxd_program = value("--lxd"),
            "--lxd-logfile" => config.lxd_logfile = Some(value("--lxd-logfile").into()),
            "--tokens" => config.tokens_dir = value("--tokens").into(),
            "--tools" => {
                let tools = PathBuf::from(value("--tools"));
                config.garcon_host_path = tools.join("bin/garcon");
                config.profile.tools = tools;
            }
            "--no-forwarder" => config.forwarder = false,
            "--lxd-subnet" => {
                let subnet = value("--lxd-subnet");
                if !cros_guest::tremplin::setup::is_bridge_address(&subnet) {
                    fail(&format!(
                        "--lxd-subnet {subnet:?} is not ADDRESS/PREFIX (100.115.93.1/28)"
                    ));
                }
                config.bridge_address = subnet;
            }
            "--vm" => vm = Some(value("--vm")),
            other => fail(&format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    let vm = vm.unwrap_or_else(|| {
        CrosdParams::from_proc()
            .ok()
            .and_then(|p| p.get("vm").map(str::to_string))
            .unwrap_or_else(|| "termina".to_string())
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start the runtime: {e}")));
    let err = runtime.block_on(async move {
        let listener = match &listen {
            ListenAddr::Vsock { port } => RequestListener::vsock(*port),
            ListenAddr::Unix(path) => RequestListener::unix(path),
        }
        .unwrap_or_else(|e| fail(&format!("cannot listen on {listen:?}: {e}")));
        let me = Addr::in_vm("tremplin", vm.as_str());
        let events = host::start_reporter(config.host.clone(), me.clone());
        let tremplin = Tremplin::new(config, events);
        server::serve(listener, me, tremplin).await
    });
    fail(&format!("listener failed: {err}"));
}
