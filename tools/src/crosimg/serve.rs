//! `crosimg serve DIR`: a simplestreams tree over plain HTTP, for LXD (through crosd's image
//! proxy) and for tests. GET and HEAD of the tree's files, with Content-Length; nothing outside
//! DIR, no hidden files (a build in progress lives in DIR/.build-*), no directory listings.
//!
//! tiny_http accepts connections and parses requests on its own threads; a few workers here
//! take the parsed requests and answer them, so one slow download does not hold up the index.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::simplestreams::INDEX_PATH;

/// Default address of `crosimg serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Requests answered at once.
const WORKERS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "{}: not a simplestreams tree (no {INDEX_PATH}; build one with crosimg build-container KIND --out {})",
        dir.display(),
        dir.display()
    )]
    NotATree { dir: PathBuf },
    #[error("{}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: String,
        source: std::io::Error,
    },
    #[error("HTTP server on {addr}: {reason}")]
    Server { addr: SocketAddr, reason: String },
}

/// A bound server that has not started answering yet.
pub struct Server {
    http: Arc<tiny_http::Server>,
    root: PathBuf,
    addr: SocketAddr,
}

/// One answered request, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub remote: Option<SocketAddr>,
    pub method: String,
    pub url: String,
    pub status: u16,
    pub bytes: u64,
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let remote = self
            .remote
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        write!(
            f,
            "{remote} {} {} {} {}",
            self.method, self.url, self.status, self.bytes
        )
    }
}

impl Server {
    /// Checks that `dir` is a simplestreams tree and binds `listen` (port 0 picks a free one).
    pub fn bind(dir: &Path, listen: &str) -> Result<Server, ServeError> {
        let root = dir.canonicalize().map_err(|source| ServeError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        if !root.join(INDEX_PATH).is_file() {
            return Err(ServeError::NotATree {
                dir: dir.to_path_buf(),
            });
        }
        let listener = TcpListener::bind(listen).map_err(|source| ServeError::Listen {
            listen: listen.to_string(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            listen: listen.to_string(),
            source,
        })?;
        let http =
            tiny_http::Server::from_listener(listener, None).map_err(|e| ServeError::Server {
                addr,
                reason: e.to_string(),
            })?;
        Ok(Server {
            http: Arc::new(http),
            root,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of the tree, with the real port: `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Starts the workers; `log` gets every answered request. The server stops when the handle
    /// is dropped or [`Running::stop`] is called.
    pub fn start(self, log: impl Fn(&Served) + Send + Sync + 'static) -> Running {
        let log = Arc::new(log);
        let root = Arc::new(self.root);
        let workers = (0..WORKERS)
            .map(|_| {
                let (http, root, log) = (self.http.clone(), root.clone(), log.clone());
                std::thread::spawn(move || {
                    // recv() fails once unblock() is called for this worker: time to stop.
                    while let Ok(request) = http.recv() {
                        log(&answer(&root, request));
                    }
                })
            })
            .collect();
        Running {
            http: self.http,
            addr: self.addr,
            workers,
        }
    }

    /// Serves until the process is killed, one line per request on stderr (stdout carries only
    /// the URL line a parent process may be reading, so a parent that stops reading it never
    /// blocks the server).
    pub fn run_forever(self) -> ! {
        println!("serving {}", self.url());
        let _ = std::io::stdout().flush();
        let _running = self.start(|served| eprintln!("{served}"));
        loop {
            std::thread::park();
        }
    }
}

/// A server answering requests.
pub struct Running {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops taking requests and waits for the ones being answered.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for _ in &self.workers {
            self.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The file under `root` a request path names, or why there is none: 400 for a path that tries
/// to leave the tree, 404 for hidden names, directories, missing files and symlinks that lead
/// out of it.
pub fn resolve(root: &Path, url: &str) -> Result<PathBuf, u16> {
    // A request through a proxy may carry the absolute form (http://host:port/path).
    let path = match url.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path).ok_or(400u16)?;
    if !decoded.starts_with('/') || decoded.contains('\0') {
        return Err(400);
    }
    let mut file = root.to_path_buf();
    for c in Path::new(&decoded).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => {
                if name.to_string_lossy().starts_with('.') {
                    return Err(404);
                }
                file.push(name);
            }
            Component::ParentDir | Component::Prefix(_) => return Err(400),
        }
    }
    let real = file.canonicalize().map_err(|_| 404u16)?;
    if !real.starts_with(root) || !real.is_file() {
        return Err(404);
    }
    Ok(real)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn header(name: &str, value: &str) -> Header {
    // Both are ASCII constants or ASCII built here.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn answer(root: &Path, request: Request) -> Served {
    let mut served = Served {
        remote: request.remote_addr().copied(),
        method: request.method().to_string(),
        url: request.url().to_string(),
        status: 200,
        bytes: 0,
    };
    let result = match request.method() {
        Method::Get | Method::Head => resolve(root, request.url()),
        _ => Err(405),
    };
    let outcome = match result.and_then(|path| {
        let file = File::open(&path).map_err(|_| 404u16)?;
        Ok((path, file))
    }) {
        Ok((path, file)) => {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if *request.method() == Method::Get {
                served.bytes = len;
            }
            let response =
                Response::from_file(file).with_header(header("Content-Type", content_type(&path)));
            request.respond(response)
        }
        Err(status) => {
            served.status = status;
            let reason = StatusCode(status).default_reason_phrase();
            let mut response = Response::from_string(format!("{status} {reason}\n"))
                .with_status_code(status)
                .with_header(header("Content-Type", "text/plain"));
            if status == 405 {
                response = response.with_header(header("Allow", "GET, HEAD"));
            }
            request.respond(response)
        }
    };
    if outcome.is_err() {
        // The client went away mid-answer.
        served.bytes = 0;
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("streams/v1")).unwrap();
        std::fs::write(root.join("streams/v1/index.json"), b"{}").unwrap();
        std::fs::write(root.join(".hidden"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let ok = root.join("streams/v1/index.json");
        assert_eq!(resolve(&root, "/streams/v1/index.json"), Ok(ok.clone()));
        assert_eq!(
            resolve(&root, "/streams/v1/index%2Ejson?x=1"),
            Ok(ok.clone())
        );
        assert_eq!(
            resolve(&root, "http://127.0.0.1:1/streams/v1/index.json"),
            Ok(ok)
        );
        assert_eq!(resolve(&root, "/../etc/passwd"), Err(400));
        assert_eq!(
            resolve(&root, "/streams/%2e%2e/%2e%2e/etc/passwd"),
            Err(400)
        );
        assert_eq!(resolve(&root, "/.hidden"), Err(404));
        assert_eq!(resolve(&root, "/link"), Err(404));
        assert_eq!(resolve(&root, "/streams"), Err(404));
        assert_eq!(resolve(&root, "/missing"), Err(404));
        assert_eq!(resolve(&root, "/bad%zz"), Err(400));
    }
}
