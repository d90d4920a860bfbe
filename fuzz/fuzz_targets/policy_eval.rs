//! The NetworkPolicy evaluator on arbitrary policies, pods and namespaces (as the API server's
//! JSON would bring them) and arbitrary flows: it never panics, and a verdict of `denied` always
//! names a policy.
#![no_main]
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use triage_agent::policy::{Flow, Proto, Snapshot, Verdict, evaluate};

#[derive(serde::Deserialize)]
struct Input {
    #[serde(default)]
    policies: Vec<NetworkPolicy>,
    #[serde(default)]
    namespaces: Vec<Namespace>,
    #[serde(default)]
    pods: Vec<Pod>,
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (head, json) = data.split_at(6);
    let Ok(input) = serde_json::from_slice::<Input>(json) else {
        return;
    };
    let snapshot = Snapshot {
        policies: input.policies,
        namespaces: input.namespaces,
        pods: input.pods,
    };
    let flow = Flow {
        src: format!("10.0.0.{}", head[0] % 8).parse().unwrap(),
        dst: format!("10.0.0.{}", head[1] % 8).parse().unwrap(),
        port: u16::from_le_bytes([head[2], head[3]]),
        proto: match head[4] % 3 {
            0 => Proto::Tcp,
            1 => Proto::Udp,
            _ => Proto::Sctp,
        },
    };
    let e = evaluate(&snapshot, &flow);
    if e.verdict == Verdict::Denied {
        assert!(!e.policies.is_empty(), "denied without a policy");
    }
    let _ = serde_json::to_string(&e);
});
