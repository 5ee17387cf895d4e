//! crosd-9s: one VM's 9P file server, started by seneschal (see
//! `cros_actors::seneschal::nine_s`): confines itself (mount namespace, the sharing user's ids,
//! seccomp), then serves the VM's connections on fd 3 and seneschal's control lines on fd 4.

use std::process::ExitCode;

use cros_actors::seneschal::nine_s;
use cros_vmm::seccomp::{ThreadKind, filter_for, install_all_threads, install_sigsys_handler};

fn main() -> ExitCode {
    let args = match nine_s::parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crosd-9s: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = nine_s::enter_sandbox(&args) {
        eprintln!("crosd-9s: cannot confine the server: {e}");
        return ExitCode::FAILURE;
    }
    let seccomp = filter_for(ThreadKind::FileServer)
        .and_then(|f| install_sigsys_handler().map(|()| f))
        .and_then(|f| install_all_threads(ThreadKind::FileServer, &f));
    if let Err(e) = seccomp {
        eprintln!("crosd-9s: cannot install the seccomp filter: {e}");
        return ExitCode::FAILURE;
    }
    // SAFETY: seneschal starts this program with its sockets at fds 3 and 4.
    let (listener, control) = unsafe { nine_s::inherited_sockets() };
    nine_s::serve(&args, listener, control);
    ExitCode::SUCCESS
}
