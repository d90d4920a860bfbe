//! Rendering for people (tables) and machines (JSON). The JSON mirrors the proto field names;
//! times are RFC 3339 UTC, endpoints "ip:port", enums their stable snake_case names.

use std::{fmt::Write as _, time::SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use triage_agent_proto::v1 as pb;

use crate::{
    cli::{client::AgentAnswer, diagnose::Finding},
    evidence::{Evidence, PodRef},
};

pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn pod_json(p: &PodRef) -> Value {
    json!({"namespace": p.namespace, "name": p.name, "uid": p.uid})
}

pub fn evidence_json(e: &Evidence) -> Value {
    json!({
        "kind": e.kind.as_str(),
        "node": e.node,
        "pod": e.pod.as_ref().map(pod_json),
        "container": e.container,
        "process": e.process.as_ref().map(|p| json!({"pid": p.pid, "comm": p.comm})),
        "first_seen": rfc3339(e.first_seen),
        "last_seen": rfc3339(e.last_seen),
        "count": e.count,
        "attribution": e.attribution.as_str(),
        "direction": e.direction.as_str(),
        "src": e.src.to_string(),
        "dst": e.dst.to_string(),
        "protocol": e.protocol.as_str(),
        "reason": e.reason,
        "peer": e.peer.as_ref().map(pod_json),
    })
}

fn loss_json(l: &pb::LossCounters) -> Value {
    json!({
        "ring_buffer_full": l.ring_buffer_full,
        "connect_table_full": l.connect_table_full,
        "decode_errors": l.decode_errors,
        "pipeline_full": l.pipeline_full,
        "store_evicted": l.store_evicted,
        "attribution_expired": l.attribution_expired,
        "watch_lagged": l.watch_lagged,
    })
}

/// Losses that mean evidence may be missing from an answer (evictions of old records and slow
/// watchers do not affect what a query for recent evidence sees).
fn lost_events(l: &pb::LossCounters) -> Vec<(&'static str, u64)> {
    [
        ("ring buffer full", l.ring_buffer_full),
        ("connect table full", l.connect_table_full),
        ("undecodable", l.decode_errors),
        ("pipeline full", l.pipeline_full),
        ("evicted from store", l.store_evicted),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// The `query -o json` document: `{"evidence": [...], "diagnosis": [...], "agents": [...]}`.
pub fn query_json(evidence: &[Evidence], findings: &[Finding], answers: &[AgentAnswer]) -> Value {
    json!({
        "evidence": evidence.iter().map(evidence_json).collect::<Vec<_>>(),
        "diagnosis": findings,
        "agents": answers.iter().map(|a| json!({
            "agent": a.agent,
            "node": a.node,
            "truncated": a.truncated,
            "loss": loss_json(&a.loss),
        })).collect::<Vec<_>>(),
    })
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut parts = Vec::new();
        for (cell, w) in cells.zip(&widths) {
            parts.push(format!("{cell:<w$}"));
        }
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut headers.iter().copied(), &mut out);
    for row in rows {
        line(&mut row.iter().map(String::as_str), &mut out);
    }
    out
}

/// The `query -o table` text.
pub fn query_table(
    pod: &str,
    namespace: &str,
    evidence: &[Evidence],
    findings: &[Finding],
    answers: &[AgentAnswer],
) -> String {
    let mut out = String::new();
    let nodes: Vec<&str> = answers.iter().map(|a| a.node.as_str()).collect();
    let _ = writeln!(
        out,
        "Pod {namespace}/{pod}: {} record(s) from {} agent(s) ({})",
        evidence.len(),
        answers.len(),
        nodes.join(", ")
    );
    if evidence.is_empty() {
        let _ = writeln!(
            out,
            "\nNo silent failures recorded for this pod in the requested window."
        );
    } else {
        let rows: Vec<Vec<String>> = evidence
            .iter()
            .map(|e| {
                vec![
                    e.kind.to_string(),
                    e.direction.as_str().to_owned(),
                    e.count.to_string(),
                    rfc3339(e.last_seen),
                    e.src.to_string(),
                    e.dst.to_string(),
                    e.peer
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), ToString::to_string),
                    e.container.clone().unwrap_or_else(|| "-".to_owned()),
                    e.process
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |p| format!("{}[{}]", p.comm, p.pid)),
                    e.attribution.as_str().to_owned(),
                    e.node.clone(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                "KIND",
                "DIRECTION",
                "COUNT",
                "LAST SEEN",
                "SRC",
                "DST",
                "PEER",
                "CONTAINER",
                "PROCESS",
                "ATTRIBUTION",
                "NODE",
            ],
            &rows,
        ));
    }
    if !findings.is_empty() {
        let _ = writeln!(out, "\nDiagnosis");
        for f in findings {
            let _ = writeln!(out, "  [{}] {}", f.layer, f.summary);
            let _ = writeln!(out, "    next step: {}", f.next_step);
        }
    }
    let _ = writeln!(out);
    for a in answers {
        let lost = lost_events(&a.loss);
        if lost.is_empty() {
            let _ = writeln!(out, "Completeness: node {} lost no events.", a.node);
        } else {
            let parts: Vec<String> = lost.iter().map(|(what, n)| format!("{n} {what}")).collect();
            let _ = writeln!(
                out,
                "WARNING: node {} lost events ({}): evidence may be incomplete.",
                a.node,
                parts.join(", ")
            );
        }
        if a.truncated {
            let _ = writeln!(
                out,
                "WARNING: node {} returned only its newest records (answer truncated).",
                a.node
            );
        }
    }
    out
}

