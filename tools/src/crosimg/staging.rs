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

    pub fn dir(&self, rel: &str) -> Result<(), ImageError> {
        let p = self.target(rel);
        std::fs::create_dir_all(&p).map_err(io_err(&p))
    }

    pub fn file(&self, rel: &str, contents: &[u8], mode: u32) -> Result<(), ImageError> {
        let p = self.target(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::write(&p, contents).map_err(io_err(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io_err(&p))
    }

    /// Copies `src` to `rel`, following symlinks, keeping it executable when it was.
    pub fn copy(&self, src: &Path, rel: &str) -> Result<(), ImageError> {
        let p = self.target(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
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
        let p = self.target(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(points_to, &p).map_err(io_err(&p))
    }

    /// Installs a static busybox as `dir/busybox` with a symlink beside it for each of its
    /// applets (`dir/sh` → busybox, …); termina's root and the busybox container image share it.
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

    /// Copies a dynamically linked host program and every shared library `ldd` resolves for it
    /// (plus the dynamic loader) to the same paths in the tree.
    pub fn copy_with_libraries(&self, program: &Path, rel: &str) -> Result<(), ImageError> {
        self.copy(program, rel)?;
        let out = run_tool(Command::new("ldd").arg(program))?;
        for lib in parse_ldd(&out) {
            let real = std::fs::canonicalize(&lib).map_err(io_err(&lib))?;
            self.copy(&real, &lib.to_string_lossy())?;
        }
        Ok(())
    }

    /// Total bytes of regular files under the tree.
    pub fn size(&self) -> Result<u64, ImageError> {
        fn walk(p: &Path) -> std::io::Result<u64> {
            let mut total = 0;
            for e in std::fs::read_dir(p)? {
                let e = e?;
                let ft = e.file_type()?;
                if ft.is_dir() {
                    total += walk(&e.path())?;
                } else if ft.is_file() {
                    total += e.metadata()?.len();
                }
            }
            Ok(total)
        }
        walk(&self.root).map_err(io_err(&self.root))
    }

    /// Makes a journal-less ext4 image of the tree at `image` (read-only use: no journal to
    /// replay), sized to the contents with room for metadata.
    pub fn make_ext4(&self, image: &Path, label: &str) -> Result<u64, ImageError> {
        let size = (self.size()? * 5 / 4 + (16 << 20)).div_ceil(1 << 20) << 20;
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

/// Library paths from `ldd` output: `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file and is skipped.
pub fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\tnotfound.so => not found\n";
        assert_eq!(
            parse_ldd(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn makes_an_ext4_image_with_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let st = Staging::new(dir.path().join("tree")).unwrap();
        st.file("etc/hello", b"hi there", 0o644).unwrap();
        st.copy_with_libraries(Path::new("/bin/ls"), "bin/ls")
            .unwrap();
        assert!(dir.path().join("tree/bin/ls").exists());
        assert!(
            parse_ldd(&run_tool(Command::new("ldd").arg("/bin/ls")).unwrap())
                .iter()
                .all(|l| st.root.join(l.strip_prefix("/").unwrap()).exists())
        );
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
}
