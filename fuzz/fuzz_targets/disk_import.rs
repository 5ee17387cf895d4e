//! Fuzzes `vmc import`'s reader: any bytes as the export file, through the zstd decoder, the
//! sparse writer and the stream checks (checksum, trailing data, empty disk). Every input ends
//! in Ok or a clear error, never a panic.

#![no_main]

use std::sync::LazyLock;

use cros_actors::concierge::fuzz_import;
use libfuzzer_sys::fuzz_target;

/// On tmpfs where there is one: an import that succeeds fsyncs its disk.
static WORK_DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
});

fuzz_target!(|data: &[u8]| {
    let _ = fuzz_import(data, WORK_DIR.path());
});
