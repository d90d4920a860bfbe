//! `status` across many agents: one row per agent, problems first (agents that did not
//! answer, probes not attached, metadata out of sync, losses, a store near its bound), then
//! the reasons of each problem. The full per-agent detail stays in `-o json|yaml`.

use std::fmt::Write as _;

use serde_json::{Value, json};
use triage_agent_proto::v1 as pb;

use super::{Style, Unanswered, json::loss_json, lost_in_window, table};
use crate::{
    codec,
    text::{clean, cleaned, rfc3339},
};

/// A store this full is worth a look: evictions are near.
const STORE_NEARLY_FULL: f64 = 0.9;

/// What is wrong with one agent, in words; empty when nothing is.
pub fn problems(s: &pb::StatusResponse) -> Vec<String> {
    let mut out = Vec::new();
    for p in s.probes.iter().filter(|p| !p.attached) {
        out.push(format!(
            "probe {} not attached: {}",
            clean(&p.name),
            clean(&p.error)
        ));
    }
    let meta = s.metadata.clone().unwrap_or_default();
    if !meta.synced {
        let why = if meta.last_error.is_empty() {
            String::new()
        } else {
            format!(": {}", clean(&meta.last_error))
        };
        out.push(format!(
            "pod metadata not in sync ({} retries){why}",
            meta.retries
        ));
    }
    // A runtime that was found (or named) and does not answer; none found is no problem.
    if let Some(r) = s
        .runtime
        .as_ref()
        .filter(|r| !r.connected && !r.socket.is_empty())
    {
        out.push(format!(
            "container runtime at {} not answering: {}",
            clean(&r.socket),
            clean(&r.last_error)
        ));
    }
    let lost = lost_in_window(
        &codec::loss_from_pb(&s.loss.clone().unwrap_or_default()),
        None,
    );
    if !lost.is_empty() {
        out.push(format!("lost: {}", lost.join(", ")));
    }
    if let Some(disk) = s.persistence.as_ref().filter(|d| !d.error.is_empty()) {
        out.push(format!(
            "store on disk {} not writing: {}",
            clean(&disk.path),
            clean(&disk.error)
        ));
    }
    if let Some(skew) = version_skew(&s.version, env!("CARGO_PKG_VERSION")) {
        out.push(skew);
    }
    if s.store_capacity > 0 {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a fill ratio; precision beyond 2^52 records is irrelevant"
        )]
        let fill = s.store_records as f64 / s.store_capacity as f64;
        if fill >= STORE_NEARLY_FULL {
            out.push(format!(
                "store {}/{} records: evictions near",
                s.store_records, s.store_capacity
            ));
        }
    }
    out
}

/// The skew policy: the CLI and the agents are meant to run the same minor version. The gRPC
/// API only grows (new fields and oneof variants, never renumbered), so other versions still
/// talk, but what one side added the other does not show; a minor version or more apart is a
/// problem `status` names.
pub fn version_skew(agent: &str, cli: &str) -> Option<String> {
    let minor = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.trim_start_matches('v').split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (minor(agent), minor(cli)) {
        (Some(a), Some(c)) if a == c => None,
        (Some(_), Some(_)) => Some(format!(
            "agent version {} differs from this CLI's {cli} by a minor version or more: run the same minor version (what one side added, the other does not show)",
            clean(agent)
        )),
        _ => Some(format!(
            "agent version {:?} is not a version this CLI ({cli}) can compare",
            clean(agent)
        )),
    }
}

