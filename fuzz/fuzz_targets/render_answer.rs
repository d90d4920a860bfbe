//! Arbitrary gRPC answers from an agent: converting, diagnosing and rendering them (table and
//! JSON, query and status) never panics, and tables never carry control characters.
#![no_main]
use prost::Message as _;
use triage_agent::cli::{client, diagnose, render};
use triage_agent_proto::v1 as pb;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = pb::QueryResponse::decode(data)
        && let Ok(answer) = client::answer_from_pb("http://fuzz:1", msg)
    {
        let findings = diagnose::diagnose(&answer.evidence);
        let evidence = answer.evidence.clone();
        let answers = [answer];
        let table = render::query_table("p", "ns", None, &evidence, &findings, &answers, &[]);
        assert!(!table.chars().any(|c| c != '\n' && c.is_control()));
        let _ = render::query_json(&evidence, &findings, &answers, &[]).to_string();
        for e in &evidence {
            let _ = render::watch_line(e);
        }
    }
    if let Ok(status) = pb::StatusResponse::decode(data) {
        let statuses = [("fuzz:1".to_owned(), status)];
        let table = render::status_table(&statuses);
        assert!(!table.chars().any(|c| c != '\n' && c.is_control()));
        let _ = render::status_json(&statuses).to_string();
    }
});
