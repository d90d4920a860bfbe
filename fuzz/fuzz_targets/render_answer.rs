//! Arbitrary gRPC answers from an agent: converting, diagnosing and rendering them (table and
//! JSON, query and status) never panics, and tables never carry control characters.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::render_answer(data));
