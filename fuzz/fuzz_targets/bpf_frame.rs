//! Fuzz target: see `netscope_fuzz::frame::bpf_frame` (needs root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netscope_fuzz::frame::bpf_frame(data));
