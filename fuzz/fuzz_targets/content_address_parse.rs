//! Content-address parsing must never panic, and what parses must survive
//! print → parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Each target uses one of the shared checks.
#[allow(dead_code)]
#[path = "../src/checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::content_address_parse(data));
