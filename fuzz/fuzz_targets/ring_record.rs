//! Ring buffer records from the kernel: decoding never panics, whatever the bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::ring_record(data));
