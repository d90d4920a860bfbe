//! One DNS tracker driven by sequences of queries and answers (well-formed or arbitrary bytes,
//! from both ends, at arbitrary times) and ticks: it never panics, its in-flight bounds hold,
//! and every query ends exactly once (answered, timed out, or counted as evicted).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::dns_sequence(data));
