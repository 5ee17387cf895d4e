//! vsock test guest: runs as /init in a tiny initramfs, loads the vsock modules, serves the
//! echo, sink, source and control ports of `cros_guest::vsock_probe`, dials the host once, and
//! powers off on `quit` or after a timeout. Every step prints a `CROSD-GUEST:` console line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use cros_guest::cmdline::CrosdParams;
use cros_guest::kmod;
use cros_guest::pid1;
use cros_guest::vsock_probe::{self as probe, MARKER};
use vsock::{VMADDR_CID_ANY, VMADDR_CID_HOST, VsockListener, VsockStream};

fn say(msg: &str) {
    pid1::console_line(MARKER, msg);
}

fn fatal(msg: &str) -> ! {
    say(&format!("error: {msg}; powering off"));
    pid1::power_off()
}

struct Config {
    modules_dir: String,
    echo_port: u32,
    sink_port: u32,
    source_port: u32,
    control_port: u32,
    dial_port: Option<u32>,
    timeout_s: u32,
}

fn config(params: &CrosdParams) -> Result<Config, String> {
    let port = |key, default| {
        params
            .get_u32(key)
            .map(|v| v.unwrap_or(default))
            .map_err(|e| e.to_string())
    };
    Ok(Config {
        modules_dir: params
            .get("modules")
            .unwrap_or(probe::DEFAULT_MODULES_DIR)
            .to_string(),
        echo_port: port("echo_port", probe::DEFAULT_ECHO_PORT)?,
        sink_port: port("sink_port", probe::DEFAULT_SINK_PORT)?,
        source_port: port("source_port", probe::DEFAULT_SOURCE_PORT)?,
        control_port: port("control_port", probe::DEFAULT_CONTROL_PORT)?,
        dial_port: params.get_u32("dial_port").map_err(|e| e.to_string())?,
        timeout_s: port("timeout_s", probe::DEFAULT_TIMEOUT_S)?,
    })
}

fn main() {
    let is_init = std::process::id() == 1;
    if is_init {
        if let Err(e) = pid1::mount_early_filesystems() {
            // Console may not work yet either; try anyway.
            pid1::attach_console();
            fatal(&e.to_string());
        }
        pid1::attach_console();
    }
    say("started");
    let params = CrosdParams::from_proc().unwrap_or_else(|e| fatal(&e.to_string()));
    let cfg = config(&params).unwrap_or_else(|e| fatal(&e));

    let timeout = cfg.timeout_s;
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(u64::from(timeout)));
        fatal(&format!("timeout: no quit within {timeout} s"));
    });

    let t0 = Instant::now();
    match kmod::load_dir(Path::new(&cfg.modules_dir)) {
        Ok(loaded) => say(&format!(
            "loaded {} modules from {} in {} ms",
            loaded.len(),
            cfg.modules_dir,
            t0.elapsed().as_millis()
        )),
        Err(e) => fatal(&e.to_string()),
    }

    // Bind every listener before announcing readiness, so the host can connect at once.
    let listeners = [
        (
            "echo",
            cfg.echo_port,
            serve_echo as fn(VsockStream) -> std::io::Result<()>,
        ),
        ("sink", cfg.sink_port, serve_sink),
        ("source", cfg.source_port, serve_source),
        ("control", cfg.control_port, serve_control),
    ];
    for (name, port, handler) in listeners {
        let listener =
            VsockListener::bind_with_cid_port(VMADDR_CID_ANY, port).unwrap_or_else(|e| {
                fatal(&format!("cannot listen on vsock port {port} ({name}): {e}"))
            });
        thread::spawn(move || accept_loop(name, listener, handler));
    }
    say(&format!(
        "ready echo_port={} sink_port={} source_port={} control_port={}",
        cfg.echo_port, cfg.sink_port, cfg.source_port, cfg.control_port
    ));

    if let Some(port) = cfg.dial_port {
        match dial_and_check(port) {
            Ok(n) => say(&format!("dial port={port} ok bytes={n}")),
            Err(e) => say(&format!("dial port={port} failed: {e}")),
        }
    }

    // Serve until `quit` or the timeout powers the VM off (or, run by hand, until killed).
    loop {
        thread::park();
    }
}

