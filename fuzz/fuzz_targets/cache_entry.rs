//! Decoding stored cache entries (the `rc1` header with tag versions, and the raw or
//! zlib body) never panics, and whatever decodes re-encodes to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tower_rampart::cache::__decode_for_fuzzing(data);
});
