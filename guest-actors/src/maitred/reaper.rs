//! Child reaping for PID 1. Orphans are re-parented to init and must be reaped, so one thread
//! waits for any child; processes maitred itself started register to learn their exit status.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// How a process ended, as a shell reports it: the exit code, or 128 + signal number.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Called with (pid, exit code) of every reaped child.
type ExitHook = Box<dyn Fn(i32, i32) + Send>;

/// Exit statuses of reaped children, kept until someone asks (a child may exit before its
/// spawner registers interest).
#[derive(Default)]
pub struct Reaper {
    exited: Mutex<HashMap<i32, i32>>,
    changed: Condvar,
    /// Called with (pid, code) for every reaped child; services use it to respawn.
    on_exit: Mutex<Vec<ExitHook>>,
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Arc<Reaper> {
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.reap_forever())
            .ok();
        reaper
    }

    fn reap_forever(&self) {
        loop {
            match waitpid(None::<Pid>, None) {
                Ok(status) => {
                    let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) else {
                        continue;
                    };
                    self.record(pid.as_raw(), code);
                }
                // No children right now: wait a little for new ones rather than spin.
                Err(nix::Error::ECHILD) => std::thread::sleep(Duration::from_millis(50)),
                Err(nix::Error::EINTR) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn record(&self, pid: i32, code: i32) {
        if let Ok(mut exited) = self.exited.lock() {
            exited.insert(pid, code);
            // Bound the table: statuses nobody asked for are dropped oldest-first-ish.
            if exited.len() > 4096 {
                let victims: Vec<i32> = exited.keys().take(1024).copied().collect();
                for v in victims {
                    exited.remove(&v);
                }
            }
        }
        self.changed.notify_all();
        if let Ok(hooks) = self.on_exit.lock() {
            for hook in hooks.iter() {
                hook(pid, code);
            }
        }
    }

    /// Waits for `pid` to exit, at most `timeout`; returns its exit code.
    pub fn wait_for(&self, pid: i32, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let mut exited = self.exited.lock().ok()?;
        loop {
            if let Some(code) = exited.remove(&pid) {
                return Some(code);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            exited = self.changed.wait_timeout(exited, left).ok()?.0;
        }
    }

    /// Registers a hook called for every reaped child.
    pub fn on_exit(&self, hook: impl Fn(i32, i32) + Send + 'static) {
        if let Ok(mut hooks) = self.on_exit.lock() {
            hooks.push(Box::new(hook));
        }
    }
}
