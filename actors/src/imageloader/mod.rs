//! imageloader: finds VM components under `STATE/components/<name>/<version>/`.
//!
//! LoadComponent verifies every file against the component's manifest.json (size and SHA-256)
//! before it hands out paths; a tampered or truncated file is refused with its name.

pub mod manifest;

/// File names inside a termina component directory.
pub const KERNEL_FILE: &str = "vm_kernel";
pub const ROOTFS_FILE: &str = "vm_rootfs.img";
pub const TOOLS_FILE: &str = "vm_tools.img";
pub const INITRD_FILE: &str = "initramfs.img";

use crate::bus::Deliver;
use crate::bus::not_mine;
use crate::config::HostConfig;
use actix::{Actor, Context, Handler, ResponseFuture};
use cros_messages::addr::valid_name;
use cros_messages::imageloader::{
    ComponentInfo, ImageloaderReply, ImageloaderRequest, LoadedComponent,
};
use cros_messages::{Body, CrosError};
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct Imageloader {
    components_dir: PathBuf,
}

impl Imageloader {
    pub fn new(config: HostConfig) -> Self {
        Self {
            components_dir: config.state_dir.join("components"),
        }
    }

    fn handle_request(&self, req: ImageloaderRequest) -> Result<ImageloaderReply, CrosError> {
        match req {
            ImageloaderRequest::ListComponents {} => Ok(ImageloaderReply::Components {
                components: self.scan()?,
            }),
            ImageloaderRequest::LoadComponent { name, version } => {
                self.load(&name, version.as_deref())
            }
        }
    }

