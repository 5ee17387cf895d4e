//! The image proxy: how LXD in a VM without a network device downloads container images, as
//! Crostini's LXD downloads through the host.
//!
//! A guest reaches it by dialing host vsock port [`ports::IMAGE_PROXY`] (tremplin forwards a
//! guest-local TCP port to it and points LXD's `core.proxy_http(s)` there). It speaks HTTP/1.1
//! proxying with hyper: `CONNECT host:port` for https (then raw bytes), absolute-URI requests for
//! http. It connects only to the `host:port` of image servers a local user named for this VM
//! (CreateLxdContainer's image server, or one configured for crosd): the guest is untrusted and
//! must not reach other host services (a loopback port, the LAN) through it.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cros_messages::{CrosError, ports};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixListener};

use crate::bridge::vsock::listen_guest_port;

/// Connections one VM may hold open through the proxy at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long connecting to an image server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The `host:port` pairs a VM's proxy may connect to, shared with cicerone, which adds to it.
#[derive(Clone, Debug, Default)]
pub struct AllowedServers(Arc<Mutex<BTreeSet<(String, u16)>>>);

impl AllowedServers {
    pub fn allow(&self, host: &str, port: u16) {
        if let Ok(mut set) = self.0.lock() {
            set.insert((host.to_ascii_lowercase(), port));
        }
    }

    pub fn permits(&self, host: &str, port: u16) -> bool {
        self.0
            .lock()
            .map(|set| set.contains(&(host.to_ascii_lowercase(), port)))
            .unwrap_or(false)
    }
}

/// A server's `host` and `port` from its URL (`https://images.example:8443/`), as the proxy
/// will see them in a CONNECT or an absolute URI.
pub fn server_host_port(url: &str) -> Result<(String, u16), CrosError> {
    let bad = |why: &str| CrosError::invalid(format!("image server {url:?}: {why}"));
    let uri: Uri = url.parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ => return Err(bad("the URL must start with http:// or https://")),
    };
    let host = uri.host().ok_or_else(|| bad("the URL names no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), uri.port_u16().unwrap_or(default_port)))
}

/// A VM's image proxy: listening while this lives.
pub struct ImageProxy {
    task: tokio::task::JoinHandle<()>,
}

impl ImageProxy {
    /// Listens on the VM's host port [`ports::IMAGE_PROXY`] (`<uds>_3128`). Must run on an
    /// actix arbiter or a local set (connections are tasks of the current thread).
    pub fn start(uds: &Path, allowed: AllowedServers) -> Result<Self, CrosError> {
        let listener = listen_guest_port(uds, ports::IMAGE_PROXY)?;
        Ok(Self {
            task: tokio::task::spawn_local(serve(listener, allowed)),
        })
    }
}

impl Drop for ImageProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: UnixListener, allowed: AllowedServers) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "image proxy listener failed");
                return;
            }
        };
        if open.get() >= MAX_CONNECTIONS {
            tracing::warn!(
                open = MAX_CONNECTIONS,
                "image proxy connection refused: too many open"
            );
            continue;
        }
        open.set(open.get() + 1);
        let (open, allowed) = (open.clone(), allowed.clone());
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| proxy(req, allowed.clone()));
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "image proxy connection ended");
            }
            open.set(open.get() - 1);
        });
    }
}

fn text(status: StatusCode, msg: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(msg + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp
}

fn refused(host: &str, port: u16) -> Response<ProxyBody> {
    tracing::warn!(host, port, "image proxy refused a server no user named");
    text(
        StatusCode::FORBIDDEN,
        format!("crosd image proxy: {host}:{port} is not an image server a user named for this VM"),
    )
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, Response<ProxyBody>> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(text(
            StatusCode::BAD_GATEWAY,
            format!("crosd image proxy: cannot connect to {host}:{port}: {e}"),
        )),
        Err(_) => Err(text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("crosd image proxy: connecting to {host}:{port} timed out"),
        )),
    }
}

async fn proxy(
    req: Request<Incoming>,
    allowed: AllowedServers,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match *req.method() {
        Method::CONNECT => tunnel(req, &allowed).await,
        _ => forward(req, &allowed).await,
    })
}

/// `CONNECT host:port`: answer 200 once connected, then copy bytes both ways.
async fn tunnel(req: Request<Incoming>, allowed: &AllowedServers) -> Response<ProxyBody> {
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((a.host().to_string(), a.port_u16()?)))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "crosd image proxy: CONNECT needs host:port, not {}",
                req.uri()
            ),
        );
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !allowed.permits(&host, port) {
        return refused(&host, port);
    }
    let mut server = match connect(&host, port).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    tokio::task::spawn_local(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut guest = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut guest, &mut server).await {
                    tracing::debug!(host, port, error = %e, "image proxy tunnel ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "image proxy: CONNECT upgrade failed"),
        }
    });
    Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// `GET http://host:port/path`: the same request, in origin form, on a new connection to the
/// server; its answer streamed back.
async fn forward(mut req: Request<Incoming>, allowed: &AllowedServers) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("crosd image proxy: only http://host/path requests and CONNECT, not {uri}"),
        );
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    if !allowed.permits(&host, port) {
        return refused(&host, port);
    }
    let server = match connect(&host, port).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(server)).await
    {
        Ok(pair) => pair,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("crosd image proxy: {host}:{port}: {e}"),
            );
        }
    };
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "image proxy upstream connection ended");
        }
    });
    let origin = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = match origin.parse() {
        Ok(u) => u,
        Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "crosd image proxy: bad path".into(),
            );
        }
    };
    req.headers_mut().remove("proxy-connection");
    req.headers_mut().remove("proxy-authorization");
    match sender.send_request(req).await {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("crosd image proxy: {host}:{port}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests;
