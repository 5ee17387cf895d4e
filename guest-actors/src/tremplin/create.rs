//! CreateContainer: EXISTS, or CREATING at once and the rest as a task — the instance is made
//! under a temporary name from a simplestreams server (LXD downloads through the host proxy) or
//! from two tarballs the host streams in, then renamed; on failure the temporary instance is
//! deleted so nothing is left behind.

use std::sync::Arc;
use std::time::Duration;

use cros_messages::CrosError;
use cros_messages::cicerone::ContainerStatus;
use cros_messages::tremplin::{TremplinEvent, TremplinReply};
use hyper::Method;
use serde_json::{Value, json};

use super::forwarder::{TunnelGuard, loopback_addrs};
use super::lxd_client::LxdError;
use super::start::token_device;
use super::upload;
use super::validate::{self, InvalidRequest};
use super::{Tremplin, lxd_error};

/// How long a create may take (a large image over a slow link).
const CREATE_TIMEOUT: Duration = Duration::from_secs(3600);
const RENAME_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Server { url: String, alias: String },
    Upload { port: u32 },
}

impl ImageSource {
    /// How a failure names the image.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::Server { url, alias } => format!("image {alias} from {url}"),
            ImageSource::Upload { .. } => "the uploaded image".to_string(),
        }
    }

    /// The source a CreateContainer request names, checked.
    pub fn from_request(
        image_server: &str,
        image_alias: &str,
        rootfs_path: &str,
        metadata_path: &str,
        upload_port: u32,
        version: &str,
    ) -> Result<Self, InvalidRequest> {
        if upload_port != 0 {
            return Ok(ImageSource::Upload { port: upload_port });
        }
        if !rootfs_path.is_empty() || !metadata_path.is_empty() {
            return Err(InvalidRequest::PathsWithoutUpload);
        }
        if image_server.is_empty() && image_alias.is_empty() {
            return Err(InvalidRequest::NoImage);
        }
        let url = image_server.replacen("%d", version, 1);
        server_host_port(&url)?;
        validate::alias(image_alias)?;
        Ok(ImageSource::Server {
            url,
            alias: image_alias.to_string(),
        })
    }
}

/// The host and port of an http(s) URL (`host` as written, brackets kept for IPv6).
pub fn server_host_port(url: &str) -> Result<(String, u16), InvalidRequest> {
    let bad = || InvalidRequest::Server(url.to_string());
    let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
    let default = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(bad()),
    };
    let auth = uri.authority().ok_or_else(bad)?;
    if auth.as_str().contains('@') || auth.host().is_empty() {
        return Err(bad());
    }
    Ok((auth.host().to_string(), auth.port_u16().unwrap_or(default)))
}

/// The percent in an operation's `download_progress` ("rootfs: 23% (358.09kB/s)").
pub fn parse_progress(text: &str) -> Option<u8> {
    let pct = text.find('%')?;
    let digits: String = text[..pct]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse::<u32>().ok().map(|p| p.min(100) as u8)
}

/// The download percent in an operation's metadata, if it says one.
pub fn operation_progress(meta: &Value) -> Option<u8> {
    meta.get("download_progress")
        .and_then(Value::as_str)
        .and_then(parse_progress)
}

/// The instance source LXD pulls a simplestreams image from.
pub fn server_source(url: &str, alias: &str) -> Value {
    json!({
        "type": "image",
        "mode": "pull",
        "protocol": "simplestreams",
        "server": url,
        "alias": alias,
    })
}

