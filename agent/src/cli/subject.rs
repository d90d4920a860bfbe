//! What `query`, `explain`, `watch` and `timeline` are about, named as kubectl users name it:
//! a pod (`web-7c9f-abcde`, `pod/web-7c9f-abcde`) or a workload (`deploy/web`, `sts/db`,
//! `ds/agent`, `job/migrate`, `rs/web-7c9f`), with its namespace in front when wanted
//! (`shop/web`); and, with the cluster, a workload resolved to the pods it has and had.
//!
//! The first of two parts is a type when kubectl knows it as one, else a namespace. A workload
//! is resolved through its controller's ownership, as the controllers themselves record it:
//! the pods whose controlling owner is the workload (a Deployment's through its ReplicaSets,
//! old ones included), plus the pods it created inside the window and that are gone, from its
//! `SuccessfulCreate` events; the nodes they ran on come from their pods and the scheduler's
//! `Scheduled` events.

use std::{collections::BTreeSet, fmt};

/// The workload kinds a subject may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    ReplicaSet,
}

impl WorkloadKind {
    /// The kind as the API names it (`Deployment`).
    pub fn kind(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::ReplicaSet => "ReplicaSet",
        }
    }

    /// The short name kubectl prints and accepts (`deploy`).
    pub fn short(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deploy",
            WorkloadKind::StatefulSet => "sts",
            WorkloadKind::DaemonSet => "ds",
            WorkloadKind::Job => "job",
            WorkloadKind::ReplicaSet => "rs",
        }
    }
}

/// A pod, or a workload's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pod(String),
    Workload(WorkloadKind, String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pod(name) => f.write_str(name),
            Target::Workload(kind, name) => write!(f, "{}/{name}", kind.short()),
        }
    }
}

/// The subject as given: its namespace when written in front, and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub namespace: Option<String>,
    pub target: Target,
}

/// Type names as kubectl accepts them: singular, plural, short and group-qualified.
const TYPES: &[(&[&str], Option<WorkloadKind>)] = &[
    (&["pod", "pods", "po"], None),
    (
        &[
            "deployment",
            "deployments",
            "deploy",
            "deployment.apps",
            "deployments.apps",
        ],
        Some(WorkloadKind::Deployment),
    ),
    (
        &[
            "statefulset",
            "statefulsets",
            "sts",
            "statefulset.apps",
            "statefulsets.apps",
        ],
        Some(WorkloadKind::StatefulSet),
    ),
    (
        &[
            "daemonset",
            "daemonsets",
            "ds",
            "daemonset.apps",
            "daemonsets.apps",
        ],
        Some(WorkloadKind::DaemonSet),
    ),
    (
        &["job", "jobs", "job.batch", "jobs.batch"],
        Some(WorkloadKind::Job),
    ),
    (
        &[
            "replicaset",
            "replicasets",
            "rs",
            "replicaset.apps",
            "replicasets.apps",
        ],
        Some(WorkloadKind::ReplicaSet),
    ),
];

/// Types kubectl knows that name no pods of their own here: refused with what to give instead,
/// rather than read as a namespace.
const OTHER_TYPES: &[&str] = &[
    "service",
    "services",
    "svc",
    "cronjob",
    "cronjobs",
    "cj",
    "node",
    "nodes",
    "no",
    "namespace",
    "namespaces",
    "ns",
    "configmap",
    "configmaps",
    "cm",
    "secret",
    "secrets",
    "ingress",
    "ingresses",
    "ing",
    "replicationcontroller",
    "replicationcontrollers",
    "rc",
    "endpoints",
    "ep",
    "networkpolicy",
    "networkpolicies",
    "netpol",
];

/// What to give instead, in every error.
const FORMS: &str = "give POD, TYPE/NAME (pod, deploy, sts, ds, job, rs) or NAMESPACE/NAME";

