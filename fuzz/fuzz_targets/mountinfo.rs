//! /proc/self/mountinfo lines: parsing never panics and every mount it yields is made of the
//! input's own text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::mountinfo(data));
