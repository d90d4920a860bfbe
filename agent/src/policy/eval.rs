//! One direction at a time: which policies select the pod for Ingress or Egress, and whether
//! any of their rules allows the flow; then both directions together.

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    Explanation, Flow, Snapshot, Verdict, WorkloadRef,
    admin::{Action, Decided, Far, Outcome, Tier, evaluate_tier},
    fix,
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
#[derive(Clone)]
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

/// Who decided one side of a flow, through the tiers: AdminNetworkPolicy, NetworkPolicy,
/// BaselineAdminNetworkPolicy, then the default (allowed).
enum By {
    /// An AdminNetworkPolicy's Allow or Deny.
    Admin(Decided),
    /// NetworkPolicy selects the pod for the direction; `passed` is the admin rule that
    /// handed the flow on, if one did.
    NetworkPolicy { passed: Option<Decided> },
    /// The BaselineAdminNetworkPolicy's Allow or Deny.
    Baseline {
        rule: Decided,
        passed: Option<Decided>,
    },
    /// Nothing selects the pod for the direction.
    Default { passed: Option<Decided> },
}

impl By {
    fn passed(&self) -> Option<&Decided> {
        match self {
            By::Admin(_) => None,
            By::NetworkPolicy { passed } | By::Baseline { passed, .. } | By::Default { passed } => {
                passed.as_ref()
            }
        }
    }

    /// Whether a tier beyond NetworkPolicy took part.
    fn admin_tiers(&self) -> bool {
        matches!(self, By::Admin(_) | By::Baseline { .. }) || self.passed().is_some()
    }
}

/// One side through every tier.
struct Decision {
    np: Side,
    by: Result<By, String>,
    allowed: bool,
}

fn decide(
    snapshot: &Snapshot,
    direction: Direction,
    pod: &WorkloadRef,
    flow: &Flow,
    other: Option<&WorkloadRef>,
    dst: Option<&WorkloadRef>,
) -> Decision {
    let np = side(snapshot, direction, pod, flow, other, dst);
    let far = Far::new(
        snapshot,
        match direction {
            Direction::Egress => flow.dst,
            Direction::Ingress => flow.src,
        },
        other,
        dst,
        (flow.port, flow.proto),
    );
    let ingress = direction == Direction::Ingress;
    let unknown = |why: String| Decision {
        np: np.clone(),
        by: Err(why),
        allowed: false,
    };
    let passed = match evaluate_tier(Tier::Admin, &snapshot.admin, ingress, pod, &far, snapshot) {
        Outcome::Unknown(why) => return unknown(why),
        Outcome::Decided(d) if d.action != Action::Pass => {
            let allowed = d.action == Action::Allow;
            return Decision {
                np,
                by: Ok(By::Admin(d)),
                allowed,
            };
        }
        Outcome::Decided(pass) => Some(pass),
        Outcome::Nothing => None,
    };
    if !np.selecting.is_empty() {
        let allowed = np.allowed;
        return Decision {
            np,
            by: Ok(By::NetworkPolicy { passed }),
            allowed,
        };
    }
    match evaluate_tier(
        Tier::Baseline,
        &snapshot.baseline,
        ingress,
        pod,
        &far,
        snapshot,
    ) {
        Outcome::Unknown(why) => unknown(why),
        Outcome::Decided(rule) => {
            let allowed = rule.action == Action::Allow;
            Decision {
                np,
                by: Ok(By::Baseline { rule, passed }),
                allowed,
            }
        }
        Outcome::Nothing => Decision {
            np,
            by: Ok(By::Default { passed }),
            allowed: true,
        },
    }
}

/// " (AdminNetworkPolicy x (priority 5) rule \"r\" passes it on)", when one did.
fn passed_note(by: &By) -> String {
    by.passed()
        .map(|p| format!(" ({} passes it to NetworkPolicy)", p.by))
        .unwrap_or_default()
}

/// A side's denial: the sentence and, where a NetworkPolicy can allow it, that policy.
/// `flow_words` is "egress from a to b tcp/80"; `pod` the side's pod; `allows` what no
/// NetworkPolicy rule allows (the service for egress, the sender for ingress).
fn denial(
    decision: &Decision,
    direction: Direction,
    flow_words: &str,
    pod: &str,
    allows: &str,
    fix: impl FnOnce() -> String,
) -> (String, Option<String>) {
    let d = direction.name();
    match &decision.by {
        Ok(By::Admin(rule)) => (
            format!(
                "{flow_words} is denied: {} denies it, before any NetworkPolicy (no \
                 NetworkPolicy can allow it; the cluster's administrators own that policy)",
                rule.by
            ),
            None,
        ),
        Ok(By::Baseline { rule, passed }) => (
            format!(
                "{flow_words} is denied: {} denies it{} no NetworkPolicy selects {pod} ({d}); a \
                 NetworkPolicy that selects {pod} for {d} and allows it takes precedence over \
                 the baseline (and {pod}'s {d} traffic is then limited to what \
                 NetworkPolicies allow)",
                rule.by,
                match passed {
                    Some(p) => format!(": {} passes it on and", p.by),
                    None => ", as".to_owned(),
                },
            ),
            Some(fix()),
        ),
        Ok(by) => (
            format!(
                "{flow_words} is denied: {} {} {pod} ({d}) and no rule allows {}{}",
                decision.np.selecting.join(", "),
                if decision.np.selecting.len() == 1 {
                    "selects"
                } else {
                    "select"
                },
                allows,
                passed_note(by),
            ),
            Some(fix()),
        ),
        Err(_) => (String::new(), None),
    }
}

