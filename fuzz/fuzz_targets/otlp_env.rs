//! The OTLP exporter's settings from arbitrary environment values: parsing never panics and
//! no error shows a header value or the endpoint's password.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::otlp_env(data));
