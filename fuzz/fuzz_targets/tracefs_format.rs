//! tracefs `format` files: parsing never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::tracefs_format(data));