    /// Every `<name>/<version>/` directory under the components directory, sorted by name, then
    /// newest version first. A missing components directory means no components.
    fn scan(&self) -> Result<Vec<ComponentInfo>, CrosError> {
        let mut out = Vec::new();
        for name in list_dirs(&self.components_dir)? {
            for version in list_dirs(&self.components_dir.join(&name))? {
                let path = self.components_dir.join(&name).join(&version);
                out.push(ComponentInfo {
                    name: name.clone(),
                    version,
                    path: path.display().to_string(),
                });
            }
        }
        out.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| compare_versions(&b.version, &a.version))
        });
        Ok(out)
    }

    fn load(&self, name: &str, version: Option<&str>) -> Result<ImageloaderReply, CrosError> {
        if !valid_name(name) {
            return Err(CrosError::invalid(format!(
                "bad component name {name:?}: use 1-64 characters of [A-Za-z0-9._-]"
            )));
        }
        if let Some(v) = version
            && !valid_name(v)
        {
            return Err(CrosError::invalid(format!(
                "bad component version {v:?}: use 1-64 characters of [A-Za-z0-9._-]"
            )));
        }
        let found: Vec<ComponentInfo> = self
            .scan()?
            .into_iter()
            .filter(|c| c.name == name)
            .collect();
        if found.is_empty() {
            return Err(CrosError::not_found(format!(
                "no component {name:?} under {}",
                self.components_dir.display()
            )));
        }
        let Some(v) = version else {
            // Newest first (scan's order): the newest version that verifies is used, so one
            // damaged install does not take the VM down while an older good one is there.
            let mut refusals = Vec::new();
            for c in &found {
                match load_verified(name, c) {
                    Ok(loaded) => {
                        for r in &refusals {
                            tracing::warn!("{r}; using {name} {} instead", c.version);
                        }
                        return Ok(loaded);
                    }
                    Err(e) => refusals.push(e.message),
                }
            }
            return Err(CrosError::precondition(refusals.join("; ")));
        };
        let chosen = found.iter().find(|c| c.version == v).ok_or_else(|| {
            CrosError::not_found(format!(
                "component {name:?} has no version {v:?} (found {})",
                found
                    .iter()
                    .map(|c| c.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        load_verified(name, chosen)
    }
}

/// Verifies every file of `chosen` against its manifest and returns the paths of its parts.
fn load_verified(name: &str, chosen: &ComponentInfo) -> Result<ImageloaderReply, CrosError> {
    let dir = Path::new(&chosen.path);
    let m = manifest::verify_component(dir).map_err(|e| {
        CrosError::precondition(format!(
            "refusing component {name} {} at {}: {e}",
            chosen.version, chosen.path
        ))
    })?;
    if m.name != name || m.version != chosen.version {
        return Err(CrosError::precondition(format!(
            "refusing component at {}: its manifest names {} {}",
            chosen.path, m.name, m.version
        )));
    }
    let part = |file: &str| -> Result<String, CrosError> {
        if m.has_file(file) {
            Ok(dir.join(file).display().to_string())
        } else {
            Err(CrosError::precondition(format!(
                "component {name} {} has no {file}",
                chosen.version
            )))
        }
    };
    Ok(ImageloaderReply::Loaded {
        component: LoadedComponent {
            name: name.to_string(),
            version: chosen.version.clone(),
            kernel: part(KERNEL_FILE)?,
            rootfs: part(ROOTFS_FILE)?,
            tools: part(TOOLS_FILE)?,
            initrd: m
                .has_file(INITRD_FILE)
                .then(|| dir.join(INITRD_FILE).display().to_string()),
        },
    })
}

/// Names of the subdirectories of `dir`, skipping hidden ones; a missing `dir` is empty.
fn list_dirs(dir: &Path) -> Result<Vec<String>, CrosError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CrosError::internal(format!(
                "cannot read {}: {e}",
                dir.display()
            )));
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| CrosError::internal(format!("cannot read {}: {e}", dir.display())))?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let Some(name) = entry.file_name().to_str()
            && is_dir
            && !name.starts_with('.')
        {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Orders dotted versions numerically where both parts are numbers (`9.0` < `10.0`), else as text.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut pa = a.split('.');
    let mut pb = b.split('.');
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

impl Actor for Imageloader {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Imageloader {
    type Result = ResponseFuture<Body>;

    /// Scanning and hashing (hundreds of MiB for a VM image) run on the blocking pool, so the
    /// thread this actor shares with the control socket keeps serving.
    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let Body::Imageloader(req) = msg.env.body else {
            let body = not_mine("imageloader", &msg.env.body);
            return Box::pin(async move { body });
        };
        let me = self.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || me.handle_request(req)).await {
                Ok(Ok(reply)) => Body::ImageloaderReply(reply),
                Ok(Err(e)) => Body::Error(e),
                Err(e) => Body::Error(CrosError::internal(format!(
                    "imageloader worker failed: {e}"
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_messages::ErrorKind;

    fn loader(state: &Path) -> Imageloader {
        Imageloader::new(HostConfig::new(state, state.join("run")))
    }

    #[test]
    fn lists_component_directories_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["9.0", "10.0"] {
            std::fs::create_dir_all(dir.path().join("components/cros-termina").join(v)).unwrap();
        }
        // A stray file is not a version.
        std::fs::write(dir.path().join("components/cros-termina/notes"), "x").unwrap();
        let reply = loader(dir.path())
            .handle_request(ImageloaderRequest::ListComponents {})
            .unwrap();
        let ImageloaderReply::Components { components } = reply else {
            panic!("unexpected {reply:?}")
        };
        let versions: Vec<_> = components.iter().map(|c| c.version.as_str()).collect();
        assert_eq!(versions, ["10.0", "9.0"]);
        assert!(components[0].path.ends_with("components/cros-termina/10.0"));
    }

    #[test]
    fn empty_state_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let reply = loader(dir.path())
            .handle_request(ImageloaderRequest::ListComponents {})
            .unwrap();
        assert_eq!(reply, ImageloaderReply::Components { components: vec![] });
    }

    #[test]
    fn load_of_absent_component_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = loader(dir.path())
            .handle_request(ImageloaderRequest::LoadComponent {
                name: "cros-termina".into(),
                version: None,
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("cros-termina"), "{err}");
    }

    #[test]
    fn load_of_absent_version_names_the_versions_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("components/cros-termina/1.0")).unwrap();
        let err = loader(dir.path())
            .handle_request(ImageloaderRequest::LoadComponent {
                name: "cros-termina".into(),
                version: Some("2.0".into()),
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(
            err.message.contains("2.0") && err.message.contains("1.0"),
            "{err}"
        );
    }

    #[test]
    fn load_verifies_and_names_a_tampered_file() {
        let dir = tempfile::tempdir().unwrap();
        let comp = dir.path().join("components/cros-termina/1.0");
        std::fs::create_dir_all(&comp).unwrap();
        for f in [KERNEL_FILE, ROOTFS_FILE, TOOLS_FILE, INITRD_FILE] {
            std::fs::write(comp.join(f), f.as_bytes()).unwrap();
        }
        manifest::Manifest::build(
            &comp,
            "cros-termina",
            "1.0",
            "6.1.0-test",
            &[KERNEL_FILE, ROOTFS_FILE, TOOLS_FILE, INITRD_FILE],
        )
        .unwrap()
        .write(&comp)
        .unwrap();
        let l = loader(dir.path());
        let req = || ImageloaderRequest::LoadComponent {
            name: "cros-termina".into(),
            version: None,
        };
        let Ok(ImageloaderReply::Loaded { component }) = l.handle_request(req()) else {
            panic!("a verified component loads")
        };
        assert_eq!(
            component.kernel,
            comp.join(KERNEL_FILE).display().to_string()
        );
        assert_eq!(
            component.initrd,
            Some(comp.join(INITRD_FILE).display().to_string())
        );
        std::fs::write(comp.join(KERNEL_FILE), b"vm_kernEL").unwrap();
        let err = l.handle_request(req()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::FailedPrecondition);
        assert!(err.message.contains(KERNEL_FILE), "{err}");
    }

    /// Builds a verified termina component `version` under `state`.
    fn component(state: &Path, version: &str) -> std::path::PathBuf {
        let comp = state.join("components/cros-termina").join(version);
        std::fs::create_dir_all(&comp).unwrap();
        for f in [KERNEL_FILE, ROOTFS_FILE, TOOLS_FILE, INITRD_FILE] {
            std::fs::write(comp.join(f), format!("{f} {version}")).unwrap();
        }
        let files = [KERNEL_FILE, ROOTFS_FILE, TOOLS_FILE, INITRD_FILE];
        manifest::Manifest::build(&comp, "cros-termina", version, "6.1.0-test", &files)
            .unwrap()
            .write(&comp)
            .unwrap();
        comp
    }

    #[test]
    fn the_newest_verified_version_is_used_by_default() {
        let dir = tempfile::tempdir().unwrap();
        component(dir.path(), "9.0");
        let newest = component(dir.path(), "10.0");
        let l = loader(dir.path());
        let load = |version: Option<&str>| {
            l.handle_request(ImageloaderRequest::LoadComponent {
                name: "cros-termina".into(),
                version: version.map(str::to_string),
            })
        };
        let Ok(ImageloaderReply::Loaded { component }) = load(None) else {
            panic!()
        };
        assert_eq!(component.version, "10.0");
        // The newest is damaged: the older verified one is used; asking for it by name fails.
        std::fs::write(newest.join(ROOTFS_FILE), "tampered").unwrap();
        let Ok(ImageloaderReply::Loaded { component }) = load(None) else {
            panic!()
        };
        assert_eq!(component.version, "9.0");
        let err = load(Some("10.0")).unwrap_err();
        assert!(err.message.contains(ROOTFS_FILE), "{err}");
        let Ok(ImageloaderReply::Loaded { component }) = load(Some("9.0")) else {
            panic!()
        };
        assert_eq!(component.version, "9.0");
    }

    #[test]
    fn load_refuses_unverifiable_component_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("components/cros-termina/1.0")).unwrap();
        let l = loader(dir.path());
        let err = l
            .handle_request(ImageloaderRequest::LoadComponent {
                name: "cros-termina".into(),
                version: None,
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::FailedPrecondition);
        assert!(err.message.contains("manifest.json"), "{err}");
        let err = l
            .handle_request(ImageloaderRequest::LoadComponent {
                name: "../etc".into(),
                version: None,
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
    }
}
