//! `timeline --pod X`: the incident evidence timeline of the production-debugging template
//! (Incident, Namespace, Workload, Started, Detected by, User impact, Timeline, Evidence, Root
//! cause hypothesis, Confirmed root cause, Preventive actions), built from the agents' evidence,
//! the pod's Kubernetes events and its owner's rollout history when readable. Findings are
//! ranked, each citing its evidence and the safest next step; read-only checks come first and
//! nothing destructive is ever suggested. Rendering is pure ([`markdown`]); reading the
//! cluster is [`read_cluster`].

use std::{fmt::Write as _, time::SystemTime};

use serde_json::{Value, json};

use crate::{
    diagnose::Finding,
    evidence::Evidence,
    text::{clean, cleaned, rfc3339},
};

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub at: SystemTime,
    /// `rollout`, `event`, `evidence`.
    pub source: &'static str,
    pub text: String,
}

/// One revision of the owner's rollout history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub revision: String,
    pub replica_set: String,
    pub created: Option<SystemTime>,
    pub images: Vec<String>,
}

/// What the cluster says about the pod: its events and its owner's rollouts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// `Deployment shop/web`, `ReplicaSet shop/web-7d9f`, or None for a bare pod.
    pub workload: Option<String>,
    pub revisions: Vec<Revision>,
    /// (time, type, reason, message, count)
    pub events: Vec<(SystemTime, String, String, String, i32)>,
    /// Why something could not be read (e.g. RBAC), said instead of silently left out.
    pub unreadable: Vec<String>,
}

/// Everything a timeline is built from.
pub struct Inputs<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub since: SystemTime,
    pub evidence: &'a [Evidence],
    /// Findings with the index of the record each reads, strongest first.
    pub findings: &'a [(usize, Finding)],
    /// Nodes whose agents answered.
    pub nodes: &'a [String],
    /// Agents that did not answer: (agent, error).
    pub unanswered: &'a [(String, String)],
    pub cluster: &'a ClusterView,
}

/// Read-only checks to run before acting on any finding, in order.
const FIRST_CHECKS: [&str; 3] = [
    "kubectl describe pod/{pod} -n {ns}",
    "kubectl get events -n {ns} --field-selector involvedObject.name={pod} --sort-by=.lastTimestamp",
    "kubectl rollout history {workload} -n {ns}",
];

/// Words a next step must never contain: the timeline only ever suggests read-only checks and
/// reviews (a restart or deletion destroys evidence).
const DESTRUCTIVE: [&str; 6] = [
    "kubectl delete",
    "rollout restart",
    "kubectl drain",
    "kubectl scale",
    "kubectl apply",
    "kubectl patch",
];

fn safe_next_step(step: &str) -> String {
    if DESTRUCTIVE.iter().any(|d| step.contains(d)) {
        "review the evidence above with the owning team before any change (a change would destroy evidence)".to_owned()
    } else {
        cleaned(step)
    }
}

/// The timeline entries, oldest first.
pub fn entries(i: &Inputs<'_>) -> Vec<Entry> {
    entries_with(i, &|s| clean(s).into_owned())
}

