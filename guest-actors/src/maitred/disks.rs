//! Finding disks by virtio serial and recognising filesystems by their superblock magic.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The block device (`/dev/vdX`) whose virtio serial is `serial`, looked up in `sys_block`
/// (normally `/sys/block`).
pub fn find_by_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let found = std::fs::read_to_string(sys_block.join(&name).join("serial")).ok()?;
        (found.trim() == serial).then(|| PathBuf::from("/dev").join(&name))
    })
}

/// A filesystem recognised on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Btrfs,
    Ext4,
    Erofs,
}

const BTRFS_MAGIC_OFFSET: u64 = 0x10040;
const BTRFS_MAGIC: &[u8] = b"_BHRfS_M";
const EXT_MAGIC_OFFSET: u64 = 0x438;
const EXT_MAGIC: &[u8] = &[0x53, 0xef];
const EROFS_MAGIC_OFFSET: u64 = 1024;
const EROFS_MAGIC: &[u8] = &[0xe2, 0xe1, 0xf5, 0xe0];

fn has_magic(dev: &mut File, offset: u64, magic: &[u8]) -> io::Result<bool> {
    let mut buf = vec![0u8; magic.len()];
    dev.seek(SeekFrom::Start(offset))?;
    match dev.read_exact(&mut buf) {
        Ok(()) => Ok(buf == magic),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Which filesystem `dev` holds, if any we know (an all-zero new disk gives `None`).
pub fn probe(dev: &Path) -> io::Result<Option<Filesystem>> {
    let mut f = File::open(dev)?;
    if has_magic(&mut f, BTRFS_MAGIC_OFFSET, BTRFS_MAGIC)? {
        return Ok(Some(Filesystem::Btrfs));
    }
    if has_magic(&mut f, EXT_MAGIC_OFFSET, EXT_MAGIC)? {
        return Ok(Some(Filesystem::Ext4));
    }
    if has_magic(&mut f, EROFS_MAGIC_OFFSET, EROFS_MAGIC)? {
        return Ok(Some(Filesystem::Erofs));
    }
    Ok(None)
}

impl Filesystem {
    pub fn mount_type(self) -> &'static str {
        match self {
            Filesystem::Btrfs => "btrfs",
            Filesystem::Ext4 => "ext4",
            Filesystem::Erofs => "erofs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_disk_by_serial() {
        let sys = tempfile::tempdir().unwrap();
        for (dev, serial) in [("vda", "crosd-tools\n"), ("vdb", "crosd-rootfs")] {
            std::fs::create_dir(sys.path().join(dev)).unwrap();
            std::fs::write(sys.path().join(dev).join("serial"), serial).unwrap();
        }
        std::fs::create_dir(sys.path().join("loop0")).unwrap();
        assert_eq!(
            find_by_serial(sys.path(), "crosd-rootfs"),
            Some(PathBuf::from("/dev/vdb"))
        );
        assert_eq!(
            find_by_serial(sys.path(), "crosd-tools"),
            Some(PathBuf::from("/dev/vda"))
        );
        assert_eq!(find_by_serial(sys.path(), "crosd-stateful"), None);
    }

    #[test]
    fn probes_real_filesystems() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.img");
        std::fs::write(&zero, vec![0u8; 128 << 10]).unwrap();
        assert_eq!(probe(&zero).unwrap(), None);
        let tiny = dir.path().join("tiny.img");
        std::fs::write(&tiny, b"short").unwrap();
        assert_eq!(probe(&tiny).unwrap(), None);

        let ext4 = dir.path().join("ext4.img");
        std::fs::write(&ext4, vec![0u8; 4 << 20]).unwrap();
        let s = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&ext4)
            .status();
        assert!(
            s.expect("mkfs.ext4 (e2fsprogs; tools/scripts/test.sh installs it)")
                .success()
        );
        assert_eq!(probe(&ext4).unwrap(), Some(Filesystem::Ext4));
        let btrfs = dir.path().join("btrfs.img");
        std::fs::write(&btrfs, vec![0u8; 128 << 20]).unwrap();
        let s = std::process::Command::new("mkfs.btrfs")
            .arg("-q")
            .arg(&btrfs)
            .status();
        assert!(
            s.expect("mkfs.btrfs (btrfs-progs; tools/scripts/test.sh installs it)")
                .success()
        );
        assert_eq!(probe(&btrfs).unwrap(), Some(Filesystem::Btrfs));
    }
}
