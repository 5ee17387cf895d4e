//! vsh round trip against a local vshd on a Unix socket: connect, setup, run `true`, exit
//! status back. Two figures, printed as percentiles:
//!   * library: `vsh_client` in this process (the protocol + vshd's spawn cost);
//!   * command: the whole `vsh --socket unix:… -- true` process, as a user would time it.
//!
//! vshd runs in-process on a thread; set VSHD_BIN=/path/to/vshd to time a separate vshd
//! process instead. ITERATIONS (default 200) sets the sample count.

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cros_guest::vshd::{self, ServerConfig};
use cros_messages::vsh::{SetupConnectionRequest, VM_SHELL};
use cros_tools::vsh_client::{DEFAULT_SETUP_TIMEOUT, VshSession};

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1e3
    };
    println!(
        "{name:<34} n={:<4} p50={:>7.3} ms  p90={:>7.3} ms  p99={:>7.3} ms  max={:>7.3} ms",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

fn library_round_trip(sock: &std::path::Path) {
    let stream = UnixStream::connect(sock).expect("connect to vshd");
    let req = SetupConnectionRequest {
        target: VM_SHELL.to_string(),
        user: String::new(),
        env: vec![("TERM".to_string(), "dumb".to_string())],
        argv: vec!["true".to_string()],
        cwd: String::new(),
        window_rows: 0,
        window_cols: 0,
        nopty: true,
    };
    let session = VshSession::start(stream, &req, DEFAULT_SETUP_TIMEOUT).expect("setup");
    let exit = session
        .relay_output(&mut std::io::sink(), &mut std::io::sink())
        .expect("session");
    assert_eq!(exit.code, 0);
}

fn main() {
    let iterations: usize = std::env::var("ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("vshd.sock");
    let mut external = None;
    let server = match std::env::var("VSHD_BIN") {
        Ok(bin) => {
            external = Some(
                Command::new(&bin)
                    .arg("--listen")
                    .arg(format!("unix:{}", sock.display()))
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start VSHD_BIN"),
            );
            while UnixStream::connect(&sock).is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
            format!("vshd process {bin}")
        }
        Err(_) => {
            let listener = vshd::listener::bind_unix(&sock).expect("bind");
            std::thread::spawn(move || vshd::serve(listener, Arc::new(ServerConfig::default())));
            "in-process vshd".to_string()
        }
    };
    println!("vsh round trip (`true`), {server}, Unix socket");

    for _ in 0..10 {
        library_round_trip(&sock);
    }
    let samples = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            library_round_trip(&sock);
            t.elapsed()
        })
        .collect();
    percentiles("library: connect+setup+true+exit", samples);

    let vsh = env!("CARGO_BIN_EXE_vsh");
    let spec = format!("unix:{}", sock.display());
    let run = || {
        let status = Command::new(vsh)
            .args(["--vm_name", "bench", "--socket", &spec, "--", "true"])
            .stdin(Stdio::null())
            .status()
            .expect("run vsh");
        assert_eq!(status.code(), Some(0));
    };
    for _ in 0..5 {
        run();
    }
    let samples = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed()
        })
        .collect();
    percentiles("command: vsh -- true", samples);

    if let Some(mut child) = external {
        let _ = child.kill();
        let _ = child.wait();
    }
}