/// The entries with every piece of text from the cluster, the agents or the kernel passed
/// through `text` (escaped for people, or also for Markdown).
fn entries_with(i: &Inputs<'_>, text: &dyn Fn(&str) -> String) -> Vec<Entry> {
    let mut out = Vec::new();
    for r in &i.cluster.revisions {
        if let Some(at) = r.created.filter(|t| *t >= i.since) {
            out.push(Entry {
                at,
                source: "rollout",
                text: format!(
                    "Rollout: revision {} (ReplicaSet {}{})",
                    text(&r.revision),
                    text(&r.replica_set),
                    if r.images.is_empty() {
                        String::new()
                    } else {
                        format!(", image {}", text(&r.images.join(", ")))
                    }
                ),
            });
        }
    }
    for (at, kind, reason, message, count) in &i.cluster.events {
        let times = if *count > 1 {
            format!(" (x{count})")
        } else {
            String::new()
        };
        out.push(Entry {
            at: *at,
            source: "event",
            text: format!(
                "Pod event {} {}: {}{times}",
                text(kind),
                text(reason),
                text(message)
            ),
        });
    }
    for (n, e) in i.evidence.iter().enumerate() {
        out.push(Entry {
            at: e.first_seen,
            source: "evidence",
            text: format!(
                "[E{}] first {} on node {} ({} occurrence(s), last {})",
                n + 1,
                e.kind(),
                text(&e.node),
                e.count,
                rfc3339(e.last_seen)
            ),
        });
    }
    out.sort_by(|a, b| a.at.cmp(&b.at).then(a.source.cmp(b.source)));
    out
}

