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
//! could match through them makes the answer unknown, naming the rule. So does a peer or port
//! of a form this reader does not know: the API server keeps only fields its CRD defines, so
//! such a field means a newer API than this reader, which the network plugin may implement.
//! Objects are read strictly (a selector with fields other than `matchLabels` and
//! `matchExpressions` or an unknown operator, a protocol other than TCP, UDP and SCTP, an
//! unknown field in a subject, rule or port, an AdminNetworkPolicy without a priority): an
//! older or newer form of v1alpha1 is reported unreadable, never read as something wider.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Deserializer, de::Error as _};
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

/// A label selector, read strictly: `matchLabels` and `matchExpressions` only (the API's
/// earlier v1alpha1 nested selectors under other names, which a lenient read would take for an
/// empty selector: everything), and only the four operators (a CRD does not check them).
#[derive(Clone, Debug, Default, PartialEq)]
struct Selector(LabelSelector);

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, Value>::deserialize(d)?;
        if let Some(k) = map
            .keys()
            .find(|k| !["matchLabels", "matchExpressions"].contains(&k.as_str()))
        {
            return Err(D::Error::custom(format!(
                "a label selector has no field {k:?} (another form of the API?)"
            )));
        }
        let selector: LabelSelector =
            serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
        if let Some(e) = selector
            .match_expressions
            .iter()
            .flatten()
            .find(|e| !["In", "NotIn", "Exists", "DoesNotExist"].contains(&e.operator.as_str()))
        {
            return Err(D::Error::custom(format!(
                "unknown selector operator {:?}",
                e.operator
            )));
        }
        Ok(Selector(selector))
    }
}

impl Selector {
    fn matches(&self, labels: &select::Labels) -> bool {
        select::matches(&self.0, labels)
    }
}

/// Pods in namespaces, and of those the ones a pod selector picks.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespacedPod {
    namespace_selector: Selector,
    pod_selector: Selector,
}

/// The pods a policy applies to: exactly one of the two is set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Subject {
    namespaces: Option<Selector>,
    pods: Option<NamespacedPod>,
}

/// A rule's peer: exactly one field is set; `unknown` keeps the fields of newer forms.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Peer {
    namespaces: Option<Selector>,
    pods: Option<NamespacedPod>,
    nodes: Option<Selector>,
    networks: Option<Vec<String>>,
    domain_names: Option<Vec<String>>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// A protocol as the API spells it (a CRD does not check it).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Whether `protocol` (TCP when not given) is the flow's.
    fn is(protocol: Option<Protocol>, proto: Proto) -> bool {
        matches!(
            (protocol.unwrap_or(Protocol::Tcp), proto),
            (Protocol::Tcp, Proto::Tcp)
                | (Protocol::Udp, Proto::Udp)
                | (Protocol::Sctp, Proto::Sctp)
        )
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct PortNumber {
    protocol: Option<Protocol>,
    port: i32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct PortRange {
    protocol: Option<Protocol>,
    start: i32,
    end: i32,
}

/// A destination port: exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Port {
    port_number: Option<PortNumber>,
    named_port: Option<String>,
    port_range: Option<PortRange>,
}

/// One ingress (`from`) or egress (`to`) rule.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
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
    priority: Option<i32>,
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
    /// Reads one object of `tier` (`metadata` and `spec`, as the API server returns it).
    pub fn from_object(object: &Value, tier: Tier) -> Result<TierPolicy, String> {
        let raw = RawObject::deserialize(object).map_err(|e| e.to_string())?;
        let priority = match (tier, raw.spec.priority) {
            (Tier::Admin, None) => return Err("spec.priority is missing".to_owned()),
            (Tier::Admin, Some(p)) => p,
            (Tier::Baseline, _) => 0,
        };
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
            priority,
            subject: raw.spec.subject,
            ingress: rules(raw.spec.ingress, "ingress"),
            egress: rules(raw.spec.egress, "egress"),
        })
    }

    /// Whether this policy applies to `pod` (whose namespace has `namespace` labels); `None`
    /// for a subject of a form not known here.
    fn selects(&self, pod: &WorkloadRef, namespace: &select::Labels) -> Option<bool> {
        match (&self.subject.namespaces, &self.subject.pods) {
            (Some(ns), None) => Some(ns.matches(namespace)),
            (None, Some(p)) => {
                Some(p.namespace_selector.matches(namespace) && p.pod_selector.matches(&pod.labels))
            }
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
    /// The labels of the far pod's namespace (read once per flow).
    pub namespace: Option<select::Labels>,
    pub dst: Option<&'a WorkloadRef>,
    pub port: u16,
    pub proto: Proto,
}

impl<'a> Far<'a> {
    pub fn new(
        snapshot: &Snapshot,
        ip: std::net::IpAddr,
        pod: Option<&'a WorkloadRef>,
        dst: Option<&'a WorkloadRef>,
        (port, proto): (u16, Proto),
    ) -> Far<'a> {
        Far {
            ip,
            pod,
            namespace: pod.map(|p| snapshot.namespace_labels(&p.namespace)),
            dst,
            port,
            proto,
        }
    }

    /// The far pod, with its namespace's labels.
    fn pod(&self) -> Option<(&WorkloadRef, &select::Labels)> {
        self.pod.zip(self.namespace.as_ref())
    }
}

