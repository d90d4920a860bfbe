//! One direction at a time: which policies select the pod for Ingress or Egress, and whether
//! any of their rules allows the flow; then both directions together.

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    Explanation, Flow, Snapshot, Verdict, WorkloadRef, fix,
    peer::{peer_matches, ports_match},
    select,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

/// The directions a policy applies to: `policyTypes`, or Ingress plus Egress when it has
/// egress rules.
fn applies_to(policy: &NetworkPolicy, direction: Direction) -> bool {
    let Some(spec) = &policy.spec else {
        return false;
    };
    match &spec.policy_types {
        Some(types) if !types.is_empty() => types.iter().any(|t| t == direction.name()),
        _ => match direction {
            Direction::Ingress => true,
            Direction::Egress => spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
        },
    }
}

fn policy_id(policy: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or_default(),
        policy.metadata.name.as_deref().unwrap_or_default()
    )
}

/// One direction's result for the pod on that side.
struct Side {
    /// Policies selecting the pod for the direction.
    selecting: Vec<String>,
    allowed: bool,
}

/// Evaluates `direction` for `pod` (the sender for Egress, the receiver for Ingress);
/// `other_ip`/`other` are the far end; `dst` is the destination pod (named ports).
fn side(
    snapshot: &Snapshot,
    direction: Direction,
    pod: &WorkloadRef,
    flow: &Flow,
    other: Option<&WorkloadRef>,
    dst: Option<&WorkloadRef>,
) -> Side {
    let other_ip = match direction {
        Direction::Egress => flow.dst,
        Direction::Ingress => flow.src,
    };
    let mut selecting = Vec::new();
    let mut allowed = false;
    for policy in &snapshot.policies {
        let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
        let Some(spec) = &policy.spec else { continue };
        if namespace != pod.namespace
            || !applies_to(policy, direction)
            || !spec
                .pod_selector
                .as_ref()
                .is_none_or(|s| select::matches(s, &pod.labels))
        {
            continue;
        }
        selecting.push(policy_id(policy));
        let rule_allows = |peers: Option<&Vec<_>>, ports| {
            let peer_ok = match peers {
                None => true,
                Some(p) if p.is_empty() => true,
                Some(p) => p
                    .iter()
                    .any(|peer| peer_matches(peer, namespace, other_ip, other, snapshot)),
            };
            peer_ok && ports_match(ports, flow.port, flow.proto, dst)
        };
        allowed |= match direction {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .any(|r| rule_allows(r.from.as_ref(), r.ports.as_ref())),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .any(|r| rule_allows(r.to.as_ref(), r.ports.as_ref())),
        };
    }
    let allowed = allowed || selecting.is_empty();
    Side { selecting, allowed }
}

fn endpoint(pod: Option<&WorkloadRef>, ip: std::net::IpAddr) -> String {
    pod.map_or_else(|| ip.to_string(), WorkloadRef::id)
}

/// Evaluates a flow against the snapshot.
pub fn evaluate(snapshot: &Snapshot, flow: &Flow) -> Explanation {
    let sender = snapshot.pod_at(flow.src);
    let receiver = snapshot.pod_at(flow.dst);
    let service = format!("{}/{}", flow.proto.lower(), flow.port);
    if sender.is_none() && receiver.is_none() {
        return Explanation {
            verdict: Verdict::Unknown,
            policies: Vec::new(),
            text: format!(
                "neither {} nor {} is a pod the API server knows: NetworkPolicy does not apply \
                 to this flow as far as can be seen",
                flow.src, flow.dst
            ),
            fix: None,
        };
    }
    let egress = sender.as_ref().map(|s| {
        side(
            snapshot,
            Direction::Egress,
            s,
            flow,
            receiver.as_ref(),
            receiver.as_ref(),
        )
    });
    let ingress = receiver.as_ref().map(|r| {
        side(
            snapshot,
            Direction::Ingress,
            r,
            flow,
            sender.as_ref(),
            receiver.as_ref(),
        )
    });
    let mut policies: Vec<String> = egress
        .iter()
        .chain(ingress.iter())
        .flat_map(|s| s.selecting.iter().cloned())
        .collect();
    policies.dedup();
    let from = endpoint(sender.as_ref(), flow.src);
    let to = endpoint(receiver.as_ref(), flow.dst);

    let mut denials = Vec::new();
    let mut fixes = Vec::new();
    if let (Some(s), Some(e)) = (&sender, &egress)
        && !e.allowed
    {
        denials.push(format!(
            "egress from {from} to {to} {service} is denied: {} {} {from} (Egress) and no rule \
             allows {service}",
            e.selecting.join(", "),
            if e.selecting.len() == 1 {
                "selects"
            } else {
                "select"
            },
        ));
        fixes.push(fix::allow_egress(s, receiver.as_ref(), flow));
    }
    if let (Some(r), Some(i)) = (&receiver, &ingress)
        && !i.allowed
    {
        denials.push(format!(
            "ingress to {to} {service} from {from} is denied: {} {} {to} (Ingress) and no rule \
             allows {from}",
            i.selecting.join(", "),
            if i.selecting.len() == 1 {
                "selects"
            } else {
                "select"
            },
        ));
        fixes.push(fix::allow_ingress(r, sender.as_ref(), flow));
    }
    if !denials.is_empty() {
        return Explanation {
            verdict: Verdict::Denied,
            policies,
            text: denials.join("; "),
            fix: Some(fixes.join("---\n")),
        };
    }
    let unknown_end = match (&sender, &receiver) {
        (None, _) => Some(format!("{} maps to no pod the API server knows", flow.src)),
        (_, None) => Some(format!("{} maps to no pod the API server knows", flow.dst)),
        _ => None,
    };
    let text = if policies.is_empty() {
        format!(
            "no NetworkPolicy selects {from} (Egress) or {to} (Ingress): NetworkPolicy allows this flow; the drop happened elsewhere"
        )
    } else {
        format!(
            "NetworkPolicy allows this flow ({} allow it); the drop happened elsewhere",
            policies.join(", ")
        )
    };
    Explanation {
        verdict: Verdict::Allowed,
        policies,
        text: match unknown_end {
            Some(note) => format!("{text} (only one end evaluated: {note})"),
            None => text,
        },
        fix: None,
    }
}