/// Text from pods, agents and the kernel as literal Markdown: control characters escaped
/// ([`clean`]: a newline cannot start a line, a heading or a list item), then every character
/// that has a meaning inside a CommonMark or GitHub line backslash-escaped (any ASCII
/// punctuation may be): no emphasis, code span, link, image, HTML, entity, table cell,
/// strikethrough or closing heading sequence can come from a name.
fn md(s: &str) -> String {
    let s = clean(s);
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '&' | '#' | '!'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` (control characters escaped) as one code span: backslashes are literal there, so the
/// fence is one backtick longer than the longest run inside, padded by a space when the text
/// starts or ends with a backtick (CommonMark 6.1).
fn code(s: &str) -> String {
    let s = clean(s);
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// The timeline in the template's shape, as Markdown ready to paste into an incident document.
pub fn markdown(i: &Inputs<'_>) -> String {
    let entries = entries_with(i, &md);
    let mut out = String::new();
    let (ns, pod) = (md(i.namespace), md(i.pod));
    let workload = i
        .cluster
        .workload
        .as_deref()
        .map_or_else(|| format!("Pod {ns}/{pod} (no owner)"), md);
    // The first sign of trouble: a record or a warning event, not a routine rollout.
    let trouble = i
        .evidence
        .iter()
        .map(|e| e.first_seen)
        .chain(
            i.cluster
                .events
                .iter()
                .filter(|(_, kind, ..)| kind == "Warning")
                .map(|(at, ..)| *at),
        )
        .min();
    let started = trouble.map_or_else(|| "no trouble recorded in the window".to_owned(), rfc3339);
    let _ = writeln!(out, "# Incident: {ns}/{pod}\n");
    let _ = writeln!(out, "- **Namespace:** {ns}");
    let _ = writeln!(out, "- **Workload:** {workload}");
    let _ = writeln!(out, "- **Started:** {started}");
    let _ = writeln!(
        out,
        "- **Detected by:** triage-agent (agents on {}; window from {})",
        if i.nodes.is_empty() {
            "no node".to_owned()
        } else {
            md(&i.nodes.join(", "))
        },
        rfc3339(i.since)
    );
    let impact = match i.findings.first() {
        Some((_, f)) => format!("{} ({} layer)", md(&f.summary), f.layer),
        None => "no silent failure recorded for this pod in the window".to_owned(),
    };
    let _ = writeln!(out, "- **User impact:** {impact}");
    if !i.unanswered.is_empty() {
        let _ = writeln!(
            out,
            "- **Incomplete:** {} agent(s) did not answer: {}",
            i.unanswered.len(),
            i.unanswered
                .iter()
                .map(|(a, e)| format!("{} ({})", md(a), md(e)))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    let _ = writeln!(out, "\n## Timeline\n");
    if entries.is_empty() {
        let _ = writeln!(out, "- (nothing recorded in the window)");
    }
    for e in &entries {
        let _ = writeln!(out, "- {}: {}", rfc3339(e.at), e.text);
    }

    let _ = writeln!(out, "\n## Evidence\n");
    let history = if i.cluster.revisions.is_empty() {
        "no rollout history (no Deployment owns the pod, or it was unreadable)".to_owned()
    } else {
        i.cluster
            .revisions
            .iter()
            .map(|r| format!("revision {} = {}", md(&r.revision), md(&r.replica_set)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "- kubectl rollout history: {history}");
    let warnings = i
        .cluster
        .events
        .iter()
        .filter(|(_, kind, ..)| kind == "Warning")
        .count();
    let _ = writeln!(
        out,
        "- pod events: {} in the window ({warnings} warning(s))",
        i.cluster.events.len()
    );
    for why in &i.cluster.unreadable {
        let _ = writeln!(out, "- not readable: {}", md(why));
    }
    let _ = writeln!(
        out,
        "- triage-agent: {} record(s) from {} node(s)",
        i.evidence.len(),
        i.nodes.len()
    );
    for (n, e) in i.evidence.iter().enumerate() {
        let _ = writeln!(
            out,
            "  - [E{}] {} on node {}, {} occurrence(s) from {} to {}, attribution {}",
            n + 1,
            e.kind(),
            md(&e.node),
            e.count,
            rfc3339(e.first_seen),
            rfc3339(e.last_seen),
            e.subject.attribution.as_str()
        );
    }

    let _ = writeln!(out, "\n## Findings (ranked)\n");
    let (raw_ns, raw_pod) = (clean(i.namespace), clean(i.pod));
    let workload_ref = i
        .cluster
        .workload
        .as_deref()
        .and_then(|w| w.split_once(' '))
        .map_or_else(
            || format!("pod/{raw_pod}"),
            |(kind, name)| {
                let name = name.rsplit('/').next().unwrap_or(name);
                format!("{}/{}", kind.to_lowercase(), name)
            },
        );
    let _ = writeln!(out, "Read-only checks first:");
    for check in FIRST_CHECKS {
        if check.contains("{workload}") && i.cluster.revisions.is_empty() {
            continue;
        }
        // In a code span, where backslashes are literal: the fence outgrows any backtick run.
        let _ = writeln!(
            out,
            "- {}",
            code(
                &check
                    .replace("{pod}", &raw_pod)
                    .replace("{ns}", &raw_ns)
                    .replace("{workload}", &workload_ref)
            )
        );
    }
    let _ = writeln!(out);
    if i.findings.is_empty() {
        let _ = writeln!(out, "1. No finding: nothing silently failed in the window.");
    }
    for (rank, (index, f)) in i.findings.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}. **[{}]** {} (evidence: E{})\n   - Next step: {}",
            rank + 1,
            f.layer,
            md(&f.summary),
            index + 1,
            md(&safe_next_step(&f.next_step))
        );
    }

    let _ = writeln!(out, "\n## Root cause hypothesis\n");
    match i.findings.first() {
        Some((index, f)) => {
            let _ = writeln!(out, "- {} (E{})", md(&f.summary), index + 1);
        }
        None => {
            let _ = writeln!(out, "- <hypothesis>");
        }
    }
    let _ = writeln!(
        out,
        "\n## Confirmed root cause\n\n- _to fill in after validation_"
    );
    let _ = writeln!(
        out,
        "\n## Preventive actions\n\n- _to fill in: tests, policy, alerts, runbook or a platform guardrail_"
    );
    out
}

/// The same content for machines.
pub fn json(i: &Inputs<'_>) -> Value {
    json!({
        "namespace": i.namespace,
        "pod": i.pod,
        "workload": i.cluster.workload,
        "since": rfc3339(i.since),
        "nodes": i.nodes,
        "complete": i.unanswered.is_empty(),
        "unanswered": i.unanswered.iter().map(|(a, e)| json!({"agent": a, "error": e})).collect::<Vec<_>>(),
        "timeline": entries(i).iter().map(|e| json!({"at": rfc3339(e.at), "source": e.source, "text": e.text})).collect::<Vec<_>>(),
        "rollout_history": i.cluster.revisions.iter().map(|r| json!({"revision": r.revision, "replica_set": r.replica_set, "created": r.created.map(rfc3339), "images": r.images})).collect::<Vec<_>>(),
        "findings": i.findings.iter().enumerate().map(|(rank, (index, f))| json!({"rank": rank + 1, "layer": f.layer, "kind": f.kind.as_str(), "summary": f.summary, "evidence": [index + 1], "next_step": safe_next_step(&f.next_step)})).collect::<Vec<_>>(),
        "unreadable": i.cluster.unreadable,
    })
}

/// Reads the pod's events (inside the window) and its owner's rollout history. What cannot be
/// read is said in `unreadable`, never an error: the timeline still comes.
#[cfg(feature = "cluster")]
pub async fn read_cluster(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    since: SystemTime,
) -> ClusterView {
    use k8s_openapi::api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::{Event, Pod},
    };
    use kube::{Api, api::ListParams};

    use crate::cli::cluster::describe;

    let mut view = ClusterView::default();
    let events = Api::<Event>::namespaced(client.clone(), namespace);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={pod}"
    ));
    match events.list(&lp).await {
        Ok(list) => {
            for e in list.items {
                let Some(at) = crate::cli::cluster::event_time(&e).filter(|t| *t >= since) else {
                    continue;
                };
                view.events.push((
                    at,
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                    e.count.unwrap_or(1),
                ));
            }
        }
        Err(e) => view
            .unreadable
            .push(format!("pod events: {}", describe(&e))),
    }
    let owner = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, kind: &str| {
        meta.owner_references
            .as_ref()
            .and_then(|o| {
                o.iter()
                    .find(|r| r.kind == kind && r.controller == Some(true))
            })
            .map(|r| (r.name.clone(), r.uid.clone()))
    };
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let Ok(Some(p)) = pods.get_opt(pod).await else {
        return view;
    };
    let Some((rs_name, _)) = owner(&p.metadata, "ReplicaSet") else {
        return view;
    };
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), namespace);
    let rs = match replica_sets.get(&rs_name).await {
        Ok(rs) => rs,
        Err(e) => {
            view.workload = Some(format!("ReplicaSet {namespace}/{rs_name}"));
            view.unreadable
                .push(format!("ReplicaSet {rs_name}: {}", describe(&e)));
            return view;
        }
    };
    let Some((deploy_name, deploy_uid)) = owner(&rs.metadata, "Deployment") else {
        view.workload = Some(format!("ReplicaSet {namespace}/{rs_name}"));
        return view;
    };
    view.workload = Some(format!("Deployment {namespace}/{deploy_name}"));
    // The Deployment itself says nothing the ReplicaSets do not; reading it checks access.
    if let Err(e) = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(&deploy_name)
        .await
    {
        view.unreadable
            .push(format!("Deployment {deploy_name}: {}", describe(&e)));
    }
    match replica_sets.list(&ListParams::default()).await {
        Ok(list) => {
            for rs in list.items {
                if owner(&rs.metadata, "Deployment").is_none_or(|(_, uid)| uid != deploy_uid) {
                    continue;
                }
                view.revisions.push(Revision {
                    revision: rs
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned())
                        .unwrap_or_else(|| "?".into()),
                    replica_set: rs.metadata.name.clone().unwrap_or_default(),
                    created: rs
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| SystemTime::from(t.0)),
                    images: rs
                        .spec
                        .and_then(|s| s.template)
                        .and_then(|t| t.spec)
                        .map(|s| s.containers.into_iter().filter_map(|c| c.image).collect())
                        .unwrap_or_default(),
                });
            }
            view.revisions
                .sort_by_key(|r| r.revision.parse::<u64>().unwrap_or(0));
        }
        Err(e) => view
            .unreadable
            .push(format!("rollout history: {}", describe(&e))),
    }
    view
}

#[cfg(test)]
mod tests;
