//! Fuzz target: see `netscope_fuzz::report`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netscope_fuzz::report(data));