/// One line per watch update.
pub fn watch_line(e: &Evidence) -> String {
    format!(
        "{} {} {} {} {} -> {} count={} attribution={}",
        rfc3339(e.last_seen),
        e.pod
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string),
        e.kind,
        e.direction.as_str(),
        e.src,
        e.dst,
        e.count,
        e.attribution.as_str()
    )
}

pub fn status_json(statuses: &[(String, pb::StatusResponse)]) -> Value {
    Value::Array(
        statuses
            .iter()
            .map(|(agent, s)| {
                let meta = s.metadata.clone().unwrap_or_default();
                json!({
                    "agent": agent,
                    "node": s.node,
                    "kernel": s.kernel,
                    "version": s.version,
                    "started": s.started.as_ref().and_then(|t| crate::convert::time_from_pb(Some(t), "started").ok()).map(rfc3339),
                    "probes": s.probes.iter().map(|p| json!({"name": p.name, "hook": p.hook, "attached": p.attached, "error": (!p.error.is_empty()).then_some(&p.error)})).collect::<Vec<_>>(),
                    "metadata": {"synced": meta.synced, "pods": meta.pods, "pending_events": meta.pending_events, "retries": meta.retries, "last_error": (!meta.last_error.is_empty()).then_some(&meta.last_error)},
                    "loss": loss_json(&s.loss.unwrap_or_default()),
                    "store_records": s.store_records,
                    "store_capacity": s.store_capacity,
                    "events_received": s.events_received,
                })
            })
            .collect(),
    )
}