fn peer_hit(peer: &Peer, far: &Far<'_>) -> Hit {
    let yes = |b: bool| if b { Hit::Yes } else { Hit::No };
    if let Some(sel) = &peer.namespaces {
        return yes(far.pod().is_some_and(|(_, ns)| sel.matches(ns)));
    }
    if let Some(np) = &peer.pods {
        return yes(far.pod().is_some_and(|(p, ns)| {
            np.namespace_selector.matches(ns) && np.pod_selector.matches(&p.labels)
        }));
    }
    if let Some(networks) = &peer.networks {
        return yes(networks.iter().any(|c| cidr_contains(c, far.ip)));
    }
    // Nodes select node addresses the snapshot does not hold; a pod's address is none
    // (host-network pods are not found by address).
    if peer.nodes.is_some() {
        return match far.pod {
            Some(_) => Hit::No,
            None => Hit::Maybe(format!(
                "its `nodes` peer may be {}, which explain does not resolve",
                far.ip
            )),
        };
    }
    // Which addresses a name stands for (in-cluster names included) is the plugin's choice.
    if peer.domain_names.is_some() {
        return Hit::Maybe(format!(
            "its `domainNames` peer may be {}, which explain does not resolve",
            far.ip
        ));
    }
    unknown_form("peer", peer.unknown.keys())
}

/// A peer or port of a form not known here: what it selects cannot be told.
fn unknown_form<'k>(what: &str, fields: impl Iterator<Item = &'k String>) -> Hit {
    let fields: Vec<&str> = fields.map(String::as_str).collect();
    Hit::Maybe(format!(
        "it has a {what} of a form explain does not know ({})",
        if fields.is_empty() {
            "no field set".to_owned()
        } else {
            fields.join(", ")
        }
    ))
}

fn port_hit(port: &Port, far: &Far<'_>) -> Hit {
    let yes = |b: bool| if b { Hit::Yes } else { Hit::No };
    if let Some(p) = &port.port_number {
        return yes(Protocol::is(p.protocol, far.proto) && p.port == i32::from(far.port));
    }
    if let Some(r) = &port.port_range {
        return yes(
            Protocol::is(r.protocol, far.proto) && (r.start..=r.end).contains(&i32::from(far.port))
        );
    }
    if let Some(name) = &port.named_port {
        return yes(far.dst.is_some_and(|d| {
            d.ports
                .iter()
                .any(|(n, p, pr)| n == name && *p == far.port && *pr == far.proto)
        }));
    }
    unknown_form("port", std::iter::empty())
}

/// A match among `hits`: one certain match decides, a "maybe" wins over no match.
fn any(hits: impl Iterator<Item = Hit>) -> Hit {
    let mut maybe = None;
    for hit in hits {
        match hit {
            Hit::Yes => return Hit::Yes,
            Hit::Maybe(why) => maybe = maybe.or(Some(why)),
            Hit::No => {}
        }
    }
    maybe.map_or(Hit::No, Hit::Maybe)
}

/// Whether a rule matches: one of its ports (none listed: every port) and one of its peers.
fn rule_hit(rule: &Rule, far: &Far<'_>) -> Hit {
    let ports = match &rule.ports {
        None => Hit::Yes,
        Some(ports) => any(ports.iter().map(|p| port_hit(p, far))),
    };
    let peers = any(rule.peers.iter().map(|p| peer_hit(p, far)));
    match (ports, peers) {
        (Hit::No, _) | (_, Hit::No) => Hit::No,
        (Hit::Maybe(why), _) | (_, Hit::Maybe(why)) => Hit::Maybe(why),
        (Hit::Yes, Hit::Yes) => Hit::Yes,
    }
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
    if policies.is_empty() {
        return Outcome::Nothing;
    }
    let namespace = snapshot.namespace_labels(&pod.namespace);
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
        match policy.selects(pod, &namespace) {
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
            match rule_hit(rule, far) {
                Hit::No => continue,
                Hit::Maybe(why) => {
                    return Outcome::Unknown(format!("{name} rule {:?}: {why}", rule.name));
                }
                Hit::Yes => {}
            }
            if matches!(
                (&rule.action, tier),
                (Action::Other(_), _) | (Action::Pass, Tier::Baseline)
            ) {
                return Outcome::Unknown(format!(
                    "{name} rule {:?} has action {:?}, which explain does not know for a {}",
                    rule.name,
                    rule.action.name(),
                    tier.kind()
                ));
            }
            at_priority.push(Decided {
                by: format!("{name} rule {:?}", rule.name),
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
