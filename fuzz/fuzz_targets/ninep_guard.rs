//! seneschal's 9P guard (actors/src/seneschal/filter.rs) and the `p9` crate's frame decoder:
//! any byte stream a guest sends is checked, refused or dropped without a panic, and the fid
//! table it keeps stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cros_actors::seneschal::filter::fuzz_frames(data);
});
