//! NetworkPolicy evaluation: does the cluster's policy allow a flow, and if not, which policy
//! denies it. Pure: the input is a snapshot of NetworkPolicies, Namespaces and Pods (the CLI
//! reads them with the user's kubeconfig), the output a verdict with the policies involved and
//! a sentence for the on-call engineer.
//!
//! Semantics (networking.k8s.io/v1):
//! - a policy selects pods of its own namespace by `podSelector` (empty: all) for the
//!   directions in `policyTypes`; without `policyTypes`, Ingress always and Egress when the
//!   policy has egress rules;
//! - a pod no policy selects for a direction is unrestricted in that direction; once selected,
//!   only what some rule of some selecting policy allows passes (allows add up; there is no
//!   deny rule);
//! - a rule allows a peer (`from`/`to`; absent or empty: every peer) on a port (`ports`;
//!   absent or empty: every port); a peer is an `ipBlock` (CIDR minus `except`), or pods by
//!   `podSelector` in the policy's namespace, or by `namespaceSelector` (and `podSelector`
//!   within those namespaces when both are in one peer);
//! - ports have a protocol (default TCP), a number with an optional `endPort`, or a name
//!   looked up among the destination pod's container ports;
//! - a flow between two pods must be allowed by the sender's egress and the receiver's
//!   ingress.
//!
//! Around NetworkPolicy, the AdminNetworkPolicy API's tiers (admin.rs): AdminNetworkPolicies
//! before it, the BaselineAdminNetworkPolicy after it for pods no NetworkPolicy selects.

pub mod admin;
mod eval;
pub mod fix;
mod peer;
mod select;

#[cfg(test)]
mod admin_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde::Serialize;

pub use eval::evaluate;

/// What the evaluator reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub policies: Vec<NetworkPolicy>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    /// AdminNetworkPolicies (policy.networking.k8s.io/v1alpha1), evaluated before
    /// NetworkPolicy.
    pub admin: Vec<admin::TierPolicy>,
    /// The BaselineAdminNetworkPolicy (one, `default`), evaluated for pods no NetworkPolicy
    /// selects.
    pub baseline: Vec<admin::TierPolicy>,
    /// Policy kinds beyond NetworkPolicy that this cluster has objects of and the evaluator
    /// does not evaluate (`CiliumNetworkPolicy (cilium.io)`, ...), or why that could not be
    /// found out: each can allow or deny a flow NetworkPolicy decided.
    pub unevaluated: Vec<String>,
}

/// Policy kinds that decide traffic besides NetworkPolicy, by API group: the upstream
/// AdminNetworkPolicy API (tiers before and after NetworkPolicy; AdminNetworkPolicy and
/// BaselineAdminNetworkPolicy are read and evaluated, [`EVALUATED_KINDS`]), Cilium's,
/// Calico's (CRDs and its API server) and Antrea's.
pub const OTHER_POLICY_KINDS: &[(&str, &[&str])] = &[
    (
        "policy.networking.k8s.io",
        &[
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
            "ClusterNetworkPolicy",
        ],
    ),
    (
        "cilium.io",
        &["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"],
    ),
    (
        "crd.projectcalico.org",
        &[
            "NetworkPolicy",
            "GlobalNetworkPolicy",
            "StagedNetworkPolicy",
            "StagedGlobalNetworkPolicy",
        ],
    ),
    (
        "projectcalico.org",
        &[
            "NetworkPolicy",
            "GlobalNetworkPolicy",
            "StagedNetworkPolicy",
            "StagedGlobalNetworkPolicy",
        ],
    ),
    ("crd.antrea.io", &["NetworkPolicy", "ClusterNetworkPolicy"]),
];

/// The kinds of [`OTHER_POLICY_KINDS`] the evaluator reads and evaluates, at the version it
/// reads: (group, version, kind).
pub const EVALUATED_KINDS: &[(&str, &str, &str)] = &[
    ("policy.networking.k8s.io", "v1alpha1", "AdminNetworkPolicy"),
    (
        "policy.networking.k8s.io",
        "v1alpha1",
        "BaselineAdminNetworkPolicy",
    ),
];

