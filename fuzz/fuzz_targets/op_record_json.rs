//! Fuzzes the disk-operation records concierge reads back at start (STATE/disk_ops/*.json):
//! any bytes parse to a record or an error, and a record that parses writes back to the same
//! record. Only the parser runs: `recover` would also delete the partial files a RUNNING
//! record names, which the fuzzer must not do to this machine.

#![no_main]

use cros_actors::concierge::parse_op_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = parse_op_record(data) {
        let json = serde_json::to_vec_pretty(&record).expect("a parsed record encodes");
        let again = parse_op_record(&json).expect("an encoded record parses");
        assert_eq!(again, record);
    }
});
