//! A minimal QMP (QEMU Machine Protocol) client: one connection per command, which is all
//! concierge needs (`block_resize`, `system_powerdown`) and keeps no state that could go stale.
//!
//! The protocol: QEMU greets with `{"QMP": …}`, the client enters command mode with
//! `qmp_capabilities`, then each `{"execute": …}` is answered by one `{"return": …}` or
//! `{"error": {"class", "desc"}}` line; asynchronous `{"event": …}` lines may come in between.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// How long QEMU may take to answer one command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// A QMP line longer than this is not something we asked for.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QEMU's QMP socket '{path}': {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP socket '{path}': {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP socket '{path}' closed the connection during {command}")]
    Closed { path: PathBuf, command: String },
    #[error("QMP socket '{path}' sent something that is not QMP during {command}: {line}")]
    Protocol {
        path: PathBuf,
        command: String,
        line: String,
    },
    #[error("QEMU refused {command}: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
}

/// Runs `command` with `arguments` on the QMP socket at `path` and returns its `return` value.
pub fn execute(path: &Path, command: &str, arguments: Value) -> Result<Value, QmpError> {
    let io = |source| QmpError::Io {
        path: path.to_owned(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    let mut session = Session {
        path,
        reader: BufReader::new(stream.try_clone().map_err(io)?),
        writer: stream,
    };
    let greeting = session.read_value("the greeting")?;
    if greeting.get("QMP").is_none() {
        return Err(session.protocol("the greeting", &greeting));
    }
    session.call("qmp_capabilities", json!({}))?;
    session.call(command, arguments)
}

struct Session<'a> {
    path: &'a Path,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Session<'_> {
    fn call(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| QmpError::Io {
                path: self.path.to_owned(),
                source,
            })?;
        loop {
            let value = self.read_value(command)?;
            if let Some(ret) = value.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = value.get("error") {
                let field = |name| {
                    err.get(name)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Refused {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            if value.get("event").is_none() {
                return Err(self.protocol(command, &value));
            }
            // Events (e.g. a RESET while we wait) are not our answer.
        }
    }

    fn read_value(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = Read::take(&mut self.reader, MAX_LINE as u64)
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: self.path.to_owned(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                path: self.path.to_owned(),
                command: command.to_string(),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
            path: self.path.to_owned(),
            command: command.to_string(),
            line: line.chars().take(200).collect(),
        })
    }

    fn protocol(&self, command: &str, value: &Value) -> QmpError {
        QmpError::Protocol {
            path: self.path.to_owned(),
            command: command.to_string(),
            line: value.to_string().chars().take(200).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP peer: a stand-in for QEMU's monitor in unit tests (the real QEMU is
    /// exercised by the end-to-end tests). Returns the lines the client sent.
    fn serve(
        listener: UnixListener,
        replies: Vec<&'static str>,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut sent = String::new();
            for reply in replies {
                reader.read_line(&mut sent).unwrap();
                s.write_all(reply.as_bytes()).unwrap();
            }
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            sent
        })
    }

    #[test]
    fn command_returns_its_value_past_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let peer = serve(
            UnixListener::bind(&path).unwrap(),
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"RESET\"}\n{\"return\": {\"ok\": 1}}\n",
            ],
        );
        let ret = execute(
            &path,
            "block_resize",
            json!({"device": "disk2", "size": 4096}),
        )
        .unwrap();
        assert_eq!(ret, json!({"ok": 1}));
        let sent = peer.join().unwrap();
        let lines: Vec<Value> = sent
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["execute"], "qmp_capabilities");
        assert_eq!(lines[1]["execute"], "block_resize");
        assert_eq!(lines[1]["arguments"]["size"], 4096);
    }

    #[test]
    fn errors_and_garbage_are_reported_with_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let peer = serve(
            UnixListener::bind(&path).unwrap(),
            vec![
                "{\"return\": {}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such device\"}}\n",
            ],
        );
        let err = execute(&path, "block_resize", json!({})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "QEMU refused block_resize: GenericError: no such device"
        );
        peer.join().unwrap();

        let path2 = dir.path().join("qmp2.sock");
        let peer = serve(UnixListener::bind(&path2).unwrap(), vec!["not json\n"]);
        let err = execute(&path2, "system_powerdown", json!({})).unwrap_err();
        assert!(
            matches!(err, QmpError::Protocol { ref command, .. } if command == "qmp_capabilities"),
            "{err}"
        );
        peer.join().unwrap();

        let missing = dir.path().join("absent.sock");
        let err = execute(&missing, "system_powerdown", json!({})).unwrap_err();
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }
}
