//! The block service registration datagram (and `is_registration`).
#![no_main]

// The checks shared with the bounded fuzzing of `cargo test -p wire`.
#[allow(dead_code, reason = "each target uses a part of the shared checks")]
#[path = "../../tests/common/exercise.rs"]
mod exercise;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    exercise::registration(data);
});
