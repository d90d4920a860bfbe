//! The evidence store driven by arbitrary sequences of occurrences, restores, sweeps and
//! queries: it never panics and its bounds always hold (total capacity, each pod's quota, each
//! namespace's quota), with every removal counted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::store_events(data));