/// In LXD's image list (`/1.0/images?recursion=1`), the image cached from `url` as `alias`.
pub fn cached_fingerprint(images: &Value, url: &str, alias: &str) -> Option<String> {
    let same_server = |a: &str| a.trim_end_matches('/') == url.trim_end_matches('/');
    images.as_array()?.iter().find_map(|image| {
        let source = image.get("update_source")?;
        let matches = source.get("protocol").and_then(Value::as_str) == Some("simplestreams")
            && source.get("alias").and_then(Value::as_str) == Some(alias)
            && source
                .get("server")
                .and_then(Value::as_str)
                .is_some_and(same_server);
        if !matches {
            return None;
        }
        image
            .get("fingerprint")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

impl Tremplin {
    pub(super) async fn create_container(
        self: &Arc<Self>,
        name: String,
        source: ImageSource,
    ) -> Result<TremplinReply, CrosError> {
        self.require_lxd()?;
        let status = |status, failure_reason: String| TremplinReply::ContainerStatus {
            name: name.clone(),
            status,
            failure_reason,
        };
        if !self.begin("create", &name) {
            return Ok(status(ContainerStatus::Creating, String::new()));
        }
        match self.instance_exists(&name).await {
            Ok(false) => {}
            Ok(true) => {
                self.end("create", &name);
                return Ok(status(ContainerStatus::Exists, String::new()));
            }
            Err(e) => {
                self.end("create", &name);
                return Err(e);
            }
        }
        let me = self.clone();
        let task_name = name.clone();
        tokio::spawn(async move {
            let (status, failure_reason) = match me.create_now(&task_name, &source).await {
                Ok(()) => (ContainerStatus::Created, String::new()),
                // Name the image: LXD's own words ("The requested image couldn't be found")
                // do not say which.
                Err(e) => (
                    ContainerStatus::Failed,
                    format!("{}: {e}", source.describe()),
                ),
            };
            if status == ContainerStatus::Failed {
                eprintln!("tremplin: creating {task_name} failed: {failure_reason}");
            }
            me.end("create", &task_name);
            me.events.send(TremplinEvent::UpdateCreateStatus {
                name: task_name,
                status,
                percent: if status == ContainerStatus::Created {
                    100
                } else {
                    0
                },
                failure_reason,
            });
        });
        Ok(status(ContainerStatus::Creating, String::new()))
    }

    pub(super) async fn instance_exists(&self, name: &str) -> Result<bool, CrosError> {
        match self.lxd.get(&format!("/1.0/instances/{name}")).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(lxd_error(&format!("looking up container {name}"), e)),
        }
    }

    /// Deletes an instance, whatever state it is in; a missing one is fine.
    pub(super) async fn delete_instance(&self, name: &str) -> Result<(), LxdError> {
        let state = json!({"action": "stop", "force": true, "timeout": -1});
        match self
            .lxd
            .run_operation(
                Method::PUT,
                &format!("/1.0/instances/{name}/state"),
                Some(&state),
                Duration::from_secs(60),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            // "The instance is already stopped".
            Err(_) => {}
        }
        match self
            .lxd
            .run_operation(
                Method::DELETE,
                &format!("/1.0/instances/{name}"),
                None,
                Duration::from_secs(120),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The whole create; an error is the failure reason the host shows.
    async fn create_now(&self, name: &str, source: &ImageSource) -> Result<(), String> {
        let tmp = validate::inprogress_name(name);
        // A temporary instance left by a create that died with tremplin.
        self.delete_instance(&tmp)
            .await
            .map_err(|e| format!("removing the stale {tmp}: {e}"))?;
        let made = match source {
            ImageSource::Server { url, alias } => {
                self.create_from_server(name, &tmp, url, alias).await
            }
            ImageSource::Upload { port } => self.create_from_upload(name, &tmp, *port).await,
        };
        let renamed = match made {
            Ok(()) => self
                .lxd
                .run_operation(
                    Method::POST,
                    &format!("/1.0/instances/{tmp}"),
                    Some(&json!({"name": name})),
                    RENAME_TIMEOUT,
                )
                .await
                .map(|_| ())
                .map_err(|e| format!("renaming {tmp} to {name}: {e}")),
            Err(e) => Err(e),
        };
        if let Err(e) = renamed {
            if let Err(del) = self.delete_instance(&tmp).await {
                eprintln!("tremplin: cannot delete {tmp} after a failed create: {del}");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn create_from_server(
        &self,
        name: &str,
        tmp: &str,
        url: &str,
        alias: &str,
    ) -> Result<(), String> {
        if let Some(fingerprint) = self.cached_image(url, alias).await {
            let req = self.instance_request(
                name,
                tmp,
                json!({"type": "image", "fingerprint": fingerprint}),
            )?;
            return self
                .lxd
                .run_operation(Method::POST, "/1.0/instances", Some(&req), CREATE_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|e| {
                    format!("creating the container from cached image {fingerprint}: {e}")
                });
        }
        let (host, port) = server_host_port(url).map_err(|e| e.to_string())?;
        let tunnel: Option<TunnelGuard> = match loopback_addrs(&host) {
            Some(addrs) => Some(
                self.tunnels
                    .acquire(&host, port, &addrs)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let req = self.instance_request(name, tmp, server_source(url, alias))?;
        let op = self
            .lxd
            .start_operation(Method::POST, "/1.0/instances", Some(&req))
            .await
            .map_err(|e| e.to_string())?;
        let mut last = None;
        self.lxd
            .wait_operation(&op, CREATE_TIMEOUT, |meta| {
                if let Some(p) = operation_progress(meta)
                    && last != Some(p)
                {
                    last = Some(p);
                    self.events.send(TremplinEvent::UpdateCreateStatus {
                        name: name.to_string(),
                        status: ContainerStatus::Downloading,
                        percent: p,
                        failure_reason: String::new(),
                    });
                }
            })
            .await
            .map(|_| ())
            .map_err(|e| {
                // LXD saw a reset; the tunnel knows the host proxy refused, and why.
                match tunnel.as_ref().and_then(TunnelGuard::last_error) {
                    Some(why) => format!("{why} ({e})"),
                    None => e.to_string(),
                }
            })
    }

    /// The create request of container `name` (made as `tmp`): with its token device already,
    /// so that its starts need not change the instance ([`super::start::start_patch_needed`]).
    /// The token file is made (empty) here: LXD refuses a disk device whose source is missing.
    fn instance_request(&self, name: &str, tmp: &str, source: Value) -> Result<Value, String> {
        let token_file = self.write_token(name, "").map_err(|e| e.message)?;
        Ok(json!({"name": tmp, "source": source, "devices": token_device(&token_file)}))
    }

    /// The fingerprint of the image LXD already holds from `url` under `alias`, if any: a
    /// create from it needs no round trip to the server (through the host's proxy) to resolve
    /// the alias again, as `lxc launch <fingerprint>` does not. LXD keeps cached images up to
    /// date itself (`images.auto_update_interval`).
    async fn cached_image(&self, url: &str, alias: &str) -> Option<String> {
        let images = self.lxd.get("/1.0/images?recursion=1").await.ok()?;
        cached_fingerprint(&images, url, alias)
    }

    async fn create_from_upload(&self, name: &str, tmp: &str, port: u32) -> Result<(), String> {
        let stream = self
            .config
            .host
            .dial(port)
            .await
            .map_err(|e| format!("cannot open the image stream on host port {port}: {e}"))?;
        let up = upload::multipart(stream);
        let headers = [
            ("Content-Type", up.content_type.clone()),
            ("X-LXD-public", "0".to_string()),
        ];
        let posted = self
            .lxd
            .start_operation_with(Method::POST, "/1.0/images", &headers, up.body)
            .await;
        // A bad stream is the reason, whatever LXD made of the aborted body; when LXD gave
        // up reading, its answer is.
        let fingerprint = match up.done.await {
            Ok(Ok(fp)) => fp,
            Ok(Err(upload::UploadError::Abandoned)) => {
                return Err(match posted {
                    Err(e) => format!("importing the image: {e}"),
                    Ok(_) => upload::UploadError::Abandoned.to_string(),
                });
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the image stream reader ended without a result".into()),
        };
        let imported = match posted {
            Ok(op) => self
                .lxd
                .wait_operation(&op, CREATE_TIMEOUT, |_| {})
                .await
                .map(|r| r.metadata),
            Err(e) => Err(e),
        };
        let (fingerprint, created_image) = match imported {
            Ok(meta) => (
                meta.get("fingerprint")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or(fingerprint),
                true,
            ),
            // LXD refuses an image it already has; the stream's hash names it.
            Err(e) => match self.lxd.get(&format!("/1.0/images/{fingerprint}")).await {
                Ok(_) => (fingerprint, false),
                Err(_) => return Err(format!("importing the image: {e}")),
            },
        };
        let req = self.instance_request(
            name,
            tmp,
            json!({"type": "image", "fingerprint": fingerprint}),
        )?;
        let made = self
            .lxd
            .run_operation(Method::POST, "/1.0/instances", Some(&req), CREATE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| format!("creating the container from image {fingerprint}: {e}"));
        if created_image {
            let _ = self
                .lxd
                .run_operation(
                    Method::DELETE,
                    &format!("/1.0/images/{fingerprint}"),
                    None,
                    Duration::from_secs(120),
                )
                .await;
        }
        made
    }

    /// Deletes every `crostini-inprogress-*` instance (creates that died with tremplin).
    pub(super) async fn clean_up_inprogress(&self) -> Result<(), CrosError> {
        let list = self
            .lxd
            .get("/1.0/instances")
            .await
            .map_err(|e| lxd_error("listing instances", e))?;
        for path in list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let name = path.rsplit('/').next().unwrap_or(path);
            if name.starts_with(validate::INPROGRESS_PREFIX)
                && !self.is_busy_tmp(name)
                && let Err(e) = self.delete_instance(name).await
            {
                eprintln!("tremplin: cannot delete the stale {name}: {e}");
            }
        }
        Ok(())
    }

    /// Whether a temporary instance belongs to a create running now.
    fn is_busy_tmp(&self, tmp: &str) -> bool {
        self.busy
            .lock()
            .map(|b| {
                b.iter()
                    .any(|(op, n)| *op == "create" && validate::inprogress_name(n) == tmp)
            })
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_image_is_found_by_its_server_and_alias() {
        let images = json!([
            {"fingerprint": "aaa", "update_source": {"alias": "debian", "server": "http://127.0.0.1:8000/", "protocol": "simplestreams"}},
            {"fingerprint": "bbb", "update_source": {"alias": "busybox", "server": "http://127.0.0.1:8000", "protocol": "simplestreams"}},
            {"fingerprint": "ccc"},
        ]);
        assert_eq!(
            cached_fingerprint(&images, "http://127.0.0.1:8000/", "busybox").as_deref(),
            Some("bbb")
        );
        assert_eq!(
            cached_fingerprint(&images, "http://127.0.0.1:8000", "debian").as_deref(),
            Some("aaa")
        );
        assert_eq!(
            cached_fingerprint(&images, "http://127.0.0.1:9000", "busybox"),
            None
        );
        assert_eq!(
            cached_fingerprint(&images, "http://127.0.0.1:8000", "alpine"),
            None
        );
        assert_eq!(
            cached_fingerprint(&json!({"not": "a list"}), "x", "y"),
            None
        );
    }

    #[test]
    fn progress_is_parsed_from_lxd_s_text() {
        assert_eq!(parse_progress("rootfs: 23% (358.09kB/s)"), Some(23));
        assert_eq!(parse_progress("metadata: 100% (1.2MB/s)"), Some(100));
        assert_eq!(parse_progress("rootfs: 0%"), Some(0));
        assert_eq!(parse_progress("Unpack: 250%"), Some(100));
        assert_eq!(parse_progress("no percent"), None);
        assert_eq!(parse_progress("%"), None);
        let meta = json!({"download_progress": "rootfs: 42% (1MB/s)"});
        assert_eq!(operation_progress(&meta), Some(42));
        assert_eq!(operation_progress(&json!({"other": 1})), None);
    }

    #[test]
    fn server_urls_are_checked_and_versioned() {
        assert_eq!(
            server_host_port("https://images.lxd.canonical.com").unwrap(),
            ("images.lxd.canonical.com".into(), 443)
        );
        assert_eq!(
            server_host_port("http://127.0.0.1:8123/images").unwrap(),
            ("127.0.0.1".into(), 8123)
        );
        assert_eq!(
            server_host_port("http://[::1]:81/").unwrap(),
            ("[::1]".into(), 81)
        );
        for bad in [
            "ftp://x",
            "127.0.0.1:80",
            "http://",
            "https://u:p@host/",
            "not a url",
        ] {
            assert!(server_host_port(bad).is_err(), "{bad}");
        }
        let src = ImageSource::from_request(
            "https://storage.example/cros-containers/%d",
            "debian/bookworm",
            "",
            "",
            0,
            "120",
        )
        .unwrap();
        assert_eq!(
            src,
            ImageSource::Server {
                url: "https://storage.example/cros-containers/120".into(),
                alias: "debian/bookworm".into()
            }
        );
        assert_eq!(
            ImageSource::from_request("", "", "/r.tar.xz", "/m.tar.xz", 0, "1"),
            Err(InvalidRequest::PathsWithoutUpload)
        );
        assert_eq!(
            ImageSource::from_request("", "", "/r", "/m", 5000, "1"),
            Ok(ImageSource::Upload { port: 5000 })
        );
        assert_eq!(
            ImageSource::from_request("", "", "", "", 0, "1"),
            Err(InvalidRequest::NoImage)
        );
        assert!(ImageSource::from_request("https://x", "", "", "", 0, "1").is_err());
        let s = server_source("http://127.0.0.1:1/", "busybox");
        assert_eq!(s["protocol"], "simplestreams");
        assert_eq!(s["mode"], "pull");
    }
}
