//! Streaming NAR validation must never panic, whatever the bytes and
//! however they are split.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Each target uses one of the shared checks.
#[allow(dead_code)]
#[path = "../src/checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::nar_validate(data));
