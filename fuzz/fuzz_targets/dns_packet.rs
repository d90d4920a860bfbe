//! DNS ring records and payloads: decoding, parsing and matching never panic, whatever the
//! bytes (the kernel copies them from any socket on a DNS port).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::dns_packet(data));
