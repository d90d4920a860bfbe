//! Kernel BTF blobs: parsing and lookups never panic or hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::btf(data));
