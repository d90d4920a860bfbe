//! The AdminNetworkPolicy API's two tiers around NetworkPolicy (policy.networking.k8s.io,
//! v1alpha1), as its reference and conformance cases define them:
//!
//! - AdminNetworkPolicies (cluster-scoped) come first, by ascending `priority` (0 first);
//!   within one, its rules in the order written; the first rule whose peers and ports match
//!   decides: `Allow` and `Deny` are final (NetworkPolicy is not consulted), `Pass` skips the
//!   remaining admin rules and hands the flow to NetworkPolicy. Two policies of one priority
//!   that both match with different actions leave the outcome to the implementation: the
//!   answer is then unknown, never a guess.
//! - NetworkPolicy next: once one selects the pod for the direction, it decides (its default
//!   deny included).
//! - The BaselineAdminNetworkPolicy (the singleton `default`) last, for pods no
//!   NetworkPolicy selects for the direction: first matching rule, `Allow` or `Deny`.
//! - Nothing matched: allowed.
//!
//! A subject is pods by namespace selector, or by namespace and pod selector; host-network
//! pods are never subjects (the snapshot's pod lookup does not find them). Peers are
//! namespaces, pods, `networks` (CIDRs, which match cluster addresses too), and the
//! experimental `nodes` and `domainNames`, which the snapshot cannot resolve: a rule that
//! could match through them makes the answer unknown, naming the rule. A peer or port of a
//! form this reader does not know is taken as the API asks ("fail closed"): it matches
//! nothing in an `Allow` rule and everything in a `Deny` or `Pass` rule.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use serde_json::Value;

use super::{Proto, Snapshot, WorkloadRef, peer::cidr_contains, select};

/// What a rule does with the traffic it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    /// AdminNetworkPolicy only: on to NetworkPolicy.
    Pass,
    /// A value this reader does not know (a newer API).
    Other(String),
}

impl Action {
    fn parse(text: &str) -> Action {
        match text {
            "Allow" => Action::Allow,
            "Deny" => Action::Deny,
            "Pass" => Action::Pass,
            other => Action::Other(other.to_owned()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
            Action::Other(o) => o,
        }
    }
}

/// Pods in namespaces, and of those the ones a pod selector picks.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct NamespacedPod {
    #[serde(default)]
    namespace_selector: LabelSelector,
    #[serde(default)]
    pod_selector: LabelSelector,
}

/// The pods a policy applies to: exactly one of the two is set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
struct Subject {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPod>,
}

/// A rule's peer: exactly one field is set; `unknown` keeps the fields of newer forms.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Peer {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPod>,
    nodes: Option<LabelSelector>,
    networks: Option<Vec<String>>,
    domain_names: Option<Vec<String>>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
struct PortNumber {
    protocol: Option<String>,
    port: i32,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
struct PortRange {
    protocol: Option<String>,
    start: i32,
    end: i32,
}

/// A destination port: exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Port {
    port_number: Option<PortNumber>,
    named_port: Option<String>,
    port_range: Option<PortRange>,
}

/// One ingress (`from`) or egress (`to`) rule.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
struct RawRule {
    #[serde(default)]
    name: String,
    action: String,
    #[serde(default, alias = "to")]
    from: Vec<Peer>,
    ports: Option<Vec<Port>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
struct RawSpec {
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    subject: Subject,
    #[serde(default)]
    ingress: Vec<RawRule>,
    #[serde(default)]
    egress: Vec<RawRule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct RawObject {
    #[serde(default)]
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: RawSpec,
}

/// A rule as read.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Its `name`, or its position ("ingress[2]") when it has none.
    pub name: String,
    pub action: Action,
    peers: Vec<Peer>,
    ports: Option<Vec<Port>>,
}

/// An AdminNetworkPolicy or the BaselineAdminNetworkPolicy, as the evaluator reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct TierPolicy {
    pub name: String,
    /// AdminNetworkPolicy's priority; 0 for the baseline.
    pub priority: i32,
    subject: Subject,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
}

