//! Putting a component into a components directory atomically: it is made in a hidden sibling
//! directory, verified against its manifest, then renamed into place, so imageloader never sees
//! a half-written component and a failed or interrupted run leaves nothing where it looks.

use std::path::{Path, PathBuf};

use cros_actors::imageloader::manifest::{MANIFEST_FILE, verify_component};

use super::{ImageError, io_err};

/// Makes `components/name/version` with `fill` (which writes the files and manifest.json into
/// the directory it is given), verifies it and renames it into place; replaces an existing
/// version only with `force`.
pub fn publish(
    components: &Path,
    name: &str,
    version: &str,
    force: bool,
    fill: impl FnOnce(&Path) -> Result<(), ImageError>,
) -> Result<PathBuf, ImageError> {
    for (what, value) in [("name", name), ("version", version)] {
        if !cros_messages::addr::valid_name(value) {
            return Err(ImageError::Invalid(format!(
                "bad component {what} {value:?}: use 1-64 characters of [A-Za-z0-9._-]"
            )));
        }
    }
    let parent = components.join(name);
    let dest = parent.join(version);
    if dest.exists() && !force {
        return Err(ImageError::Invalid(format!(
            "{} already exists (use --force to replace it)",
            dest.display()
        )));
    }
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let pid = std::process::id();
    let work = parent.join(format!(".{version}.partial-{pid}"));
    let _ = std::fs::remove_dir_all(&work);
    let result = std::fs::create_dir_all(&work)
        .map_err(io_err(&work))
        .and_then(|()| fill(&work))
        .and_then(|()| {
            verify_component(&work)
                .map(|_| ())
                .map_err(ImageError::from)
        })
        .and_then(|()| {
            if dest.exists() {
                let old = parent.join(format!(".{version}.old-{pid}"));
                std::fs::rename(&dest, &old).map_err(io_err(&dest))?;
                std::fs::rename(&work, &dest).map_err(io_err(&work))?;
                let _ = std::fs::remove_dir_all(&old);
            } else {
                std::fs::rename(&work, &dest).map_err(io_err(&work))?;
            }
            Ok(dest.clone())
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// Installs the built component at `src` (verified first) into `components`, under the name and
/// version its manifest gives.
pub fn install(src: &Path, components: &Path, force: bool) -> Result<PathBuf, ImageError> {
    let manifest = verify_component(src)?;
    publish(
        components,
        &manifest.name,
        &manifest.version,
        force,
        |work| {
            for f in manifest
                .files
                .iter()
                .map(|f| f.name.as_str())
                .chain([MANIFEST_FILE])
            {
                let from = src.join(f);
                std::fs::copy(&from, work.join(f)).map_err(io_err(&from))?;
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cros_actors::imageloader::manifest::Manifest;

    fn built(dir: &Path, version: &str) -> PathBuf {
        let src = dir.join("build").join(version);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("vm_kernel"), format!("kernel {version}")).unwrap();
        Manifest::build(&src, "cros-termina", version, "6.1.0-test", &["vm_kernel"])
            .unwrap()
            .write(&src)
            .unwrap();
        src
    }

    #[test]
    fn installs_verified_components_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let components = dir.path().join("state/components");
        let dest = install(&built(dir.path(), "1.0"), &components, false).unwrap();
        assert_eq!(dest, components.join("cros-termina/1.0"));
        assert!(verify_component(&dest).is_ok());
        // Same version again: refused without --force, replaced with it.
        let err = install(&built(dir.path(), "1.0"), &components, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(install(&built(dir.path(), "1.0"), &components, true).is_ok());
        // A tampered source is refused and leaves no partial directory behind.
        let bad = built(dir.path(), "2.0");
        std::fs::write(bad.join("vm_kernel"), "tampered").unwrap();
        let err = install(&bad, &components, false).unwrap_err();
        assert!(err.to_string().contains("vm_kernel"), "{err}");
        let entries: Vec<_> = std::fs::read_dir(components.join("cros-termina"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(entries, ["1.0"]);
    }
}
