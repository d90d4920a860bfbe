//! `-o json` and `-o yaml`: flat objects (kind-specific fields beside the common ones), times
//! RFC 3339 UTC, endpoints "ip:port", enums their stable snake_case names. JSON needs no
//! escaping of hostile names: its encoder escapes control characters.

use serde_json::{Map, Value, json};

use super::{Note, Unanswered, dns_lookups, pod_losses};
use crate::{
    cli::{client::AgentAnswer, peers::NotShown},
    codec::PeerLoss,
    diagnose::Finding,
    evidence::Evidence,
    text::rfc3339,
};

/// One evidence record as a flat JSON object.
pub fn evidence_json(e: &Evidence) -> Value {
    let s = &e.subject;
    let mut m = Map::new();
    m.insert("kind".into(), e.kind().as_str().into());
    m.insert("node".into(), (*e.node).into());
    m.insert("pod".into(), e.pod().map(|p| p.json()).into());
    m.insert("container".into(), s.container.as_deref().into());
    m.insert(
        "process".into(),
        s.process
            .as_ref()
            .map(|p| json!({"pid": p.pid, "comm": &*p.comm}))
            .into(),
    );
    m.insert("first_seen".into(), rfc3339(e.first_seen).into());
    m.insert("last_seen".into(), rfc3339(e.last_seen).into());
    m.insert("count".into(), e.count.into());
    m.insert("attribution".into(), s.attribution.as_str().into());
    e.detail.json_fields(&mut m);
    if let Some(f) = &e.folded {
        f.json_fields(&mut m);
    }
    Value::Object(m)
}

pub(super) fn loss_json(losses: &[PeerLoss]) -> Value {
    Value::Object(
        losses
            .iter()
            .map(|l| (l.name.clone(), l.count.into()))
            .collect(),
    )
}

/// The `query -o json` document: `{"evidence": [...], "diagnosis": [...], "agents": [...]}`.
/// Drop and timeout items that were evaluated carry `explanation`.
pub fn query_json(
    evidence: &[Evidence],
    findings: &[Finding],
    answers: &[AgentAnswer],
    notes: &[Note],
) -> Value {
    let items: Vec<Value> = evidence
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v = evidence_json(e);
            if let (Some(note), Some(m)) = (notes.iter().find(|n| n.index == i), v.as_object_mut())
            {
                let mut x = json!({
                    "verdict": note.verdict,
                    "policies": note.policies,
                    "text": note.text,
                });
                if let (Some(fix), Some(xm)) = (&note.fix, x.as_object_mut()) {
                    xm.insert("fix".into(), fix.as_str().into());
                }
                m.insert("explanation".into(), x);
            }
            v
        })
        .collect();
    json!({
        "evidence": items,
        "diagnosis": findings,
        "agents": answers.iter().map(|a| json!({
            "agent": a.agent,
            "node": a.node,
            "truncated": a.truncated,
            "evicted_in_window": a.evicted_in_window,
            "agent_started": a.agent_started.map(rfc3339),
            "losses_since": a.losses_since.or(a.agent_started).map(rfc3339),
            "loss": loss_json(&a.loss),
        })).collect::<Vec<_>>(),
        "dns_lookups": dns_lookups(answers).iter().map(|(pod, l)| {
            let mut v = l.json();
            if let Some(m) = v.as_object_mut() {
                m.insert("pod".into(), pod.json());
            }
            v
        }).collect::<Vec<_>>(),
        "pod_losses": pod_losses(answers).iter().map(|(pod, l, last)| {
            let mut v = l.json();
            if let Some(m) = v.as_object_mut() {
                m.insert("pod".into(), pod.json());
                m.insert("last_lost".into(), rfc3339(*last).into());
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// `unanswered` in the JSON answer.
pub fn unanswered_json(unanswered: &[Unanswered]) -> Value {
    unanswered
        .iter()
        .map(|u| json!({"agent": u.agent, "node": u.node, "error": u.error}))
        .collect()
}

/// `other_side_not_shown` in the JSON answer.
pub fn not_shown_json(not_shown: &[NotShown]) -> Value {
    not_shown
        .iter()
        .map(|n| {
            json!({
                "ip": n.ip.to_string(),
                "holder": {"namespace": n.holder.0, "name": n.holder.1},
                "holder_started": n.started.map(rfc3339),
                "records": n.records,
            })
        })
        .collect()
}