/// What allowed one side, for an answer where a tier beyond NetworkPolicy took part.
fn allowed_by(d: &Decision) -> String {
    match &d.by {
        Ok(By::Admin(rule)) => format!("{} allows it", rule.by),
        Ok(By::Baseline { rule, passed }) => format!(
            "{}{} allows it",
            passed
                .as_ref()
                .map(|p| format!("{} passes it on, ", p.by))
                .unwrap_or_default(),
            rule.by
        ),
        Ok(By::NetworkPolicy { passed }) => format!(
            "{}{} allow{} it",
            passed
                .as_ref()
                .map(|p| format!("{} passes it on, ", p.by))
                .unwrap_or_default(),
            d.np.selecting.join(", "),
            if d.np.selecting.len() == 1 { "s" } else { "" }
        ),
        Ok(By::Default { passed }) => format!(
            "{}no NetworkPolicy selects it and no baseline rule matches",
            passed
                .as_ref()
                .map(|p| format!("{} passes it on, ", p.by))
                .unwrap_or_default(),
        ),
        Err(why) => why.clone(),
    }
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
        decide(
            snapshot,
            Direction::Egress,
            s,
            flow,
            receiver.as_ref(),
            receiver.as_ref(),
        )
    });
    let ingress = receiver.as_ref().map(|r| {
        decide(
            snapshot,
            Direction::Ingress,
            r,
            flow,
            sender.as_ref(),
            receiver.as_ref(),
        )
    });
    let mut policies: Vec<String> = Vec::new();
    for d in egress.iter().chain(ingress.iter()) {
        let admin = match &d.by {
            Ok(By::Admin(rule) | By::Baseline { rule, .. }) => Some(rule),
            _ => None,
        };
        for id in
            d.by.as_ref()
                .ok()
                .and_then(By::passed)
                .into_iter()
                .chain(admin)
                .map(|r| r.id.clone())
                .chain(d.np.selecting.iter().cloned())
        {
            if !policies.contains(&id) {
                policies.push(id);
            }
        }
    }
    let from = endpoint(sender.as_ref(), flow.src);
    let to = endpoint(receiver.as_ref(), flow.dst);

    let undecided: Vec<String> = [("egress", &egress), ("ingress", &ingress)]
        .into_iter()
        .filter_map(|(d, x)| match x.as_ref().map(|x| &x.by) {
            Some(Err(why)) => Some(format!("{d} cannot be decided: {why}")),
            _ => None,
        })
        .collect();
    let mut denials = Vec::new();
    let mut fixes = Vec::new();
    if let (Some(s), Some(e)) = (&sender, &egress)
        && e.by.is_ok()
        && !e.allowed
    {
        let (text, fix) = denial(
            e,
            Direction::Egress,
            &format!("egress from {from} to {to} {service}"),
            &from,
            &service,
            || fix::allow_egress(s, receiver.as_ref(), flow),
        );
        denials.push(text);
        fixes.extend(fix);
    }
    if let (Some(r), Some(i)) = (&receiver, &ingress)
        && i.by.is_ok()
        && !i.allowed
    {
        let (text, fix) = denial(
            i,
            Direction::Ingress,
            &format!("ingress to {to} {service} from {from}"),
            &to,
            &from,
            || fix::allow_ingress(r, sender.as_ref(), flow),
        );
        denials.push(text);
        fixes.extend(fix);
    }
    if !denials.is_empty() {
        return Explanation {
            verdict: Verdict::Denied,
            policies,
            text: denials.join("; "),
            fix: (!fixes.is_empty()).then(|| fixes.join("---\n")),
        };
    }
    if !undecided.is_empty() {
        return Explanation {
            verdict: Verdict::Unknown,
            policies,
            text: undecided.join("; "),
            fix: None,
        };
    }
    let unknown_end = match (&sender, &receiver) {
        (None, _) => Some(format!("{} maps to no pod the API server knows", flow.src)),
        (_, None) => Some(format!("{} maps to no pod the API server knows", flow.dst)),
        _ => None,
    };
    let tiers = [&egress, &ingress]
        .into_iter()
        .flatten()
        .any(|d| d.by.as_ref().is_ok_and(By::admin_tiers));
    let text = if tiers {
        let sides: Vec<String> = [("egress", &egress), ("ingress", &ingress)]
            .into_iter()
            .filter_map(|(d, x)| Some((d, x.as_ref()?)))
            .map(|(d, x)| format!("{d}: {}", allowed_by(x)))
            .collect();
        format!(
            "policy allows this flow ({}); the drop happened elsewhere",
            sides.join("; ")
        )
    } else if policies.is_empty() {
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