impl TierPolicy {
    /// Reads one object (`metadata` and `spec`, as the API server returns it).
    pub fn from_object(object: &Value) -> Result<TierPolicy, String> {
        let raw = RawObject::deserialize(object).map_err(|e| e.to_string())?;
        let rules = |rules: Vec<RawRule>, direction: &str| {
            rules
                .into_iter()
                .enumerate()
                .map(|(i, r)| Rule {
                    name: if r.name.is_empty() {
                        format!("{direction}[{i}]")
                    } else {
                        r.name
                    },
                    action: Action::parse(&r.action),
                    peers: r.from,
                    ports: r.ports,
                })
                .collect()
        };
        Ok(TierPolicy {
            name: raw.metadata.name.unwrap_or_default(),
            priority: raw.spec.priority,
            subject: raw.spec.subject,
            ingress: rules(raw.spec.ingress, "ingress"),
            egress: rules(raw.spec.egress, "egress"),
        })
    }

    /// Whether this policy applies to `pod`; `None` for a subject of a form not known here.
    fn selects(&self, pod: &WorkloadRef, snapshot: &Snapshot) -> Option<bool> {
        let namespace = || snapshot.namespace_labels(&pod.namespace);
        match (&self.subject.namespaces, &self.subject.pods) {
            (Some(ns), None) => Some(select::matches(ns, &namespace())),
            (None, Some(p)) => Some(
                select::matches(&p.namespace_selector, &namespace())
                    && select::matches(&p.pod_selector, &pod.labels),
            ),
            _ => None,
        }
    }
}

/// Whether something matched: a rule, a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hit {
    Yes,
    No,
    /// It may match; why it cannot be told.
    Maybe(String),
}

/// The far end of a flow as one side sees it, and the flow's destination (named ports).
pub struct Far<'a> {
    pub ip: std::net::IpAddr,
    pub pod: Option<&'a WorkloadRef>,
    pub dst: Option<&'a WorkloadRef>,
    pub port: u16,
    pub proto: Proto,
}

fn peer_hit(peer: &Peer, action: &Action, far: &Far<'_>, snapshot: &Snapshot) -> Hit {
    let yes = |b: bool| if b { Hit::Yes } else { Hit::No };
    let namespace = |pod: &WorkloadRef| snapshot.namespace_labels(&pod.namespace);
    if let Some(sel) = &peer.namespaces {
        return yes(far.pod.is_some_and(|p| select::matches(sel, &namespace(p))));
    }
    if let Some(np) = &peer.pods {
        return yes(far.pod.is_some_and(|p| {
            select::matches(&np.namespace_selector, &namespace(p))
                && select::matches(&np.pod_selector, &p.labels)
        }));
    }
    if let Some(networks) = &peer.networks {
        return yes(networks.iter().any(|c| cidr_contains(c, far.ip)));
    }
    // Nodes and domain names select addresses the snapshot does not hold; a pod's address
    // is neither (host-network pods are not found by address).
    for (field, set) in [
        ("nodes", peer.nodes.is_some()),
        ("domainNames", peer.domain_names.is_some()),
    ] {
        if set {
            return match far.pod {
                Some(_) => Hit::No,
                None => Hit::Maybe(format!(
                    "its `{field}` peer may be {}, which explain does not resolve",
                    far.ip
                )),
            };
        }
    }
    fail_closed(action)
}

/// A peer or port of a form not known here, as the API asks: matches nothing in an Allow
/// rule, everything in a Deny or Pass rule.
fn fail_closed(action: &Action) -> Hit {
    match action {
        Action::Allow => Hit::No,
        _ => Hit::Yes,
    }
}

fn protocol_is(protocol: Option<&String>, proto: Proto) -> bool {
    protocol.map_or("TCP", String::as_str) == proto.as_k8s()
}

fn port_hit(port: &Port, action: &Action, far: &Far<'_>) -> Hit {
    let yes = |b: bool| if b { Hit::Yes } else { Hit::No };
    if let Some(p) = &port.port_number {
        return yes(protocol_is(p.protocol.as_ref(), far.proto) && p.port == i32::from(far.port));
    }
    if let Some(r) = &port.port_range {
        return yes(protocol_is(r.protocol.as_ref(), far.proto)
            && (r.start..=r.end).contains(&i32::from(far.port)));
    }
    if let Some(name) = &port.named_port {
        return yes(far.dst.is_some_and(|d| {
            d.ports
                .iter()
                .any(|(n, p, pr)| n == name && *p == far.port && *pr == far.proto)
        }));
    }
    fail_closed(action)
}