/// A transport protocol as NetworkPolicy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn as_k8s(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
    fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// A flow to evaluate: `src` sends to `dst` on `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

/// What the evaluator concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A selecting policy exists and no rule allows the flow.
    Denied,
    /// Every policy that applies allows it (or none applies): the drop is not NetworkPolicy.
    Allowed,
    /// The snapshot cannot say (the ends are no pods we know, or nothing could be read).
    Unknown,
}

/// The answer for one flow, as the JSON contract shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    /// "namespace/name" of the policies that select either end for the direction concerned.
    pub policies: Vec<String>,
    pub text: String,
    /// For a denial: a NetworkPolicy (YAML) that would allow exactly this flow, to review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Explanation {
    /// The verdict of the kinds evaluated, qualified by the policy kinds the cluster also has
    /// and the evaluator does not evaluate (`snapshot.unevaluated`): they can allow what the
    /// evaluated ones deny or deny what they allow, so the verdict becomes unknown and says
    /// what the evaluated kinds alone decided and which kinds are left. Unchanged when there
    /// are none.
    #[must_use]
    pub fn qualified(mut self, snapshot: &Snapshot) -> Explanation {
        let unevaluated = &snapshot.unevaluated;
        if unevaluated.is_empty() {
            return self;
        }
        let by = if snapshot.admin.is_empty() && snapshot.baseline.is_empty() {
            "by NetworkPolicy alone"
        } else {
            "by AdminNetworkPolicy, NetworkPolicy and BaselineAdminNetworkPolicy"
        };
        let alone = match self.verdict {
            Verdict::Denied => format!("{by}, denied: "),
            Verdict::Allowed => format!("{by}, allowed: "),
            Verdict::Unknown => String::new(),
        };
        self.text = format!(
            "{alone}{}; this cluster also has {}, which explain does not evaluate: they can \
             allow or deny this flow whatever the evaluated policies say",
            self.text,
            unevaluated.join(", ")
        );
        self.verdict = Verdict::Unknown;
        self
    }

    /// No snapshot: say why rather than guess.
    pub fn unavailable(why: &str) -> Explanation {
        Explanation {
            verdict: Verdict::Unknown,
            policies: Vec::new(),
            text: format!("NetworkPolicy explanation unavailable: {why}"),
            fix: None,
        }
    }
}

/// A pod as the evaluator needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
    pub labels: select::Labels,
    /// Named container ports: (name, number, protocol).
    pub ports: Vec<(String, u16, Proto)>,
}

impl WorkloadRef {
    fn of(pod: &Pod) -> WorkloadRef {
        let meta = &pod.metadata;
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                    "UDP" => Proto::Udp,
                    "SCTP" => Proto::Sctp,
                    _ => Proto::Tcp,
                };
                Some((
                    p.name.clone()?,
                    u16::try_from(p.container_port).ok()?,
                    proto,
                ))
            })
            .collect();
        WorkloadRef {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            ports,
        }
    }

    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Snapshot {
    /// The running pod that has `ip` (hostNetwork pods share the node's IP: never them).
    pub fn pod_at(&self, ip: IpAddr) -> Option<WorkloadRef> {
        self.pods
            .iter()
            .filter(|p| {
                let spec_host = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false);
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !spec_host && !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .find(|p| {
                let status = p.status.as_ref();
                let listed = status
                    .and_then(|s| s.pod_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|i| i.ip.parse::<IpAddr>().ok() == Some(ip));
                listed
                    || status
                        .and_then(|s| s.pod_ip.as_deref())
                        .and_then(|i| i.parse::<IpAddr>().ok())
                        == Some(ip)
            })
            .map(WorkloadRef::of)
    }

    /// A namespace's labels. One the snapshot lacks still has the label the API server puts
    /// on every namespace (`kubernetes.io/metadata.name`).
    fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels
            .entry("kubernetes.io/metadata.name".to_owned())
            .or_insert_with(|| name.to_owned());
        labels
    }
}
