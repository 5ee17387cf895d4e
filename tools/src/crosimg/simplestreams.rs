//! A simplestreams image tree as LXD's simplestreams client reads it (REFERENCE.md, "LXD images
//! and simplestreams"; LXD's shared/simplestreams/{index,products}.go):
//!
//! ```text
//! DIR/streams/v1/index.json    {format: index:1.0, index: {images: {datatype: image-downloads,
//!                               path: streams/v1/images.json, products: [...]}}}
//! DIR/streams/v1/images.json   {content_id: images, format: products:1.0, products: {...}}
//! DIR/images/<os>/<release>/<arch>/<variant>/<serial>/{lxd.tar.xz, rootfs.squashfs | root.tar.xz}
//! ```
//!
//! images.json is the catalogue: adding an image reads it, puts the new version in, drops
//! versions whose files are gone from the tree (and old versions past the number kept), and
//! writes images.json and then index.json from it, each through a temporary file and a rename,
//! so a reader never sees half a file and the other products stay.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ImageError, io_err};

pub const INDEX_PATH: &str = "streams/v1/index.json";
pub const IMAGES_PATH: &str = "streams/v1/images.json";
/// LXD's name for the metadata tarball's item type (lxdCompatItems in products.go).
pub const FTYPE_METADATA: &str = "lxd.tar.xz";
/// The simplestreams architecture name of x86_64 (LXD's osarch accepts it).
pub const ARCH: &str = "amd64";

/// index.json (LXD's `Stream`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub index: BTreeMap<String, IndexEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// One entry of index.json (LXD's `StreamIndex`). LXD skips an entry whose `products` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub datatype: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    pub products: Vec<String>,
}

/// images.json (LXD's `Products`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Products {
    pub content_id: String,
    pub datatype: String,
    pub format: String,
    pub products: BTreeMap<String, Product>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

impl Default for Products {
    fn default() -> Self {
        Products {
            content_id: "images".into(),
            datatype: "image-downloads".into(),
            format: "products:1.0".into(),
            products: BTreeMap::new(),
            updated: None,
        }
    }
}

/// One product: an os/release/arch/variant with its versions. `aliases` is comma-separated;
/// LXD offers each alias X as X (on a host of `arch`) and as X/<arch>.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub aliases: String,
    pub arch: String,
    pub os: String,
    pub release: String,
    pub release_title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    pub versions: BTreeMap<String, Version>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub items: BTreeMap<String, Item>,
}

/// One file of a version. On the metadata item LXD takes the image's fingerprint from
/// `combined_squashfs_sha256` or `combined_rootxz_sha256` (falling back to `combined_sha256`)
/// according to the rootfs item beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub ftype: String,
    pub path: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_rootxz_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_squashfs_sha256: Option<String>,
}

/// How the root filesystem of a split image is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RootfsFormat {
    /// rootfs.squashfs (ftype `squashfs`), as Crostini's and LXD's own images ship.
    Squashfs,
    /// root.tar.xz (ftype `root.tar.xz`).
    #[value(name = "tar.xz")]
    TarXz,
}

impl RootfsFormat {
    pub fn file_name(self) -> &'static str {
        match self {
            RootfsFormat::Squashfs => "rootfs.squashfs",
            RootfsFormat::TarXz => "root.tar.xz",
        }
    }

    pub fn ftype(self) -> &'static str {
        match self {
            RootfsFormat::Squashfs => "squashfs",
            RootfsFormat::TarXz => "root.tar.xz",
        }
    }
}

/// What identifies a product and how it is described.
#[derive(Debug, Clone)]
pub struct ProductInfo {
    pub os: String,
    pub release: String,
    pub release_title: String,
    pub variant: String,
    pub aliases: Vec<String>,
}

impl ProductInfo {
    /// `<os>:<release>:<arch>:<variant>`, the key distrobuilder's and Crostini's trees use.
    pub fn id(&self) -> String {
        format!("{}:{}:{ARCH}:{}", self.os, self.release, self.variant)
    }

    /// The version directory, relative to the tree.
    pub fn version_dir(&self, serial: &str) -> String {
        format!(
            "images/{}/{}/{ARCH}/{}/{serial}",
            self.os, self.release, self.variant
        )
    }
}

/// SHA-256 and size of the two files of a split image, and their combined SHA-256 (LXD's
/// fingerprint of the image: sha256 of the metadata tarball followed by the rootfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitHashes {
    pub metadata_sha256: String,
    pub metadata_size: u64,
    pub rootfs_sha256: String,
    pub rootfs_size: u64,
    pub combined_sha256: String,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds a file to `own` and `combined` in one read; returns its length.
fn hash_into(path: &Path, own: &mut Sha256, combined: &mut Sha256) -> Result<u64, ImageError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(len);
        }
        own.update(&buf[..n]);
        combined.update(&buf[..n]);
        len += n as u64;
    }
}

