//! LXD's REST API over its Unix socket (`$LXD_DIR/unix.socket`), with hyper's HTTP/1.1 client.
//!
//! Each request opens its own connection: a Unix connect costs microseconds, and a connection per
//! request keeps a slow operation (an image upload) from holding up the others. LXD answers
//! `{"type": "sync"|"async"|"error", "metadata": …, "operation": "/1.0/operations/<id>",
//! "error": …, "error_code": …}`; [`LxdClient::sync`] returns the metadata of a sync answer,
//! [`LxdClient::start_operation`] the operation of an async one, and
//! [`LxdClient::wait_operation`] long-polls an operation until it ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A request body: buffered JSON or bytes, or a stream (an image upload).
pub type Body = BoxBody<Bytes, BodyError>;
/// Why a streamed request body stopped.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// LXD answers at most this much to one request we read whole (file contents, JSON).
const MAX_RESPONSE: usize = 64 << 20;
/// How long one long-poll of a running operation (`/1.0/operations/<id>/wait`) lasts: the
/// answer comes as soon as the operation ends, so an end is seen at once rather than at the
/// next poll, and progress is still reported about once a second.
const WAIT_SECS: u32 = 1;
/// The least time between two looks at a running operation.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum LxdError {
    #[error("cannot connect to LXD at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP exchange with LXD failed ({method} {path}): {source}")]
    Http {
        method: Method,
        path: String,
        source: hyper::Error,
    },
    #[error("LXD's answer to {method} {path} is larger than {MAX_RESPONSE} bytes")]
    TooLarge { method: Method, path: String },
    #[error("LXD's answer to {method} {path} is not the JSON expected: {why}")]
    BadAnswer {
        method: Method,
        path: String,
        why: String,
    },
    /// LXD refused: its own error text, which is what the user should see.
    #[error("{message}")]
    Lxd {
        method: Method,
        path: String,
        code: u16,
        message: String,
    },
    #[error("LXD operation {operation} did not finish within {seconds} s")]
    Timeout { operation: String, seconds: u64 },
}

impl LxdError {
    /// LXD said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, LxdError::Lxd { code: 404, .. })
    }
}

/// An ended operation: its final metadata when it succeeded.
#[derive(Debug, Clone)]
pub struct OperationResult {
    pub metadata: Value,
}

#[derive(Debug, Clone)]
pub struct LxdClient {
    socket: PathBuf,
}

pub fn empty_body() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

pub fn bytes_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn json_body(v: &Value) -> Body {
    bytes_body(v.to_string())
}

/// The id at the end of an operation path (`/1.0/operations/<id>`).
fn operation_id(op: &str) -> &str {
    op.rsplit('/').next().unwrap_or(op)
}

