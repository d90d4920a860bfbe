//! Arbitrary rows of the evidence store's file read back as at startup: never a panic, every
//! row read or counted as unreadable and removed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::store_readback(data));
