//! The `lxd` daemon: started on StartLxd, restarted when it dies (at most
//! [`MAX_RESTARTS`] times in [`RESTART_WINDOW`], with backoff), waited for until it answers.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::lxd_client::LxdClient;

/// Restarts allowed within [`RESTART_WINDOW`] before tremplin gives up on LXD (Crostini's rule).
pub const MAX_RESTARTS: usize = 10;
pub const RESTART_WINDOW: Duration = Duration::from_secs(30);
/// How long LXD gets to answer after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// lxd runs helpers (dnsmasq, nft, mkfs.btrfs, rsync, unsquashfs) found on its PATH.
const LXD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum LxdProcessError {
    #[error("LXD did not answer on {socket} within {seconds} s{last}")]
    NotReady {
        socket: PathBuf,
        seconds: u64,
        last: String,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("lxd died {MAX_RESTARTS} times within {} s; not restarting it again", RESTART_WINDOW.as_secs())]
    GaveUp,
}

/// How lxd is run.
#[derive(Debug, Clone)]
pub struct LxdCommand {
    pub program: String,
    pub lxd_dir: PathBuf,
    /// `--logfile FILE` instead of `--syslog` (tests, where no syslog listens).
    pub logfile: Option<PathBuf>,
    /// The `lxd` group owns the socket when the image has one.
    pub group: Option<String>,
}

impl LxdCommand {
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(g) = &self.group {
            args.extend(["--group".to_string(), g.clone()]);
        }
        match &self.logfile {
            Some(f) => args.extend(["--logfile".to_string(), f.display().to_string()]),
            None => args.push("--syslog".to_string()),
        }
        args
    }

    fn spawn(&self) -> Result<tokio::process::Child, LxdProcessError> {
        std::fs::create_dir_all(&self.lxd_dir).map_err(|source| LxdProcessError::Spawn {
            program: format!("{} (creating {})", self.program, self.lxd_dir.display()),
            source,
        })?;
        devices_tmpfs(&self.lxd_dir.join("devices"));
        tokio::process::Command::new(&self.program)
            .args(self.args())
            .env("LXD_DIR", &self.lxd_dir)
            .env("PATH", LXD_PATH)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|source| LxdProcessError::Spawn {
                program: self.program.clone(),
                source,
            })
    }
}

/// LXD makes the device nodes it passes into containers (the profile's fuse and tun) under
/// `LXD_DIR/devices`; the stateful disk is mounted nodev, so they go on a tmpfs of their own
/// (they are made again at every container start). Best effort: a failure shows as LXD's own
/// error when a container with such a device starts.
fn devices_tmpfs(dir: &std::path::Path) {
    let already = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == dir.to_str())
    });
    if already {
        return;
    }
    let mounted = std::fs::create_dir_all(dir).map_err(|e| e.to_string()).and_then(|()| {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0711,size=1m"),
        )
        .map_err(|e| e.to_string())
    });
    if let Err(e) = mounted {
        eprintln!("tremplin: cannot mount a tmpfs at {}: {e}", dir.display());
    }
}

/// Whether a group exists in /etc/group.
pub fn group_exists(etc_group: &str, name: &str) -> bool {
    etc_group.lines().any(|l| l.split(':').next() == Some(name))
}

/// Counts deaths in a sliding window: `record` says whether another restart is allowed.
#[derive(Debug, Default)]
pub struct RestartBudget {
    deaths: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn record(&mut self, now: Instant) -> bool {
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.deaths.pop_front();
        }
        self.deaths.push_back(now);
        self.deaths.len() <= MAX_RESTARTS
    }

    /// The pause before restart number `n` in the window.
    pub fn backoff(&self) -> Duration {
        let n = self.deaths.len().saturating_sub(1).min(8) as u32;
        (BACKOFF_START * 2u32.pow(n)).min(BACKOFF_MAX)
    }
}

/// Starts lxd and keeps restarting it when it exits, until the budget is spent. Returns once
/// the first start was spawned; the supervision is the returned task, which ends when it gives
/// up.
pub fn supervise(cmd: LxdCommand) -> Result<tokio::task::JoinHandle<()>, LxdProcessError> {
    let mut child = cmd.spawn()?;
    Ok(tokio::spawn(async move {
        let mut budget = RestartBudget::default();
        loop {
            let status = child.wait().await;
            eprintln!("tremplin: lxd exited ({status:?})");
            loop {
                if !budget.record(Instant::now()) {
                    eprintln!("tremplin: {}", LxdProcessError::GaveUp);
                    return;
                }
                tokio::time::sleep(budget.backoff()).await;
                match cmd.spawn() {
                    Ok(c) => {
                        child = c;
                        break;
                    }
                    Err(e) => eprintln!("tremplin: {e}"),
                }
            }
        }
    }))
}

/// Whether LXD answers now: its daemon is initialised (`/internal/ready`) and serves `/1.0`.
pub async fn answers(client: &LxdClient) -> Result<(), String> {
    client
        .get("/internal/ready")
        .await
        .map_err(|e| e.to_string())?;
    client
        .get("/1.0")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Waits until LXD answers, up to `timeout`.
pub async fn wait_ready(client: &LxdClient, timeout: Duration) -> Result<(), LxdProcessError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match answers(client).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(LxdProcessError::NotReady {
                socket: client.socket().to_path_buf(),
                seconds: timeout.as_secs(),
                last: format!(" (last: {last})"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_budget_allows_ten_deaths_in_thirty_seconds() {
        let mut b = RestartBudget::default();
        let t0 = Instant::now();
        for i in 0..MAX_RESTARTS {
            assert!(b.record(t0 + Duration::from_millis(i as u64)), "death {i}");
        }
        assert!(!b.record(t0 + Duration::from_secs(1)));
        // Deaths older than the window no longer count.
        let mut b = RestartBudget::default();
        for i in 0..MAX_RESTARTS {
            b.record(t0 + Duration::from_secs(i as u64));
        }
        assert!(b.record(t0 + RESTART_WINDOW + Duration::from_secs(5)));
        assert!(b.backoff() <= BACKOFF_MAX);
    }

    #[test]
    fn lxd_arguments_follow_the_image() {
        let mut cmd = LxdCommand {
            program: "lxd".into(),
            lxd_dir: "/mnt/stateful/lxd".into(),
            logfile: None,
            group: Some("lxd".into()),
        };
        assert_eq!(cmd.args(), ["--group", "lxd", "--syslog"]);
        cmd.group = None;
        cmd.logfile = Some("/tmp/lxd.log".into());
        assert_eq!(cmd.args(), ["--logfile", "/tmp/lxd.log"]);
        assert!(group_exists("root:x:0:\nlxd:x:106:\n", "lxd"));
        assert!(!group_exists("root:x:0:\nlxdx:x:106:\n", "lxd"));
    }
}
