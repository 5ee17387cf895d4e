//! Fuzzes maitred's control connection as the host drives it: the Hello handshake, then framed
//! envelopes, each decoded and dispatched by `serve_requests`, the loop `serve_connection` runs.
//! Requests whose handlers only read or answer (GetKernelVersion, SetTimezone, Shutdown,
//! GetResizeStatus, GetAvailableSpace, the unsupported ones, and SetTime outside its range)
//! run through maitred's real handler. The ones that would mount, spawn, resize or set the
//! clock on this machine do not: Mount and LaunchProcess go through the checks their handlers
//! run first (`check_mount`, `check_launch`), and all of them then get a stand-in Ack.

#![no_main]

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};

use cros_guest::maitred::handlers::{LateModules, Maitred, check_launch, check_mount};
use cros_guest::maitred::reaper::Reaper;
use cros_guest::maitred::server::serve_requests;
use cros_guest::maitred::services::Services;
use cros_messages::Addr;
use cros_messages::maitred::{MaitredReply, MaitredRequest};
use libfuzzer_sys::fuzz_target;

static MAITRED: LazyLock<Maitred> = LazyLock::new(|| Maitred {
    services: Services::new(Arc::new(Reaper::default())),
    sys_block: "/nonexistent".into(),
    timezone: Mutex::new(None),
    late_modules: LateModules::none(),
    shutdown_requested: false.into(),
});

/// The host's bytes in, maitred's replies out to nowhere.
struct Duplex<'a> {
    input: &'a [u8],
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn side_effect_free(req: &MaitredRequest) -> bool {
    match req {
        MaitredRequest::GetKernelVersion {}
        | MaitredRequest::SetTimezone { .. }
        | MaitredRequest::Shutdown {}
        | MaitredRequest::GetResizeStatus {}
        | MaitredRequest::GetAvailableSpace {}
        | MaitredRequest::ConfigureNetwork { .. } => true,
        // A valid one creates its target and dials the host.
        MaitredRequest::Mount9P { port, .. } => {
            cros_guest::maitred::mount9p::check(*port).is_err()
        }
        MaitredRequest::SetTime { secs, nanos } => {
            *nanos >= 1_000_000_000 || *secs > i64::MAX as u64
        }
        MaitredRequest::Mount { .. }
        | MaitredRequest::StartTermina { .. }
        | MaitredRequest::LaunchProcess { .. }
        | MaitredRequest::ResizeFilesystem { .. }
        | MaitredRequest::GetMinimumSize {} => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let maitred = &*MAITRED;
    maitred.shutdown_requested.store(false, Ordering::SeqCst);
    let _ = serve_requests(
        Duplex { input: data },
        &Addr::in_vm("maitred", "termina"),
        |req| {
            if side_effect_free(&req) {
                return maitred.handle(req);
            }
            // The checks these run before they touch anything, then a stand-in reply.
            match &req {
                MaitredRequest::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    options,
                    ..
                } => check_mount(source, target, fstype, *flags, options)?,
                MaitredRequest::LaunchProcess {
                    argv,
                    env,
                    respawn,
                    wait_for_exit,
                } => check_launch(argv, env, *respawn, *wait_for_exit)?,
                _ => {}
            }
            Ok(MaitredReply::Ack {})
        },
        || maitred.shutdown_requested.load(Ordering::SeqCst),
    );
});
