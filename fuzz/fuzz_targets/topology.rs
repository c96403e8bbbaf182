//! Fuzz target: see `netscope_fuzz::topology`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netscope_fuzz::topology(data));
