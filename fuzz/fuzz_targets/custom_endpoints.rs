//! Fuzz target: see `netscope_fuzz::custom_endpoints`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netscope_fuzz::custom_endpoints(data));
