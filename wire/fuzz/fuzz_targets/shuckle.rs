//! Shuckle datagrams (requests and responses, with and without the cluster
//! key; privileged-looking inputs are also tried re-MAC'd).
#![no_main]

// The checks shared with the bounded fuzzing of `cargo test -p wire`.
#[allow(dead_code, reason = "each target uses a part of the shared checks")]
#[path = "../../tests/common/exercise.rs"]
mod exercise;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = exercise::cluster_key();
    exercise::shuckle_family(data, &key);
    if let Some(signed) = exercise::re_signed(data, &key) {
        exercise::shuckle_family(&signed, &key);
    }
});
