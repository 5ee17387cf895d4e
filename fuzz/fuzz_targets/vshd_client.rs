//! Fuzzes what a vsh client sends vshd: the setup request (decoded and validated, the account
//! looked up in passwd/group files of the harness) and the stdin, resize and signal frames
//! after it. The command is never started: the session's spawn is the one step left out.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use cros_guest::vshd::session::fuzz_client_input;
use cros_guest::vshd::{AccountFiles, ServerConfig};
use libfuzzer_sys::fuzz_target;

static CONFIG: LazyLock<(tempfile::TempDir, ServerConfig)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let group = dir.path().join("group");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\nchronos:x:1000:1000::/home/chronos:/bin/bash\n",
    )
    .expect("passwd");
    std::fs::write(&group, "root:x:0:\nchronos:x:1000:\nwheel:x:10:chronos\n").expect("group");
    let config = ServerConfig {
        accounts: AccountFiles { passwd, group },
        frame_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    (dir, config)
});

fuzz_target!(|data: &[u8]| {
    let _ = fuzz_client_input(data, &CONFIG.1);
});