/// The summary table: unanswered agents, then agents with problems, then healthy ones (each
/// group by node), and the problems spelled out below.
pub fn status_summary(
    statuses: &[(String, pb::StatusResponse)],
    unanswered: &[Unanswered],
    style: &Style,
) -> String {
    let mut rows: Vec<(u8, String, Vec<String>)> = Vec::new();
    let mut details: Vec<(String, Vec<String>)> = Vec::new();
    for u in unanswered {
        let node = u.node.clone().unwrap_or_else(|| u.agent.clone());
        let suffix = format!(" on node {node}");
        let agent = u.agent.strip_suffix(&suffix).unwrap_or(&u.agent);
        let mut row = vec![
            cleaned(&node),
            style.paint("NO ANSWER", Paint::Bad),
            cleaned(agent),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ];
        if style.wide {
            row.extend(["-".to_owned(), "-".to_owned()]);
        }
        rows.push((0, node.clone(), row));
        details.push((node, vec![cleaned(&u.error)]));
    }
    for (agent, s) in statuses {
        let problems = problems(s);
        let attached = s.probes.iter().filter(|p| p.attached).count();
        let meta = s.metadata.clone().unwrap_or_default();
        let lost = lost_in_window(
            &codec::loss_from_pb(&s.loss.clone().unwrap_or_default()),
            None,
        );
        let state = if problems.is_empty() {
            style.paint("OK", Paint::Good)
        } else {
            style.paint(&format!("{} PROBLEM(S)", problems.len()), Paint::Bad)
        };
        // The node has its own column: "ns/pod on node N" names the agent pod alone here.
        let suffix = format!(" on node {}", s.node);
        let agent = agent.strip_suffix(&suffix).unwrap_or(agent);
        let mut row = vec![
            cleaned(&s.node),
            state,
            cleaned(agent),
            cleaned(&s.version),
            cleaned(&s.kernel),
            format!("{attached}/{}", s.probes.len()),
            if meta.synced {
                format!("synced, {} pods", meta.pods)
            } else {
                "NOT synced".to_owned()
            },
            format!("{}/{}", s.store_records, s.store_capacity),
        ];
        if style.wide {
            row.push(if lost.is_empty() {
                "none".to_owned()
            } else {
                lost.join(", ")
            });
            row.push(s.events_received.to_string());
        }
        let rank = if problems.is_empty() { 2 } else { 1 };
        rows.push((rank, s.node.clone(), row));
        if !problems.is_empty() {
            details.push((s.node.clone(), problems));
        }
    }
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut headers = vec![
        "NODE", "STATE", "AGENT", "VERSION", "KERNEL", "PROBES", "METADATA", "STORE",
    ];
    if style.wide {
        headers.extend(["LOSS", "EVENTS"]);
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, _, r)| r).collect();
    let mut out = table(&headers, &rows, style);
    if !details.is_empty() {
        let _ = writeln!(out, "\nProblems");
        for (node, problems) in details {
            for p in problems {
                let _ = writeln!(out, "  {}: {p}", clean(&node));
            }
        }
    }
    out
}

/// What a colour says.
#[derive(Clone, Copy)]
pub enum Paint {
    Good,
    Bad,
    Warn,
}

