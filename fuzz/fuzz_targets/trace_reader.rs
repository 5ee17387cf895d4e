//! Fuzzes `crosmsg trace`'s reader over any file: the header, then records until the first bad
//! one, each record's envelope decoded. A bad record ends the iteration with its offset; the
//! reader never panics, never yields after an error, and offsets only grow.

#![no_main]

use cros_messages::trace::{TRACE_FORMAT_VERSION, TRACE_MAGIC, TraceReader};
use libfuzzer_sys::fuzz_target;

fn read_all(file: &[u8]) {
    let Ok(reader) = TraceReader::new(file) else {
        return;
    };
    let mut last = 0;
    let mut failed = false;
    for item in reader {
        assert!(!failed, "the reader yielded after an error");
        match item {
            Ok((offset, record)) => {
                assert!(
                    offset >= last && offset < file.len() as u64,
                    "offset {offset}"
                );
                last = offset;
                let _ = record.decode_envelope();
            }
            Err(_) => failed = true,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    read_all(data);
    // Most inputs lack the magic: also read them as the records after a valid header.
    let mut file = TRACE_MAGIC.to_vec();
    file.extend_from_slice(&TRACE_FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&cros_messages::PROTOCOL_VERSION.to_le_bytes());
    file.extend_from_slice(data);
    read_all(&file);
});
