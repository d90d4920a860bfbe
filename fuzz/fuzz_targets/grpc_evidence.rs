//! Evidence from a peer over gRPC: protobuf decoding and conversion never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::grpc_evidence(data));