impl SplitHashes {
    /// Reads each file once.
    pub fn of(metadata: &Path, rootfs: &Path) -> Result<Self, ImageError> {
        let mut combined = Sha256::new();
        let mut meta = Sha256::new();
        let metadata_size = hash_into(metadata, &mut meta, &mut combined)?;
        let mut root = Sha256::new();
        let rootfs_size = hash_into(rootfs, &mut root, &mut combined)?;
        Ok(SplitHashes {
            metadata_sha256: hex(&meta.finalize()),
            metadata_size,
            rootfs_sha256: hex(&root.finalize()),
            rootfs_size,
            combined_sha256: hex(&combined.finalize()),
        })
    }
}

/// The version entry for a split image stored under `dir` (relative to the tree).
pub fn split_version(dir: &str, format: RootfsFormat, hashes: &SplitHashes) -> Version {
    let combined = Some(hashes.combined_sha256.clone());
    let (squashfs, rootxz) = match format {
        RootfsFormat::Squashfs => (combined, None),
        RootfsFormat::TarXz => (None, combined),
    };
    let metadata = Item {
        ftype: FTYPE_METADATA.into(),
        path: format!("{dir}/{FTYPE_METADATA}"),
        sha256: hashes.metadata_sha256.clone(),
        size: hashes.metadata_size,
        // LXD before combined_rootxz_sha256 existed read combined_sha256 for root.tar.xz.
        combined_sha256: rootxz.clone(),
        combined_rootxz_sha256: rootxz,
        combined_squashfs_sha256: squashfs,
    };
    let rootfs = Item {
        ftype: format.ftype().into(),
        path: format!("{dir}/{}", format.file_name()),
        sha256: hashes.rootfs_sha256.clone(),
        size: hashes.rootfs_size,
        combined_sha256: None,
        combined_rootxz_sha256: None,
        combined_squashfs_sha256: None,
    };
    Version {
        items: BTreeMap::from([
            (FTYPE_METADATA.to_string(), metadata),
            (format.file_name().to_string(), rootfs),
        ]),
    }
}

/// Reads DIR/streams/v1/images.json; a tree without one has no products yet. A file that is
/// there but unreadable is an error, never silently replaced (that would drop its products).
pub fn read_products(tree: &Path) -> Result<Products, ImageError> {
    let path = tree.join(IMAGES_PATH);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::Invalid(format!(
                "{}: not a simplestreams products file ({e}); move it away to start a new tree",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Products::default()),
        Err(e) => Err(ImageError::Io { path, source: e }),
    }
}

/// index.json for a catalogue: one `images` entry listing every product.
pub fn index_for(products: &Products) -> Index {
    Index {
        format: "index:1.0".into(),
        index: BTreeMap::from([(
            "images".to_string(),
            IndexEntry {
                datatype: "image-downloads".into(),
                path: IMAGES_PATH.into(),
                format: Some("products:1.0".into()),
                products: products.products.keys().cloned().collect(),
            },
        )]),
        updated: products.updated.clone(),
    }
}

/// Writes `value` as JSON at `tree/rel` through a temporary file and a rename.
fn write_json_atomically(tree: &Path, rel: &str, value: &impl Serialize) -> Result<(), ImageError> {
    let path = tree.join(rel);
    let parent = path.parent().unwrap_or(tree);
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| ImageError::Invalid(format!("encoding {rel}: {e}")))?;
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImageError::Io { path, source: e }
    })
}

/// True when every item file of `version` is in the tree with its recorded size.
fn files_present(tree: &Path, version: &Version) -> bool {
    version.items.values().all(|item| {
        std::fs::metadata(tree.join(&item.path)).is_ok_and(|m| m.is_file() && m.len() == item.size)
    })
}

/// The version directory an item lives in (its path less the file name).
fn version_dir_of(version: &Version) -> Option<&str> {
    version
        .items
        .values()
        .next()
        .and_then(|i| i.path.rsplit_once('/'))
        .map(|(dir, _)| dir)
}