fn rule_hit(rule: &Rule, far: &Far<'_>, snapshot: &Snapshot) -> Hit {
    let ports = match &rule.ports {
        None => Hit::Yes,
        Some(ports) => {
            let hits: Vec<Hit> = ports
                .iter()
                .map(|p| port_hit(p, &rule.action, far))
                .collect();
            if hits.contains(&Hit::Yes) {
                Hit::Yes
            } else {
                Hit::No
            }
        }
    };
    if ports == Hit::No {
        return Hit::No;
    }
    let mut maybe = None;
    for peer in &rule.peers {
        match peer_hit(peer, &rule.action, far, snapshot) {
            Hit::Yes => return Hit::Yes,
            Hit::Maybe(why) => maybe = maybe.or(Some(why)),
            Hit::No => {}
        }
    }
    maybe.map_or(Hit::No, Hit::Maybe)
}

/// A rule that decided, named for the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// "AdminNetworkPolicy deny-x (priority 10) rule \"r\"".
    pub by: String,
    /// "AdminNetworkPolicy/deny-x", for the answer's policy list.
    pub id: String,
    pub action: Action,
}

/// What a tier concluded for one side of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No rule of the tier matched (or no policy of it selects the pod).
    Nothing,
    Decided(Decided),
    /// The tier may decide but the snapshot cannot tell how.
    Unknown(String),
}

/// Which tier a policy belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    fn kind(self) -> &'static str {
        match self {
            Tier::Admin => "AdminNetworkPolicy",
            Tier::Baseline => "BaselineAdminNetworkPolicy",
        }
    }
}

/// One tier for `pod` in one direction (`ingress`: the pod receives): its policies by
/// ascending priority (then name), each one's first matching rule.
pub fn evaluate_tier(
    tier: Tier,
    policies: &[TierPolicy],
    ingress: bool,
    pod: &WorkloadRef,
    far: &Far<'_>,
    snapshot: &Snapshot,
) -> Outcome {
    let mut ordered: Vec<&TierPolicy> = policies.iter().collect();
    ordered.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    let mut at_priority: Vec<Decided> = Vec::new();
    let mut priority = None;
    for policy in ordered {
        if priority != Some(policy.priority) {
            if let Some(first) = at_priority.first() {
                return settle(first, &at_priority, priority);
            }
            priority = Some(policy.priority);
        }
        let name = match tier {
            Tier::Admin => format!(
                "{} {} (priority {})",
                tier.kind(),
                policy.name,
                policy.priority
            ),
            Tier::Baseline => format!("{} {}", tier.kind(), policy.name),
        };
        match policy.selects(pod, snapshot) {
            Some(true) => {}
            Some(false) => continue,
            None => {
                return Outcome::Unknown(format!(
                    "{name} has a subject of a form explain does not know"
                ));
            }
        }
        let rules = if ingress {
            &policy.ingress
        } else {
            &policy.egress
        };
        for rule in rules {
            match rule_hit(rule, far, snapshot) {
                Hit::No => continue,
                Hit::Maybe(why) => {
                    return Outcome::Unknown(format!("{name} rule \"{}\": {why}", rule.name));
                }
                Hit::Yes => {}
            }
            if let Action::Other(a) = &rule.action {
                return Outcome::Unknown(format!(
                    "{name} rule \"{}\" has action {a}, which explain does not know",
                    rule.name
                ));
            }
            at_priority.push(Decided {
                by: format!("{name} rule \"{}\"", rule.name),
                id: format!("{}/{}", tier.kind(), policy.name),
                action: rule.action.clone(),
            });
            break;
        }
    }
    match at_priority.first() {
        Some(first) => settle(first, &at_priority, priority),
        None => Outcome::Nothing,
    }
}

/// The rules that matched at one priority: one action, or an ambiguity the API leaves open.
fn settle(first: &Decided, all: &[Decided], priority: Option<i32>) -> Outcome {
    if all.iter().all(|d| d.action == first.action) {
        return Outcome::Decided(first.clone());
    }
    let each: Vec<String> = all
        .iter()
        .map(|d| format!("{} ({})", d.by, d.action.name()))
        .collect();
    Outcome::Unknown(format!(
        "{} match at priority {}, with different actions, and the API leaves which one applies \
         to the implementation",
        each.join(" and "),
        priority.unwrap_or_default()
    ))
}
