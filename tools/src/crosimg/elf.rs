//! Just enough ELF to tell a static executable (no PT_INTERP) from a dynamic one.

use std::path::Path;

const PT_INTERP: u32 = 3;

/// Whether the ELF64 little-endian executable at `path` has no program interpreter.
/// Anything that is not such an ELF file is an error naming the path.
pub fn is_static(path: &Path) -> Result<bool, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = || {
        format!(
            "{} is not a 64-bit little-endian ELF executable",
            path.display()
        )
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(0x38).ok_or_else(bad)? as usize;
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).ok_or_else(bad)?;
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic() {
        // /bin/sh is dynamic on Debian; busybox-static is static.
        assert_eq!(is_static(Path::new("/bin/sh")), Ok(false));
        assert_eq!(
            is_static(Path::new("/bin/busybox")),
            Ok(true),
            "needs busybox-static (tools/scripts/test.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(is_static(&f).unwrap_err().contains("not a 64-bit"));
    }
}