pub fn status_table(statuses: &[(String, pb::StatusResponse)]) -> String {
    let mut out = String::new();
    for (agent, s) in statuses {
        let meta = s.metadata.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "Node {} (agent {agent}, kernel {}, version {})",
            s.node, s.kernel, s.version
        );
        let _ = writeln!(
            out,
            "  metadata: {} ({} pods, {} events waiting{}{})",
            if meta.synced {
                "in sync"
            } else {
                "NOT in sync"
            },
            meta.pods,
            meta.pending_events,
            if meta.retries > 0 {
                format!(", {} retries", meta.retries)
            } else {
                String::new()
            },
            if meta.last_error.is_empty() {
                String::new()
            } else {
                format!(", last error: {}", meta.last_error)
            },
        );
        let _ = writeln!(
            out,
            "  store: {}/{} records, {} events received",
            s.store_records, s.store_capacity, s.events_received
        );
        for p in &s.probes {
            let state = if p.attached {
                "attached".to_owned()
            } else {
                format!("NOT attached: {}", p.error)
            };
            let _ = writeln!(out, "  probe {:<22} {:<36} {state}", p.name, p.hook);
        }
        let lost = lost_events(&s.loss.unwrap_or_default());
        if lost.is_empty() {
            let _ = writeln!(out, "  loss: none");
        } else {
            let parts: Vec<String> = lost.iter().map(|(what, n)| format!("{n} {what}")).collect();
            let _ = writeln!(out, "  loss: {}", parts.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Attribution, Direction, Kind, Process, Protocol};
    use std::time::Duration;

    fn sample() -> Evidence {
        Evidence {
            kind: Kind::ConnectionRefused,
            node: "node-a".into(),
            pod: Some(PodRef {
                namespace: "shop".into(),
                name: "web".into(),
                uid: "u-1".into(),
            }),
            container: Some("app".into()),
            process: Some(Process {
                pid: 42,
                comm: "curl".into(),
            }),
            first_seen: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100),
            count: 7,
            attribution: Attribution::Cgroup,
            direction: Direction::Outbound,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:8080".parse().unwrap(),
            protocol: Protocol::Tcp,
            reason: None,
            peer: None,
        }
    }

    fn answer(loss: pb::LossCounters) -> AgentAnswer {
        AgentAnswer {
            agent: "127.0.0.1:9742".into(),
            node: "node-a".into(),
            evidence: vec![],
            truncated: false,
            loss,
        }
    }

    #[test]
    fn json_matches_the_contract() {
        let v = query_json(&[sample()], &[], &[answer(pb::LossCounters::default())]);
        let e = &v["evidence"][0];
        assert_eq!(e["kind"], "connection_refused");
        assert_eq!(e["node"], "node-a");
        assert_eq!(
            e["pod"],
            json!({"namespace": "shop", "name": "web", "uid": "u-1"})
        );
        assert_eq!(e["container"], "app");
        assert_eq!(e["first_seen"], "2023-11-14T22:13:20.123Z");
        assert_eq!(e["last_seen"], "2023-11-14T22:15:00.000Z");
        assert_eq!(e["count"], 7);
        assert_eq!(e["attribution"], "cgroup");
        assert_eq!(e["direction"], "outbound");
        assert_eq!(e["src"], "10.0.0.1:40000");
        assert_eq!(e["dst"], "10.0.0.2:8080");
        assert_eq!(e["protocol"], "tcp");
        assert_eq!(v["agents"][0]["loss"]["ring_buffer_full"], 0);
    }

    #[test]
    fn table_shows_rows_diagnosis_and_completeness() {
        let findings = crate::cli::diagnose::diagnose(&[sample()]);
        let text = query_table(
            "web",
            "shop",
            &[sample()],
            &findings,
            &[answer(pb::LossCounters::default())],
        );
        assert!(text.starts_with("Pod shop/web: 1 record(s) from 1 agent(s) (node-a)"));
        assert!(
            text.contains("KIND                DIRECTION  COUNT"),
            "{text}"
        );
        assert!(text.contains("connection_refused  outbound   7"));
        assert!(text.contains("curl[42]"));
        assert!(text.contains("Diagnosis\n  [connection]"));
        assert!(text.contains("Completeness: node node-a lost no events."));
        let lossy = query_table(
            "web",
            "shop",
            &[],
            &[],
            &[answer(pb::LossCounters {
                ring_buffer_full: 3,
                ..Default::default()
            })],
        );
        assert!(lossy.contains("No silent failures recorded"));
        assert!(lossy.contains("WARNING: node node-a lost events (3 ring buffer full)"));
    }
}