impl Style {
    /// `text` in the colour of `paint` when colours are on; the text itself otherwise.
    pub fn paint(&self, text: &str, paint: Paint) -> String {
        if !self.color {
            return text.to_owned();
        }
        let code = match paint {
            Paint::Good => "32",
            Paint::Bad => "1;31",
            Paint::Warn => "33",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
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
                    "started": s.started.as_ref().and_then(|t| codec::time_from_pb(Some(t), "started").ok()).map(rfc3339),
                    "probes": s.probes.iter().map(|p| json!({"name": p.name, "hook": p.hook, "attached": p.attached, "error": (!p.error.is_empty()).then_some(&p.error), "fallback": (!p.fallback.is_empty()).then_some(&p.fallback), "degraded": (!p.degraded.is_empty()).then_some(&p.degraded)})).collect::<Vec<_>>(),
                    "signals": s.signals.iter().map(|g| json!({"signal": g.signal, "mode": signal_mode(g.mode), "detail": (!g.detail.is_empty()).then_some(&g.detail)})).collect::<Vec<_>>(),
                    "metadata": {"synced": meta.synced, "pods": meta.pods, "pending_events": meta.pending_events, "retries": meta.retries, "last_error": (!meta.last_error.is_empty()).then_some(&meta.last_error)},
                    "runtime": s.runtime.as_ref().map(|r| json!({"socket": (!r.socket.is_empty()).then_some(&r.socket), "runtime": (!r.runtime.is_empty()).then_some(&r.runtime), "connected": r.connected, "pods": r.pods, "containers": r.containers, "pods_not_in_api": r.pods_not_in_api, "last_error": (!r.last_error.is_empty()).then_some(&r.last_error)})),
                    "loss": loss_json(&codec::loss_from_pb(&s.loss.clone().unwrap_or_default())),
                    "store_records": s.store_records,
                    "store_capacity": s.store_capacity,
                    "store_expired": s.store_expired,
                    "store_disk": s.persistence.as_ref().map(persistence_json),
                    "events_received": s.events_received,
                    "flow_table_drains": s.flow_table_drains,
                    "dns_table_drains": s.dns_table_drains,
                    "cgroup_sweeps": s.cgroup_sweeps,
                    "resources": s.resource_sources.iter().map(|r| json!({"signal": r.signal, "hierarchy": r.hierarchy, "files": r.files, "mount": r.mount, "containers": r.containers, "note": (!r.note.is_empty()).then_some(&r.note)})).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The container runtime source in one line: what it reads, or why it reads nothing.
fn runtime_line(r: &pb::RuntimeStatus) -> String {
    if r.connected {
        let waiting = if r.pods_not_in_api > 0 {
            format!(", {} not reported by the API server yet", r.pods_not_in_api)
        } else {
            String::new()
        };
        format!(
            "runtime: {} at {} ({} pods, {} containers{waiting})",
            clean(&r.runtime),
            clean(&r.socket),
            r.pods,
            r.containers
        )
    } else if r.socket.is_empty() {
        format!("runtime: not read: {}", clean(&r.last_error))
    } else {
        format!(
            "runtime: NOT connected to {}: {}",
            clean(&r.socket),
            clean(&r.last_error)
        )
    }
}

/// A signal mode's name (`full`, `degraded`, `off`), as in JSON and `doctor`.
fn signal_mode(mode: i32) -> &'static str {
    match pb::SignalMode::try_from(mode) {
        Ok(pb::SignalMode::Full) => "full",
        Ok(pb::SignalMode::Degraded) => "degraded",
        Ok(pb::SignalMode::Off) => "off",
        _ => "unknown",
    }
}

pub fn status_table(statuses: &[(String, pb::StatusResponse)]) -> String {
    let mut out = String::new();
    for (agent, s) in statuses {
        let meta = s.metadata.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "Node {} (agent {}, kernel {}, version {})",
            clean(&s.node),
            clean(agent),
            clean(&s.kernel),
            clean(&s.version)
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
                format!(", last error: {}", clean(&meta.last_error))
            },
        );
        if let Some(r) = &s.runtime {
            let _ = writeln!(out, "  {}", runtime_line(r));
        }
        let _ = writeln!(
            out,
            "  store: {}/{} records, {} expired by age, {} events received",
            s.store_records, s.store_capacity, s.store_expired, s.events_received
        );
        if let Some(p) = &s.persistence {
            let _ = writeln!(out, "  {}", persistence_line(p));
        }
        for p in &s.probes {
            let state = if !p.attached {
                format!("NOT attached: {}", clean(&p.error))
            } else if !p.degraded.is_empty() {
                let runs = if p.fallback.is_empty() {
                    String::new()
                } else {
                    format!(" (runs {})", clean(&p.fallback))
                };
                format!("attached, DEGRADED{runs}: {}", clean(&p.degraded))
            } else {
                "attached".to_owned()
            };
            let _ = writeln!(
                out,
                "  probe {:<22} {:<36} {state}",
                clean(&p.name),
                clean(&p.hook)
            );
        }
        for g in s.signals.iter().filter(|g| !g.detail.is_empty()) {
            let _ = writeln!(
                out,
                "  signal {:<18} {}: {}",
                clean(&g.signal),
                signal_mode(g.mode),
                clean(&g.detail)
            );
        }
        for r in &s.resource_sources {
            let note = if r.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", clean(&r.note))
            };
            let _ = writeln!(
                out,
                "  {:<14} {} {} [{}], {} containers{note}",
                clean(&r.signal),
                clean(&r.hierarchy),
                clean(&r.mount),
                clean(&r.files.join(", ")),
                r.containers,
            );
        }
        let lost = lost_in_window(
            &codec::loss_from_pb(&s.loss.clone().unwrap_or_default()),
            None,
        );
        if lost.is_empty() {
            let _ = writeln!(out, "  loss: none");
        } else {
            let _ = writeln!(out, "  loss: {}", lost.join(", "));
        }
    }
    out
}

fn persistence_json(p: &pb::PersistenceStatus) -> Value {
    json!({
        "path": p.path,
        "error": (!p.error.is_empty()).then_some(&p.error),
        "restored": p.restored,
        "moved_aside": (!p.moved_aside.is_empty()).then_some(&p.moved_aside),
        "used_bytes": p.used_bytes,
        "max_bytes": p.max_bytes,
        "last_commit": p.last_commit.as_ref().and_then(|t| codec::time_from_pb(Some(t), "last_commit").ok()).map(rfc3339),
        "pending": p.pending,
    })
}

/// One line about the store on disk, problems first.
fn persistence_line(p: &pb::PersistenceStatus) -> String {
    let mut line = if p.error.is_empty() {
        format!(
            "store on disk: {} ({} of {} KiB used, {} records restored at start)",
            clean(&p.path),
            p.used_bytes / 1024,
            p.max_bytes / 1024,
            p.restored
        )
    } else {
        format!(
            "store on disk: NOT WRITING {}: {}",
            clean(&p.path),
            clean(&p.error)
        )
    };
    if !p.moved_aside.is_empty() {
        line.push_str(&format!(
            "; found an unusable file, moved to {}",
            clean(&p.moved_aside)
        ));
    }
    line
}
