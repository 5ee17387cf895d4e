//! Staging trees for the read-only images and turning them into ext4 images without loop
//! mounts (`mkfs.ext4 -d`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ImageError, elf, io_err, run_tool};

/// A directory being filled with an image's contents.
pub struct Staging {
    pub root: PathBuf,
}

impl Staging {
    pub fn new(root: PathBuf) -> Result<Self, ImageError> {
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Staging { root })
    }

    fn target(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Where a new entry `rel` goes: its parent directories made, an existing file or link
    /// there removed (so a write replaces it and never goes through a link into the tree's
    /// other files or out of the tree), and the parent checked to lie in the tree — a
    /// Debian tree holds absolute links (/var/run → /run) that would lead to the build host.
    fn replace_target(&self, rel: &str) -> Result<PathBuf, ImageError> {
        let p = self.target(rel);
        let parent = p
            .parent()
            .ok_or_else(|| ImageError::Invalid(format!("{rel:?} names no file")))?;
        let real_root = std::fs::canonicalize(&self.root).map_err(io_err(&self.root))?;
        let inside = |dir: &Path| -> Result<(), ImageError> {
            let real = std::fs::canonicalize(dir).map_err(io_err(dir))?;
            if real.starts_with(&real_root) {
                return Ok(());
            }
            Err(ImageError::Invalid(format!(
                "{rel} would be written outside the image tree {} (through a link to {})",
                self.root.display(),
                real.display()
            )))
        };
        // The deepest directory that exists first, so nothing is made outside either.
        let existing = parent
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(&self.root);
        inside(existing)?;
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        inside(parent)?;
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(&p).map_err(io_err(&p))?,
            _ => {}
        }
        Ok(p)
    }

    pub fn dir(&self, rel: &str) -> Result<(), ImageError> {
        let p = self.target(rel);
        std::fs::create_dir_all(&p).map_err(io_err(&p))
    }

    pub fn file(&self, rel: &str, contents: &[u8], mode: u32) -> Result<(), ImageError> {
        let p = self.replace_target(rel)?;
        std::fs::write(&p, contents).map_err(io_err(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io_err(&p))
    }

    /// Copies `src` to `rel`, following symlinks, keeping it executable when it was.
    pub fn copy(&self, src: &Path, rel: &str) -> Result<(), ImageError> {
        let p = self.replace_target(rel)?;
        std::fs::copy(src, &p).map_err(io_err(src))?;
        Ok(())
    }

    /// Drops debug information from an executable in the tree (debug builds of the guest
    /// programs are mostly DWARF; the VM has no use for it).
    pub fn strip(&self, rel: &str) -> Result<(), ImageError> {
        run_tool(
            Command::new("strip")
                .arg("--strip-debug")
                .arg(self.target(rel)),
        )
        .map(|_| ())
    }

    pub fn symlink(&self, rel: &str, points_to: &str) -> Result<(), ImageError> {
        let p = self.replace_target(rel)?;
        std::os::unix::fs::symlink(points_to, &p).map_err(io_err(&p))
    }

    /// Removes everything inside directory `rel` (not following links), keeping the directory.
    pub fn empty_dir(&self, rel: &str) -> Result<(), ImageError> {
        let p = self.target(rel);
        for e in std::fs::read_dir(&p).map_err(io_err(&p))? {
            let e = e.map_err(io_err(&p))?;
            let path = e.path();
            if e.file_type().map_err(io_err(&path))?.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// Installs a static busybox as `dir/busybox` with a symlink beside it for each of its
    /// applets (`dir/sh` → busybox, …), as the busybox container image has them.
    pub fn busybox(&self, busybox: &Path, dir: &str) -> Result<(), ImageError> {
        if elf::is_static(busybox) != Ok(true) {
            return Err(ImageError::Invalid(format!(
                "{} is not a static busybox (apt-get install busybox-static)",
                busybox.display()
            )));
        }
        self.copy(busybox, &format!("{dir}/busybox"))?;
        let applets = run_tool(Command::new(busybox).arg("--list"))?;
        for applet in applets
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        {
            self.symlink(&format!("{dir}/{applet}"), "busybox")?;
        }
        Ok(())
    }

    /// Bytes the tree takes in 4 KiB blocks: each regular file rounded up, a block per
    /// directory (a Debian userland is thousands of small files).
    pub fn size(&self) -> Result<u64, ImageError> {
        const BLOCK: u64 = 4096;
        fn walk(p: &Path) -> std::io::Result<u64> {
            let mut total = BLOCK;
            for e in std::fs::read_dir(p)? {
                let e = e?;
                let ft = e.file_type()?;
                if ft.is_dir() {
                    total += walk(&e.path())?;
                } else if ft.is_file() {
                    total += e.metadata()?.len().div_ceil(BLOCK) * BLOCK;
                }
            }
            Ok(total)
        }
        walk(&self.root).map_err(io_err(&self.root))
    }

    /// Makes a journal-less ext4 image of the tree at `image` (read-only use: no journal to
    /// replay), sized to the contents (counted in its 4 KiB blocks) with room for metadata.
    pub fn make_ext4(&self, image: &Path, label: &str) -> Result<u64, ImageError> {
        let size = (self.size()? * 11 / 10 + (16 << 20)).div_ceil(1 << 20) << 20;
        let f = std::fs::File::create(image).map_err(io_err(image))?;
        f.set_len(size).map_err(io_err(image))?;
        drop(f);
        run_tool(
            Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-O",
                    "^has_journal",
                    "-m",
                    "0",
                    // mke2fs picks 1 KiB blocks for small images; size() counts 4 KiB ones.
                    "-b",
                    "4096",
                    "-L",
                    label,
                    "-d",
                ])
                .arg(&self.root)
                .arg(image),
        )?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_an_ext4_image_with_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let st = Staging::new(dir.path().join("tree")).unwrap();
        st.file("etc/hello", b"hi there", 0o644).unwrap();
        st.copy(Path::new("/bin/ls"), "bin/ls").unwrap();
        assert!(dir.path().join("tree/bin/ls").exists());
        let img = dir.path().join("fs.img");
        st.make_ext4(&img, "test").unwrap();
        // debugfs reads the image without mounting it.
        let cat = run_tool(
            Command::new("debugfs")
                .args(["-R", "cat /etc/hello"])
                .arg(&img),
        )
        .unwrap();
        assert_eq!(cat, "hi there");
    }

    #[test]
    fn writes_replace_links_and_stay_in_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("resolv.conf"), b"host's").unwrap();
        let st = Staging::new(dir.path().join("tree")).unwrap();
        // A link to a file outside: replaced, the file it pointed at untouched.
        st.symlink(
            "etc/resolv.conf",
            &outside.join("resolv.conf").to_string_lossy(),
        )
        .unwrap();
        st.file("etc/resolv.conf", b"ours", 0o644).unwrap();
        assert_eq!(
            std::fs::read(outside.join("resolv.conf")).unwrap(),
            b"host's"
        );
        assert_eq!(
            std::fs::read(st.root.join("etc/resolv.conf")).unwrap(),
            b"ours"
        );
        // A directory link out of the tree (as Debian's /var/run -> /run): refused.
        st.symlink("var/run", &outside.to_string_lossy()).unwrap();
        let err = st.file("var/run/x", b"", 0o644).unwrap_err();
        assert!(err.to_string().contains("outside the image tree"), "{err}");
        assert!(!outside.join("x").exists());
        st.empty_dir("var").unwrap();
        assert_eq!(std::fs::read_dir(st.root.join("var")).unwrap().count(), 0);
    }
}
