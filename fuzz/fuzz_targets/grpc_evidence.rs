//! Evidence from a peer over gRPC: protobuf decoding and conversion never panic.
#![no_main]
use prost::Message as _;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = triage_agent_proto::v1::QueryResponse::decode(data) {
        for e in msg.evidence {
            let _ = triage_agent::codec::evidence_from_pb(e);
        }
    }
});
