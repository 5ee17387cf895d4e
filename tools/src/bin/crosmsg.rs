//! crosmsg: send any message to crosd's actors, and read, summarise and replay traces.

use clap::{Parser, Subcommand};
use cros_messages::{ActorKind, Addr, Body};
use cros_tools::client::{self, Client, ClientError};
use cros_tools::trace_tool::replay::{self, ReplayReport};
use cros_tools::trace_tool::{self, Trace};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit statuses, so scripts can tell failures apart.
mod exit {
    /// The request failed (error reply), a replay diverged, or the trace is damaged.
    pub const FAILED: u8 = 1;
    /// Bad command line: unknown actor, bad address, bad JSON.
    pub const USAGE: u8 = 2;
    /// crosd is not running or refused us.
    pub const UNAVAILABLE: u8 = 3;
    /// No reply before --timeout.
    pub const TIMEOUT: u8 = 4;
}

/// Talk to crosd's actors by hand, and work with its traces.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Exit status: 0 success; 1 error reply, replay divergence or damaged trace; \
                  2 bad command line (unknown actor, bad JSON); 3 crosd not running or refused \
                  the connection; 4 timeout."
)]
struct Args {
    /// crosd's control socket [default: $CROSD_SOCKET, else /run/crosd/crosd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the registered actors, one a line.
    List {
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Send one request and print the reply as JSON.
    ///
    /// JSON is the actor's request enum in serde's externally tagged form, e.g.
    /// crosmsg send concierge '{"GetVmInfo":{"name":"termina"}}'.
    /// An error reply is printed on stderr and the exit status is 1.
    Send {
        /// The actor: bus, imageloader, concierge, cicerone, seneschal, vmlog_forwarder, or a
        /// guest actor's address such as maitred@termina.
        actor: String,
        /// The request as JSON.
        json: String,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Read, summarise or replay a trace recorded with `crosd --trace FILE`.
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TraceCommand {
    /// Print one line per envelope: time, from -> to, type, ids.
    Show {
        /// The trace file.
        file: PathBuf,
        /// One JSON object per line instead, with the whole envelope.
        #[arg(long)]
        json: bool,
    },
    /// Counts per message type and request -> reply latency (p50, p99, max) per request type.
    Stats {
        /// The trace file.
        file: PathBuf,
    },
    /// Re-send the recorded client requests to a running crosd and report every reply that
    /// differs from the recorded one (ids and times ignored). With --actor, replay one host
    /// actor in isolation instead: a fresh instance gets its recorded inbox in order and its
    /// own requests are answered from the trace; no crosd needed.
    Replay {
        /// The trace file.
        file: PathBuf,
        /// Replay this host actor in isolation (e.g. concierge).
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
        /// With --actor: the state directory the fresh actor sees [default: a new empty one].
        #[arg(long, value_name = "DIR", requires = "actor")]
        state_dir: Option<PathBuf>,
        /// Seconds to wait for each reply.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket = args.socket.as_deref();
    match args.command {
        Command::List { timeout } => list(socket, timeout),
        Command::Send {
            actor,
            json,
            timeout,
        } => send(socket, &actor, &json, timeout),
        Command::Trace { command } => match command {
            TraceCommand::Show { file, json } => show(&file, json),
            TraceCommand::Stats { file } => stats(&file),
            TraceCommand::Replay {
                file,
                actor,
                state_dir,
                timeout,
            } => replay_cmd(
                &file,
                socket,
                actor.as_deref(),
                state_dir.as_deref(),
                timeout,
            ),
        },
    }
}

fn seconds(s: f64) -> Result<Duration, ExitCode> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        eprintln!("crosmsg: bad --timeout {s}: give a positive number of seconds");
        ExitCode::from(exit::USAGE)
    })
}

/// Prints a client error and picks the exit status for it.
fn client_failure(e: &ClientError) -> ExitCode {
    eprintln!("crosmsg: {e}");
    ExitCode::from(match e {
        ClientError::NotRunning(_) | ClientError::Connect { .. } | ClientError::Refused(_) => {
            exit::UNAVAILABLE
        }
        ClientError::Timeout { .. } => exit::TIMEOUT,
        _ => exit::FAILED,
    })
}

fn list(socket: Option<&Path>, timeout: f64) -> ExitCode {
    let timeout = match seconds(timeout) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let actors = Client::connect_default(socket).and_then(|mut c| c.list_actors(timeout));
    match actors {
        Ok(actors) => {
            for a in actors {
                if a.restarts > 0 {
                    println!("{}\t(restarted {} times)", a.addr, a.restarts);
                } else {
                    println!("{}", a.addr);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => client_failure(&e),
    }
}

fn send(socket: Option<&Path>, actor: &str, json: &str, timeout: f64) -> ExitCode {
    let timeout = match seconds(timeout) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let to: Addr = match actor.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crosmsg: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let Some(kind) = to.kind() else {
        let known: Vec<&str> = std::iter::once(ActorKind::Bus)
            .chain(ActorKind::HOST)
            .map(ActorKind::name)
            .collect();
        eprintln!(
            "crosmsg: unknown actor {:?}: crosd's actors are {} (guest actors: maitred@VM, \
             tremplin@VM, garcon@VM/CONTAINER)",
            to.actor,
            known.join(", ")
        );
        return ExitCode::from(exit::USAGE);
    };
    let body = match Body::request_from_json(kind, json) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("crosmsg: bad JSON for a {} request: {e}", kind.name());
            return ExitCode::from(exit::USAGE);
        }
    };
    let reply = Client::connect_default(socket).and_then(|mut c| c.request(&to, body, timeout));
    match reply {
        Ok(Body::Error(e)) => {
            eprintln!("crosmsg: {to} answered with an error: {e}");
            ExitCode::from(exit::FAILED)
        }
        Ok(body) => {
            let text = serde_json::to_string_pretty(&body.inner_json())
                .unwrap_or_else(|e| format!("<cannot print reply: {e}>"));
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => client_failure(&e),
    }
}

fn read_trace(file: &Path) -> Result<Trace, ExitCode> {
    Trace::read(file).map_err(|e| {
        eprintln!("crosmsg: cannot read trace {}: {e}", file.display());
        ExitCode::from(exit::FAILED)
    })
}

/// Reports a damaged trace after its readable part was used.
fn trace_damage(trace: &Trace, file: &Path) -> ExitCode {
    match &trace.error {
        Some(e) => {
            eprintln!(
                "crosmsg: {}: {e} ({} records before it were read)",
                file.display(),
                trace.entries.len()
            );
            ExitCode::from(exit::FAILED)
        }
        None => ExitCode::SUCCESS,
    }
}

fn show(file: &Path, as_json: bool) -> ExitCode {
    let trace = match read_trace(file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    for entry in &trace.entries {
        if as_json {
            println!("{}", trace_tool::show_json(entry));
        } else {
            println!("{}", trace_tool::show_line(entry));
        }
    }
    trace_damage(&trace, file)
}

fn stats(file: &Path) -> ExitCode {
    let trace = match read_trace(file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    print!("{}", trace_tool::render_stats(&trace_tool::stats(&trace)));
    trace_damage(&trace, file)
}

fn replay_cmd(
    file: &Path,
    socket: Option<&Path>,
    actor: Option<&str>,
    state_dir: Option<&Path>,
    timeout: f64,
) -> ExitCode {
    let timeout = match seconds(timeout) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let trace = match read_trace(file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let result = match actor {
        Some(name) => actix::System::new().block_on(replay::replay_actor(&trace, name, state_dir)),
        None => replay::replay_to_daemon(&trace, &client::socket_path(socket), timeout),
    };
    let report: ReplayReport = match result {
        Ok(r) => r,
        Err(replay::ReplayError::Client(e)) => return client_failure(&e),
        Err(e) => {
            eprintln!("crosmsg: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    for d in &report.divergences {
        println!("DIVERGENCE {d}");
    }
    println!(
        "replayed {} request(s){}: {} divergence(s)",
        report.replayed,
        if report.skipped > 0 {
            format!(" ({} skipped: no recorded reply)", report.skipped)
        } else {
            String::new()
        },
        report.divergences.len()
    );
    let damaged = trace_damage(&trace, file);
    if !report.divergences.is_empty() {
        ExitCode::from(exit::FAILED)
    } else {
        damaged
    }
}
