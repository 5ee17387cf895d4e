//! Long-running guest services maitred starts and keeps alive (vm_syslog, vshd, tremplin), and
//! one-shot helper commands whose exit status comes through the [`Reaper`].

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::reaper::Reaper;

/// A service that exits is started again after this pause, at most [`MAX_RESTARTS`] times.
const RESPAWN_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTARTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not exit within {secs} s")]
    Timeout { program: String, secs: u64 },
    #[error("{program} failed with exit code {code}: {stderr}")]
    Failed {
        program: String,
        code: i32,
        stderr: String,
    },
    #[error("empty argv")]
    EmptyArgv,
}

struct Service {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    pid: i32,
    restarts: u32,
}

/// The set of respawning services.
pub struct Services {
    reaper: Arc<Reaper>,
    running: Mutex<HashMap<String, Service>>,
    stopping: AtomicBool,
}

fn spawn(argv: &[String], env: &[(String, String)]) -> Result<i32, ServiceError> {
    let (program, args) = argv.split_first().ok_or(ServiceError::EmptyArgv)?;
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| ServiceError::Spawn {
            program: program.clone(),
            source,
        })?;
    Ok(child.id() as i32)
}

impl Services {
    pub fn new(reaper: Arc<Reaper>) -> Arc<Services> {
        let services = Arc::new(Services {
            reaper: reaper.clone(),
            running: Mutex::default(),
            stopping: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&services);
        reaper.on_exit(move |pid, code| {
            if let Some(s) = weak.upgrade() {
                s.exited(pid, code);
            }
        });
        services
    }

    /// Starts `argv` as service `name`, restarted whenever it exits.
    pub fn start(
        &self,
        name: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<i32, ServiceError> {
        let pid = spawn(&argv, &env)?;
        if let Ok(mut running) = self.running.lock() {
            running.insert(
                name.to_string(),
                Service {
                    argv,
                    env,
                    pid,
                    restarts: 0,
                },
            );
        }
        Ok(pid)
    }

    fn exited(self: &Arc<Self>, pid: i32, code: i32) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(running) = self.running.lock() else {
            return;
        };
        let Some((name, svc)) = running.iter().find(|(_, s)| s.pid == pid) else {
            return;
        };
        let name = name.clone();
        if svc.restarts >= MAX_RESTARTS {
            eprintln!(
                "maitred: service {name} exited with code {code}; gave up after {MAX_RESTARTS} restarts"
            );
            return;
        }
        eprintln!("maitred: service {name} exited with code {code}; restarting");
        drop(running);
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(RESPAWN_DELAY);
            let Ok(mut running) = me.running.lock() else {
                return;
            };
            let Some(svc) = running.get_mut(&name) else {
                return;
            };
            match spawn(&svc.argv, &svc.env) {
                Ok(pid) => {
                    svc.pid = pid;
                    svc.restarts += 1;
                }
                Err(e) => eprintln!("maitred: restarting {name}: {e}"),
            }
        });
    }

    /// Stops every service: SIGTERM, then SIGKILL after `grace`.
    pub fn stop_all(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let pids: Vec<i32> = self
            .running
            .lock()
            .map(|r| r.values().map(|s| s.pid).collect())
            .unwrap_or_default();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for &pid in &pids {
            if self.reaper.wait_for(pid, grace).is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Runs a helper command to completion (at most `timeout`), returning its stdout. Exit status
    /// comes from the reaper, because PID 1 reaps every child.
    pub fn run(&self, argv: &[&str], timeout: Duration) -> Result<String, ServiceError> {
        run_command(&self.reaper, argv, timeout)
    }

    pub fn reaper(&self) -> &Arc<Reaper> {
        &self.reaper
    }
}

/// See [`Services::run`].
pub fn run_command(
    reaper: &Reaper,
    argv: &[&str],
    timeout: Duration,
) -> Result<String, ServiceError> {
    let (program, args) = argv.split_first().ok_or(ServiceError::EmptyArgv)?;
    let program = program.to_string();
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ServiceError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = child.id() as i32;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let Some(code) = reaper.wait_for(pid, timeout) else {
        let _ = child.kill();
        return Err(ServiceError::Timeout {
            program,
            secs: timeout.as_secs(),
        });
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if code != 0 {
        return Err(ServiceError::Failed {
            program,
            code,
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(stdout)
}