fn accept_loop(
    name: &'static str,
    listener: VsockListener,
    handler: fn(VsockStream) -> std::io::Result<()>,
) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                thread::spawn(move || {
                    if let Err(e) = handler(stream) {
                        say(&format!("{name} connection failed: {e}"));
                    }
                });
            }
            Err(e) => say(&format!("{name} accept failed: {e}")),
        }
    }
}

fn serve_echo(mut stream: VsockStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn read_size_line(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut line = String::new();
    reader.take(64).read_line(&mut line)?;
    probe::parse_size(&line).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad size line {line:?}"),
        )
    })
}

fn serve_sink(stream: VsockStream) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let n = read_size_line(&mut reader)?;
    let got = std::io::copy(&mut (&mut reader).take(n), &mut std::io::sink())?;
    if got != n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("sink: expected {n} bytes, got {got}"),
        ));
    }
    (&stream).write_all(format!("{got}\n").as_bytes())
}

fn serve_source(stream: VsockStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let n = read_size_line(&mut reader)?;
    write_pattern(&mut &stream, n)
}

fn write_pattern(out: &mut impl Write, n: u64) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let pattern = probe::PatternBuf::new(CHUNK);
    let mut off = 0u64;
    while off < n {
        let len = (n - off).min(CHUNK as u64) as usize;
        out.write_all(pattern.slice(off, len))?;
        off += len as u64;
    }
    out.flush()
}

fn serve_control(stream: VsockStream) -> std::io::Result<()> {
    let reader = BufReader::new(stream.try_clone()?);
    let mut out = &stream;
    for line in reader.lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ping"] => out.write_all(b"pong\n")?,
            ["quit"] => {
                out.write_all(b"bye\n")?;
                say("quit received; powering off");
                wait_for_host_close(&stream);
                pid1::power_off();
            }
            ["dial", port, n] => {
                let reply = match (port.parse::<u32>(), probe::parse_size(n)) {
                    (Ok(port), Some(n)) => match dial_send(port, n) {
                        Ok(()) => format!("dialed {n}\n"),
                        Err(e) => format!("error dial {port}: {e}\n"),
                    },
                    _ => format!("error bad dial request {line:?}\n"),
                };
                out.write_all(reply.as_bytes())?;
            }
            _ => out.write_all(format!("error unknown command {line:?}\n").as_bytes())?,
        }
    }
    Ok(())
}

/// Powering off at once can drop `bye` still queued in the guest's vsock transport (the device
/// is reset before its send work runs), so the host would see EOF instead of the reply. Wait for
/// the host to read it and hang up, but not for long: a host that never closes must not keep
/// the VM up.
fn wait_for_host_close(stream: &VsockStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut sink = [0u8; 256];
    while matches!((&*stream).read(&mut sink), Ok(n) if n > 0) {}
}

fn connect_host(port: u32) -> std::io::Result<VsockStream> {
    VsockStream::connect_with_cid_port(VMADDR_CID_HOST, port)
}

/// `dial` command: n pattern bytes to the host, then wait for the host to confirm the count.
fn dial_send(port: u32, n: u64) -> std::io::Result<()> {
    let stream = connect_host(port)?;
    (&stream).write_all(format!("{n}\n").as_bytes())?;
    write_pattern(&mut &stream, n)?;
    let got = read_size_line(&mut BufReader::new(&stream))?;
    if got != n {
        return Err(std::io::Error::other(format!(
            "host confirmed {got} of {n} bytes"
        )));
    }
    Ok(())
}

/// Boot-time dial: send the known payload, read it back, compare.
fn dial_and_check(port: u32) -> std::io::Result<usize> {
    let stream = connect_host(port)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let payload = probe::pattern(probe::DIAL_PAYLOAD_LEN);
    (&stream).write_all(format!("CROSD-DIAL {}\n", payload.len()).as_bytes())?;
    (&stream).write_all(&payload)?;
    let mut back = vec![0u8; payload.len()];
    (&stream).read_exact(&mut back)?;
    if back != payload {
        let at = back
            .iter()
            .zip(&payload)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(std::io::Error::other(format!(
            "echo differs from the payload at byte {at}"
        )));
    }
    Ok(payload.len())
}
