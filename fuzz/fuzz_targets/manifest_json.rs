//! Fuzzes imageloader's manifest.json: any bytes as the manifest of a component directory,
//! loaded (parse, format and file-name checks) and, when it loads, verified against the files
//! there. A manifest may only ever name files inside its own directory.

#![no_main]

use std::sync::LazyLock;

use cros_actors::imageloader::manifest::{MANIFEST_FILE, Manifest};
use libfuzzer_sys::fuzz_target;

static COMPONENT: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("vm_kernel"), b"kernel").expect("component file");
    std::fs::write(dir.path().join("vm_rootfs.img"), b"").expect("component file");
    dir
});

fuzz_target!(|data: &[u8]| {
    let dir = COMPONENT.path();
    std::fs::write(dir.join(MANIFEST_FILE), data).expect("write manifest");
    if let Ok(manifest) = Manifest::load(dir) {
        for f in &manifest.files {
            assert!(
                !f.name.contains('/') && f.name != ".." && f.name != ".",
                "manifest names {:?} outside its directory",
                f.name
            );
        }
        let _ = manifest.verify(dir);
    }
});
