//! Whether a Unix socket path has a listener, checked without connecting to it.
//!
//! A vhost-user backend serves exactly one frontend connection, so probing it with connect()
//! would use up the connection QEMU needs. /proc/net/unix shows listening sockets instead.

use std::path::Path;

/// `__SO_ACCEPTCON` in /proc/net/unix's Flags column: the socket is listening.
const SO_ACCEPTCON: u32 = 0x0001_0000;

/// True when some socket in /proc/net/unix is bound to `path` and listening.
pub(crate) fn is_listening(path: &Path) -> bool {
    match std::fs::read_to_string("/proc/net/unix") {
        Ok(table) => table_has_listener(&table, path),
        Err(_) => false,
    }
}

fn table_has_listener(table: &str, path: &Path) -> bool {
    let Some(want) = path.to_str() else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        // Num RefCount Protocol Flags Type St Inode Path
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & SO_ACCEPTCON != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parses_listening_and_non_listening_rows() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1234 /run/a.sock\n\
            0000000000000000: 00000002 00000000 00000000 0001 03 1235 /run/b.sock\n";
        assert!(table_has_listener(table, Path::new("/run/a.sock")));
        assert!(!table_has_listener(table, Path::new("/run/b.sock")));
        assert!(!table_has_listener(table, Path::new("/run/c.sock")));
    }

    #[test]
    fn sees_a_real_listener_and_its_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        assert!(!is_listening(&path));
        let listener = UnixListener::bind(&path).unwrap();
        assert!(is_listening(&path));
        drop(listener);
        assert!(!is_listening(&path));
    }
}