impl LxdClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens a fresh connection to LXD's socket (also used for the event websocket).
    pub async fn connect(&self) -> Result<tokio::net::UnixStream, LxdError> {
        tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| LxdError::Connect {
                path: self.socket.clone(),
                source,
            })
    }

    /// Sends one request on a new connection and returns LXD's response head and body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Response<hyper::body::Incoming>, LxdError> {
        let stream = self.connect().await?;
        let http_err = |source| LxdError::Http {
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        // The connection task ends with the exchange (or when LXD closes the socket).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, "lxd");
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(body).map_err(|e| LxdError::BadAnswer {
            method: method.clone(),
            path: path.to_string(),
            why: format!("cannot build the request: {e}"),
        })?;
        sender.send_request(req).await.map_err(http_err)
    }

    /// Reads a response body whole, at most [`MAX_RESPONSE`] bytes.
    async fn read_body(
        method: &Method,
        path: &str,
        resp: Response<hyper::body::Incoming>,
    ) -> Result<Bytes, LxdError> {
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
        match limited.collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) => match e.downcast::<hyper::Error>() {
                Ok(source) => Err(LxdError::Http {
                    method: method.clone(),
                    path: path.to_string(),
                    source: *source,
                }),
                Err(_) => Err(LxdError::TooLarge {
                    method: method.clone(),
                    path: path.to_string(),
                }),
            },
        }
    }

    /// Turns an LXD JSON answer into its metadata, or LXD's error.
    fn parse_answer(
        method: &Method,
        path: &str,
        status: StatusCode,
        body: &[u8],
    ) -> Result<Value, LxdError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            if status.is_success() {
                LxdError::BadAnswer {
                    method: method.clone(),
                    path: path.to_string(),
                    why: e.to_string(),
                }
            } else {
                LxdError::Lxd {
                    method: method.clone(),
                    path: path.to_string(),
                    code: status.as_u16(),
                    message: format!("LXD answered {status} to {method} {path}"),
                }
            }
        })?;
        if v.get("type").and_then(Value::as_str) == Some("error") || !status.is_success() {
            let code = v
                .get("error_code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| *c != 0)
                .unwrap_or(status.as_u16());
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("LXD answered {status} to {method} {path}"));
            return Err(LxdError::Lxd {
                method: method.clone(),
                path: path.to_string(),
                code,
                message,
            });
        }
        Ok(v)
    }

    /// A request whose answer is read whole and parsed.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Value, LxdError> {
        let resp = self.send(method.clone(), path, headers, body).await?;
        let status = resp.status();
        let bytes = Self::read_body(&method, path, resp).await?;
        Self::parse_answer(&method, path, status, &bytes)
    }

    fn json_headers() -> [(&'static str, String); 1] {
        [(CONTENT_TYPE.as_str(), "application/json".to_string())]
    }

    /// A request answered synchronously: returns its metadata.
    pub async fn sync(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, LxdError> {
        let (headers, body) = match body {
            Some(v) => (&Self::json_headers()[..], json_body(v)),
            None => (&[][..], empty_body()),
        };
        let v = self.exchange(method, path, headers, body).await?;
        Ok(v.get("metadata").cloned().unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Result<Value, LxdError> {
        self.sync(Method::GET, path, None).await
    }

    /// A request LXD answers with an operation: returns the operation's path.
    pub async fn start_operation(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<String, LxdError> {
        let (headers, body) = match body {
            Some(v) => (&Self::json_headers()[..], json_body(v)),
            None => (&[][..], empty_body()),
        };
        self.start_operation_with(method, path, headers, body).await
    }

    /// [`Self::start_operation`] with any headers and body (an image upload).
    pub async fn start_operation_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<String, LxdError> {
        let v = self.exchange(method.clone(), path, headers, body).await?;
        match v.get("operation").and_then(Value::as_str) {
            Some(op) if !op.is_empty() => Ok(op.to_string()),
            _ => Err(LxdError::BadAnswer {
                method,
                path: path.to_string(),
                why: "no operation in an answer that should start one".into(),
            }),
        }
    }

    /// Polls operation `op` until it ends, calling `progress` with its metadata while it runs.
    /// A failed operation is LXD's error text.
    pub async fn wait_operation(
        &self,
        op: &str,
        timeout: Duration,
        mut progress: impl FnMut(&Value),
    ) -> Result<OperationResult, LxdError> {
        let path = format!("/1.0/operations/{}", operation_id(op));
        let wait = format!("{path}/wait?timeout={WAIT_SECS}");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let asked = tokio::time::Instant::now();
            let meta = match self.get(&wait).await {
                Ok(meta) => meta,
                // A wait that timed out may come back as an error (LXD versions differ):
                // the operation's state is then asked plainly.
                Err(LxdError::Lxd { code, .. }) if code != 404 => self.get(&path).await?,
                Err(e) => return Err(e),
            };
            let code = meta.get("status_code").and_then(Value::as_u64).unwrap_or(0);
            let op_meta = meta.get("metadata").cloned().unwrap_or(Value::Null);
            match code {
                // Success.
                200 => return Ok(OperationResult { metadata: op_meta }),
                // Failure, Cancelled.
                400 | 401 => {
                    let err = meta
                        .get("err")
                        .and_then(Value::as_str)
                        .filter(|e| !e.is_empty())
                        .unwrap_or("the operation failed without saying why");
                    return Err(LxdError::Lxd {
                        method: Method::GET,
                        path,
                        code: 400,
                        message: err.to_string(),
                    });
                }
                _ => progress(&op_meta),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LxdError::Timeout {
                    operation: path,
                    seconds: timeout.as_secs(),
                });
            }
            // A wait that came back at once without the end would otherwise spin.
            if asked.elapsed() < POLL_INTERVAL {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }

    /// Starts an operation and waits for it.
    pub async fn run_operation(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<OperationResult, LxdError> {
        let op = self.start_operation(method, path, body).await?;
        self.wait_operation(&op, timeout, |_| {}).await
    }

    /// LXD's SFTP server on an instance's filesystem (`GET /1.0/instances/<n>/sftp`, upgraded
    /// to the raw SFTP stream). One conversation is one `lxd forkfile` process in the VM, where
    /// each file-API request starts its own (a few hundred milliseconds under emulation).
    pub async fn sftp(&self, instance: &str) -> Result<TokioIo<Upgraded>, LxdError> {
        let path = format!("/1.0/instances/{instance}/sftp");
        let stream = self.connect().await?;
        let http_err = |source| LxdError::Http {
            method: Method::GET,
            path: path.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let req = Request::builder()
            .method(Method::GET)
            .uri(&path)
            .header(HOST, "lxd")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "sftp")
            .body(empty_body())
            .map_err(|e| LxdError::BadAnswer {
                method: Method::GET,
                path: path.clone(),
                why: format!("cannot build the request: {e}"),
            })?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = Self::read_body(&Method::GET, &path, resp).await?;
            return Err(Self::parse_answer(&Method::GET, &path, status, &bytes)
                .err()
                .unwrap_or(LxdError::BadAnswer {
                    method: Method::GET,
                    path,
                    why: format!("{status} instead of switching to SFTP"),
                }));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(http_err)?;
        Ok(TokioIo::new(upgraded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lxd_errors_keep_lxd_s_text_and_code() {
        let body = br#"{"type":"error","error":"Instance not found","error_code":404}"#;
        let err = LxdClient::parse_answer(
            &Method::GET,
            "/1.0/instances/x",
            StatusCode::NOT_FOUND,
            body,
        )
        .unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(err.to_string(), "Instance not found");
        let ok = LxdClient::parse_answer(
            &Method::GET,
            "/1.0",
            StatusCode::OK,
            br#"{"type":"sync","metadata":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(ok["metadata"]["a"], 1);
        let bad = LxdClient::parse_answer(&Method::GET, "/1.0", StatusCode::OK, b"not json");
        assert!(matches!(bad, Err(LxdError::BadAnswer { .. })));
    }

    #[test]
    fn operation_ids_come_from_the_path() {
        assert_eq!(operation_id("/1.0/operations/abc-123"), "abc-123");
        assert_eq!(operation_id("abc"), "abc");
    }
}