/// Parses a subject: `NAME`, `TYPE/NAME` or `NAMESPACE/NAME`.
pub fn parse(s: &str) -> Result<Subject, String> {
    let shown = crate::text::clean(s);
    let parts: Vec<&str> = s.split('/').collect();
    let (namespace, target) = match parts.as_slice() {
        [name] => (None, Target::Pod(valid_name(name, &shown)?)),
        [first, name] => {
            let lower = first.to_ascii_lowercase();
            match TYPES
                .iter()
                .find(|(names, _)| names.contains(&lower.as_str()))
            {
                Some((_, None)) => (None, Target::Pod(valid_name(name, &shown)?)),
                Some((_, Some(kind))) => (None, Target::Workload(*kind, valid_name(name, &shown)?)),
                None if OTHER_TYPES.contains(&lower.as_str()) => {
                    return Err(format!(
                        "{shown:?}: {lower} has no pods of its own to ask about; {FORMS}"
                    ));
                }
                None => {
                    if !is_namespace(first) {
                        return Err(format!(
                            "{shown:?}: {:?} is neither a type nor a namespace; {FORMS}",
                            crate::text::clean(first)
                        ));
                    }
                    (
                        Some((*first).to_owned()),
                        Target::Pod(valid_name(name, &shown)?),
                    )
                }
            }
        }
        _ => return Err(format!("{shown:?}: too many '/'; {FORMS}")),
    };
    Ok(Subject { namespace, target })
}

/// A pod or workload name as Kubernetes allows it (a DNS subdomain).
fn valid_name(name: &str, shown: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    if ok {
        Ok(name.to_owned())
    } else if name.is_empty() {
        Err(format!("{shown:?}: no name; {FORMS}"))
    } else {
        Err(format!(
            "{shown:?}: {:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')",
            crate::text::clean(name)
        ))
    }
}

/// A namespace name (a DNS label: at most 63 lowercase letters, digits and '-').
fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The pod a command is about, from the positional subject or `--pod`, and the namespace the
/// subject wrote in front (which must agree with `-n`).
pub fn choose(
    positional: Option<&str>,
    pod_flag: Option<&str>,
    namespace_flag: Option<&str>,
) -> Result<Option<Subject>, String> {
    let subject = match (positional, pod_flag) {
        (Some(_), Some(_)) => {
            return Err("give the pod either as an argument or with --pod, not both".into());
        }
        (Some(s), None) => parse(s)?,
        (None, Some(pod)) => Subject {
            namespace: None,
            target: Target::Pod(pod.to_owned()),
        },
        (None, None) => return Ok(None),
    };
    if let (Some(written), Some(flag)) = (&subject.namespace, namespace_flag)
        && written != flag
    {
        return Err(format!(
            "the subject names namespace {written:?} but -n says {:?}",
            crate::text::clean(flag)
        ));
    }
    Ok(Some(subject))
}

/// A workload's pods: those it has now and those it created inside the window, and the nodes
/// they ran on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Pod names, current and gone.
    pub pods: BTreeSet<String>,
    pub nodes: BTreeSet<String>,
}

#[cfg(feature = "cluster")]
pub use resolve::resolve;

#[cfg(feature = "cluster")]
mod resolve {
    use std::{
        collections::{BTreeMap, BTreeSet},
        time::SystemTime,
    };

    use k8s_openapi::{
        api::{
            apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
            batch::v1::Job,
            core::v1::{Event, Pod},
        },
        apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
    };
    use kube::{Api, api::ListParams};

    use super::{Resolved, WorkloadKind};
    use crate::cli::cluster::{ClusterError, bounded, event_time};

    /// Most pods that are gone a workload's answer names (each is asked about by name).
    pub const MAX_EARLIER: usize = 200;

    /// A controller's identity: its kind, name and uid.
    struct Owner {
        kind: &'static str,
        name: String,
        uid: String,
    }

    fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
        meta.owner_references
            .as_ref()?
            .iter()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.as_str())
    }

    /// `matchLabels` as a label selector: every pod the workload selects matches it (its
    /// `matchExpressions` only narrow further; ownership decides).
    fn match_labels(selector: Option<&LabelSelector>) -> String {
        selector
            .and_then(|s| s.match_labels.as_ref())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }

    /// Gets a workload: its metadata and pod selector; NotFound when it does not exist.
    async fn workload(
        client: &kube::Client,
        namespace: &str,
        kind: WorkloadKind,
        name: &str,
    ) -> Result<(ObjectMeta, String), ClusterError> {
        macro_rules! get {
            ($ty:ty) => {{
                let got = bounded(Api::<$ty>::namespaced(client.clone(), namespace).get_opt(name))
                    .await?;
                got.map(|w| {
                    let selector = match_labels(w.spec.as_ref().map(|s| &s.selector));
                    (w.metadata, selector)
                })
            }};
        }
        let found = match kind {
            WorkloadKind::Deployment => get!(Deployment),
            WorkloadKind::StatefulSet => get!(StatefulSet),
            WorkloadKind::DaemonSet => get!(DaemonSet),
            WorkloadKind::ReplicaSet => get!(ReplicaSet),
            WorkloadKind::Job => {
                let got = bounded(Api::<Job>::namespaced(client.clone(), namespace).get_opt(name))
                    .await?;
                got.map(|w| {
                    let selector = match_labels(w.spec.as_ref().and_then(|s| s.selector.as_ref()));
                    (w.metadata, selector)
                })
            }
        };
        found.ok_or_else(|| ClusterError::NotFound {
            what: format!("{} {namespace}/{name}", kind.kind().to_ascii_lowercase()),
        })
    }

    /// The controllers whose pods are the workload's: a Deployment's ReplicaSets (old ones
    /// too, which own the pods of earlier revisions), else the workload itself.
    async fn owners(
        client: &kube::Client,
        namespace: &str,
        kind: WorkloadKind,
        name: &str,
        meta: &ObjectMeta,
        selector: &str,
    ) -> Result<Vec<Owner>, ClusterError> {
        let uid = meta.uid.clone().unwrap_or_default();
        if kind != WorkloadKind::Deployment {
            return Ok(vec![Owner {
                kind: kind.kind(),
                name: name.to_owned(),
                uid,
            }]);
        }
        let api = Api::<ReplicaSet>::namespaced(client.clone(), namespace);
        let list = bounded(api.list(&ListParams::default().labels(selector))).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|rs| controller_uid(&rs.metadata) == Some(uid.as_str()))
            .filter_map(|rs| {
                Some(Owner {
                    kind: "ReplicaSet",
                    name: rs.metadata.name?,
                    uid: rs.metadata.uid.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// The pod a `SuccessfulCreate` event names: "Created pod: NAME" (ReplicaSet, DaemonSet,
    /// Job), "create Pod NAME in StatefulSet X successful" (StatefulSet).
    pub fn created_pod(message: &str) -> Option<&str> {
        if let Some(rest) = message.strip_prefix("Created pod: ") {
            return Some(rest.trim()).filter(|n| !n.is_empty() && !n.contains(' '));
        }
        let rest = message.strip_prefix("create Pod ")?;
        let (name, _) = rest.split_once(" in StatefulSet ")?;
        Some(name.trim()).filter(|n| !n.is_empty() && !n.contains(' '))
    }

    /// Resolves a workload to its pods and their nodes inside the window starting at `since`.
    /// NotFound when the workload does not exist; an empty [`Resolved`] when it has no pods
    /// and created none inside the window.
    pub async fn resolve(
        client: &kube::Client,
        namespace: &str,
        kind: WorkloadKind,
        name: &str,
        since: SystemTime,
    ) -> Result<Resolved, ClusterError> {
        let (meta, selector) = workload(client, namespace, kind, name).await?;
        let owners = owners(client, namespace, kind, name, &meta, &selector).await?;
        let owner_uids: BTreeSet<&str> = owners.iter().map(|o| o.uid.as_str()).collect();
        let mut resolved = Resolved::default();
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        let list = bounded(pods.list(&ListParams::default().labels(&selector))).await?;
        for pod in list.items {
            if !controller_uid(&pod.metadata).is_some_and(|u| owner_uids.contains(u)) {
                continue;
            }
            let Some(pod_name) = pod.metadata.name else {
                continue;
            };
            if let Some(node) = pod.spec.and_then(|s| s.node_name) {
                resolved.nodes.insert(node);
            }
            resolved.pods.insert(pod_name);
        }
        // Pods created inside the window and gone since; events are best effort (expired
        // after an hour by default, or unreadable).
        let events = Api::<Event>::namespaced(client.clone(), namespace);
        let mut earlier = BTreeSet::new();
        for owner in &owners {
            let lp = ListParams::default().fields(&format!(
                "involvedObject.kind={},involvedObject.name={},reason=SuccessfulCreate",
                owner.kind, owner.name
            ));
            let Ok(list) = bounded(events.list(&lp)).await else {
                continue;
            };
            for e in list.items {
                let same = e
                    .involved_object
                    .uid
                    .as_deref()
                    .is_none_or(|u| u.is_empty() || u == owner.uid);
                if !same || event_time(&e).is_some_and(|t| t < since) {
                    continue;
                }
                if let Some(pod) = e.message.as_deref().and_then(created_pod)
                    && !resolved.pods.contains(pod)
                    && earlier.len() < MAX_EARLIER
                {
                    earlier.insert(pod.to_owned());
                }
            }
        }
        resolved.pods.extend(earlier);
        // Where the pods ran inside the window (a StatefulSet's pod keeps its name across
        // nodes): one read of the namespace's Scheduled events.
        let lp = ListParams::default().fields("involvedObject.kind=Pod,reason=Scheduled");
        if let Ok(list) = bounded(events.list(&lp)).await {
            let mut by_pod: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for e in list.items {
                if event_time(&e).is_some_and(|t| t < since) {
                    continue;
                }
                let (Some(pod), Some(node)) = (
                    e.involved_object.name.clone(),
                    e.message
                        .as_deref()
                        .and_then(crate::cli::cluster::scheduled_to),
                ) else {
                    continue;
                };
                by_pod.entry(pod).or_default().push(node);
            }
            for pod in &resolved.pods {
                if let Some(nodes) = by_pod.remove(pod) {
                    resolved.nodes.extend(nodes);
                }
            }
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(ns: Option<&str>, target: Target) -> Subject {
        Subject {
            namespace: ns.map(str::to_owned),
            target,
        }
    }

    #[test]
    fn subjects_parse_as_kubectl_names_them() {
        let pod = |n: &str| Target::Pod(n.to_owned());
        let w = |k, n: &str| Target::Workload(k, n.to_owned());
        for (given, want) in [
            ("web-7c9f-abcde", subject(None, pod("web-7c9f-abcde"))),
            ("pod/web-7c9f-abcde", subject(None, pod("web-7c9f-abcde"))),
            ("po/web", subject(None, pod("web"))),
            (
                "deploy/web",
                subject(None, w(WorkloadKind::Deployment, "web")),
            ),
            (
                "Deployment/web",
                subject(None, w(WorkloadKind::Deployment, "web")),
            ),
            (
                "deployments.apps/web",
                subject(None, w(WorkloadKind::Deployment, "web")),
            ),
            ("sts/db", subject(None, w(WorkloadKind::StatefulSet, "db"))),
            (
                "ds/agent",
                subject(None, w(WorkloadKind::DaemonSet, "agent")),
            ),
            (
                "job/migrate",
                subject(None, w(WorkloadKind::Job, "migrate")),
            ),
            (
                "rs/web-7c9f",
                subject(None, w(WorkloadKind::ReplicaSet, "web-7c9f")),
            ),
            ("shop/web", subject(Some("shop"), pod("web"))),
        ] {
            assert_eq!(parse(given), Ok(want), "{given}");
        }
    }

    #[test]
    fn bad_subjects_are_one_clear_line() {
        for (given, needle) in [
            ("svc/web", "svc has no pods"),
            ("cronjob/nightly", "no pods of its own"),
            ("ns/web", "no pods of its own"),
            ("shop/deploy/web", "too many '/'"),
            ("deploy/", "no name"),
            ("", "no name"),
            ("Shop_1/web", "neither a type nor a namespace"),
            ("deploy/Web", "not a Kubernetes name"),
            ("web\n", "not a Kubernetes name"),
        ] {
            let e = parse(given).expect_err(given);
            assert!(e.contains(needle), "{given}: {e}");
            assert_eq!(e.lines().count(), 1, "{given}: {e}");
        }
        assert!(parse("svc/web").unwrap_err().contains("TYPE/NAME"));
    }

    #[test]
    fn the_subject_and_the_flags_agree() {
        assert_eq!(
            choose(Some("shop/web"), None, Some("shop")),
            Ok(Some(subject(Some("shop"), Target::Pod("web".into()))))
        );
        assert!(
            choose(Some("shop/web"), None, Some("other"))
                .unwrap_err()
                .contains("-n says")
        );
        assert!(
            choose(Some("web"), Some("web"), None)
                .unwrap_err()
                .contains("not both")
        );
        assert_eq!(
            choose(None, Some("web"), None),
            Ok(Some(subject(None, Target::Pod("web".into()))))
        );
        assert_eq!(choose(None, None, Some("x")), Ok(None));
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn created_pods_are_read_from_the_controllers_events() {
        use super::resolve::created_pod;
        assert_eq!(
            created_pod("Created pod: web-7c9f-abcde"),
            Some("web-7c9f-abcde")
        );
        assert_eq!(
            created_pod("create Pod db-0 in StatefulSet db successful"),
            Some("db-0")
        );
        assert_eq!(created_pod("Deleted pod: web-7c9f-abcde"), None);
        assert_eq!(created_pod("Created pod: "), None);
    }
}