/// Puts `version` (whose files are already in place under the tree) into the catalogue as
/// `serial` of `info`'s product, keeps the newest `keep` versions of that product (removing the
/// directories of older ones), drops versions of any product whose files are gone, and rewrites
/// images.json and index.json. Returns the catalogue written.
pub fn publish_version(
    tree: &Path,
    info: &ProductInfo,
    serial: &str,
    version: Version,
    keep: usize,
    updated: &str,
) -> Result<Products, ImageError> {
    let mut products = read_products(tree)?;
    let product = products
        .products
        .entry(info.id())
        .or_insert_with(|| Product {
            aliases: String::new(),
            arch: ARCH.into(),
            os: info.os.clone(),
            release: info.release.clone(),
            release_title: info.release_title.clone(),
            variant: info.variant.clone(),
            versions: BTreeMap::new(),
        });
    product.aliases = info.aliases.join(",");
    product.release_title = info.release_title.clone();
    product.versions.insert(serial.to_string(), version);
    // Serials sort by time (YYYYMMDD_HHMM): the first ones are the oldest.
    let surplus = product.versions.len().saturating_sub(keep.max(1));
    let old: Vec<String> = product.versions.keys().take(surplus).cloned().collect();
    let mut remove_dirs = Vec::new();
    for s in old {
        if let Some(v) = product.versions.remove(&s)
            && let Some(dir) = version_dir_of(&v)
        {
            remove_dirs.push(tree.join(dir));
        }
    }
    for p in products.products.values_mut() {
        p.versions.retain(|_, v| files_present(tree, v));
    }
    products.products.retain(|_, p| !p.versions.is_empty());
    products.updated = Some(updated.to_string());
    write_json_atomically(tree, IMAGES_PATH, &products)?;
    write_json_atomically(tree, INDEX_PATH, &index_for(&products))?;
    // Only once the catalogue no longer names them.
    for d in remove_dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(products)
}

/// The `path`s a catalogue names, relative to the tree.
pub fn item_paths(products: &Products) -> Vec<PathBuf> {
    products
        .products
        .values()
        .flat_map(|p| p.versions.values())
        .flat_map(|v| v.items.values())
        .map(|i| PathBuf::from(&i.path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(os: &str) -> ProductInfo {
        ProductInfo {
            os: os.into(),
            release: "r1".into(),
            release_title: "r1".into(),
            variant: "default".into(),
            aliases: vec![format!("{os}/r1"), format!("{os}/r1/default")],
        }
    }

    fn put_version(tree: &Path, info: &ProductInfo, serial: &str, rootfs: &[u8]) -> Version {
        let dir = info.version_dir(serial);
        std::fs::create_dir_all(tree.join(&dir)).unwrap();
        let meta = tree.join(&dir).join(FTYPE_METADATA);
        let root = tree.join(&dir).join("rootfs.squashfs");
        std::fs::write(&meta, b"meta").unwrap();
        std::fs::write(&root, rootfs).unwrap();
        split_version(
            &dir,
            RootfsFormat::Squashfs,
            &SplitHashes::of(&meta, &root).unwrap(),
        )
    }

    #[test]
    fn combined_hash_is_sha256_of_metadata_then_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let (m, r) = (dir.path().join("m"), dir.path().join("r"));
        std::fs::write(&m, b"abc").unwrap();
        std::fs::write(&r, b"def").unwrap();
        let h = SplitHashes::of(&m, &r).unwrap();
        assert_eq!(h.combined_sha256, hex(&Sha256::digest(b"abcdef")));
        assert_eq!(h.metadata_sha256, hex(&Sha256::digest(b"abc")));
        assert_eq!((h.metadata_size, h.rootfs_size), (3, 3));
    }

    #[test]
    fn adding_a_product_keeps_the_others_and_old_versions_past_keep_go() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        let (a, b) = (info("a"), info("b"));
        let v = put_version(tree, &a, "20260101_0000", b"a1");
        publish_version(tree, &a, "20260101_0000", v, 1, "t").unwrap();
        let v = put_version(tree, &b, "20260101_0000", b"b1");
        let cat = publish_version(tree, &b, "20260101_0000", v, 1, "t").unwrap();
        assert_eq!(
            cat.products.keys().collect::<Vec<_>>(),
            ["a:r1:amd64:default", "b:r1:amd64:default"]
        );
        let v = put_version(tree, &a, "20260102_0000", b"a2");
        let cat = publish_version(tree, &a, "20260102_0000", v, 1, "t").unwrap();
        let versions: Vec<_> = cat.products["a:r1:amd64:default"].versions.keys().collect();
        assert_eq!(versions, ["20260102_0000"]);
        assert!(!tree.join(a.version_dir("20260101_0000")).exists());
        let index: Index =
            serde_json::from_slice(&std::fs::read(tree.join(INDEX_PATH)).unwrap()).unwrap();
        assert_eq!(
            index.index["images"].products,
            ["a:r1:amd64:default", "b:r1:amd64:default"]
        );
        // A version whose files were removed from the tree leaves the catalogue.
        std::fs::remove_dir_all(tree.join(b.version_dir("20260101_0000"))).unwrap();
        let v = put_version(tree, &a, "20260103_0000", b"a3");
        let cat = publish_version(tree, &a, "20260103_0000", v, 2, "t").unwrap();
        assert_eq!(
            cat.products.keys().collect::<Vec<_>>(),
            ["a:r1:amd64:default"]
        );
        assert_eq!(cat.products["a:r1:amd64:default"].versions.len(), 2);
    }

    #[test]
    fn a_corrupt_catalogue_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("streams/v1")).unwrap();
        std::fs::write(dir.path().join(IMAGES_PATH), b"{not json").unwrap();
        let err = read_products(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("images.json: not a simplestreams products file"),
            "{err}"
        );
    }
}
