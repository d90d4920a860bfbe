//! The AdminNetworkPolicy tiers, with the upstream conformance suite's cluster (four houses)
//! and its policies (network-policy-api, conformance/base, v1alpha1): integration of the
//! three tiers, priorities, rule order, ports, CIDR peers; then what the snapshot cannot
//! resolve, and ambiguity.

use serde_json::{Value, json};

use super::{
    Flow, Proto, Snapshot, Verdict,
    admin::TierPolicy,
    evaluate,
    fixtures::{namespace, pod, policy},
};

const HOUSES: [(&str, &str, &str); 4] = [
    ("gryffindor", "harry-potter-0", "10.2.0.1"),
    ("slytherin", "draco-malfoy-0", "10.2.1.1"),
    ("hufflepuff", "cedric-diggory-0", "10.2.2.1"),
    ("ravenclaw", "luna-lovegood-0", "10.2.3.1"),
];

fn ns(house: &str) -> String {
    format!("network-policy-conformance-{house}")
}

fn ip(house: &str) -> &'static str {
    HOUSES
        .iter()
        .find(|(h, _, _)| *h == house)
        .map_or("0.0.0.0", |(_, _, ip)| ip)
}

fn houses() -> Snapshot {
    Snapshot {
        namespaces: HOUSES
            .iter()
            .map(|(h, _, _)| namespace(&ns(h), json!({"conformance-house": h})))
            .collect(),
        pods: HOUSES
            .iter()
            .map(|(h, name, ip)| {
                pod(
                    &ns(h),
                    name,
                    ip,
                    json!({"conformance-house": h}),
                    json!([
                        {"name": "web", "containerPort": 80},
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"}
                    ]),
                )
            })
            .collect(),
        ..Snapshot::default()
    }
}

fn tier(kind: &str, name: &str, spec: Value) -> TierPolicy {
    TierPolicy::from_object(&json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec
    }))
    .unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

fn anp(name: &str, spec: Value) -> TierPolicy {
    tier("AdminNetworkPolicy", name, spec)
}

fn banp(spec: Value) -> TierPolicy {
    tier("BaselineAdminNetworkPolicy", "default", spec)
}

fn houses_selector(house: &str) -> Value {
    json!({"matchLabels": {"conformance-house": house}})
}

/// One rule each way between the subject and a house, with `action`.
fn gress(subject: &str, other: &str, action: &str, verb: &str) -> Value {
    json!({
        "subject": {"namespaces": houses_selector(subject)},
        "ingress": [{
            "name": format!("{verb}-all-ingress-from-{other}"),
            "action": action,
            "from": [{"namespaces": houses_selector(other)}]
        }],
        "egress": [{
            "name": format!("{verb}-all-egress-to-{other}"),
            "action": action,
            "to": [{"namespaces": houses_selector(other)}]
        }]
    })
}

/// api_integration/standard-anp-np-banp.yaml: gryffindor allows slytherin both ways.
fn np_allow_slytherin() -> k8s_openapi::api::networking::v1::NetworkPolicy {
    policy(
        &ns("gryffindor"),
        "allow-gress-from-to-slytherin-to-gryffindor",
        json!({
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": houses_selector("slytherin")}]}],
            "egress": [{"to": [{"namespaceSelector": houses_selector("slytherin")}]}]
        }),
    )
}

fn tcp(src: &str, dst: &str, port: u16) -> Flow {
    Flow {
        src: src
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        dst: dst
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        port,
        proto: Proto::Tcp,
    }
}

fn check(snapshot: &Snapshot, flow: Flow, verdict: Verdict, says: &[&str]) {
    let x = evaluate(snapshot, &flow);
    assert_eq!(x.verdict, verdict, "{flow:?}: {}", x.text);
    for s in says {
        assert!(x.text.contains(s), "{flow:?}: {:?} not in {}", s, x.text);
    }
}

#[test]
fn an_admin_deny_wins_over_a_network_policy_allow_pass_hands_on_and_the_baseline_comes_last() {
    let mut c = houses();
    c.policies = vec![np_allow_slytherin()];
    let mut spec = gress("gryffindor", "slytherin", "Deny", "deny");
    spec["priority"] = 10.into();
    c.admin = vec![anp("pass-example", spec)];
    c.baseline = vec![banp(gress("gryffindor", "slytherin", "Deny", "deny"))];
    let (g, s) = (ip("gryffindor"), ip("slytherin"));
    // Deny: at the ingress of gryffindor and the egress from it, whatever NetworkPolicy says.
    let x = evaluate(&c, &tcp(s, g, 80));
    assert_eq!(x.verdict, Verdict::Denied, "{}", x.text);
    assert!(
        x.text.contains(
            "is denied: AdminNetworkPolicy pass-example (priority 10) rule \
             \"deny-all-ingress-from-slytherin\" denies it, before any NetworkPolicy"
        ),
        "{}",
        x.text
    );
    assert_eq!(x.fix, None, "no NetworkPolicy can allow an admin deny");
    assert!(
        x.policies
            .contains(&"AdminNetworkPolicy/pass-example".to_owned())
    );
    check(
        &c,
        tcp(g, s, 80),
        Verdict::Denied,
        &["rule \"deny-all-egress-to-slytherin\" denies it"],
    );

    // Pass: NetworkPolicy selects gryffindor and allows slytherin.
    for rules in ["ingress", "egress"] {
        if let Some(r) = c.admin.first_mut() {
            *r = anp(
                "pass-example",
                json!({
                    "priority": 10,
                    "subject": {"namespaces": houses_selector("gryffindor")},
                    rules: [{
                        "name": "pass",
                        "action": "Pass",
                        if rules == "ingress" { "from" } else { "to" }:
                            [{"namespaces": houses_selector("slytherin")}]
                    }]
                }),
            );
        }
        let flow = if rules == "ingress" {
            tcp(s, g, 80)
        } else {
            tcp(g, s, 80)
        };
        check(
            &c,
            flow,
            Verdict::Allowed,
            &[
                "AdminNetworkPolicy pass-example (priority 10) rule \"pass\" passes it on, \
                 network-policy-conformance-gryffindor/allow-gress-from-to-slytherin-to-gryffindor \
                 allows it",
                "the drop happened elsewhere",
            ],
        );
        // Without the NetworkPolicy, the baseline's deny takes effect, and a NetworkPolicy is
        // the fix.
        let mut without = c.clone();
        without.policies.clear();
        let x = evaluate(&without, &flow);
        assert_eq!(x.verdict, Verdict::Denied, "{}", x.text);
        assert!(
            x.text.contains("BaselineAdminNetworkPolicy default rule")
                && x.text.contains("passes it on")
                && x.text.contains("takes precedence over the baseline"),
            "{}",
            x.text
        );
        assert!(
            x.fix
                .as_deref()
                .is_some_and(|f| f.contains("NetworkPolicy"))
        );
    }
}

#[test]
fn the_lower_priority_number_decides_first() {
    // admin_network_policy/standard-priority-field.yaml.
    let pods_of = |house: &str| {
        json!({"pods": {
            "namespaceSelector": houses_selector(house),
            "podSelector": houses_selector(house)
        }})
    };
    let rules = |action: &str, verb: &str| {
        json!({
            "subject": pods_of("gryffindor"),
            "ingress": [{"name": format!("{verb}-all-ingress-from-slytherin"), "action": action,
                         "from": [pods_of("slytherin")]}],
            "egress": [{"name": format!("{verb}-all-egress-to-slytherin"), "action": action,
                        "to": [pods_of("slytherin")]}]
        })
    };
    let with_priority = |mut spec: Value, priority: i32| {
        if let Some(m) = spec.as_object_mut() {
            m.insert("priority".into(), priority.into());
        }
        spec
    };
    let mut c = houses();
    c.admin = vec![
        anp(
            "priority-50-example",
            with_priority(rules("Deny", "deny"), 50),
        ),
        anp(
            "old-priority-60-new-priority-40-example",
            with_priority(rules("Pass", "pass"), 60),
        ),
    ];
    c.baseline = vec![banp(rules("Allow", "allow"))];
    let (g, s) = (ip("gryffindor"), ip("slytherin"));
    check(
        &c,
        tcp(s, g, 80),
        Verdict::Denied,
        &["priority-50-example (priority 50)"],
    );
    check(
        &c,
        tcp(g, s, 80),
        Verdict::Denied,
        &["priority-50-example (priority 50)"],
    );
    if let Some(p) = c.admin.get_mut(1) {
        *p = anp(
            "old-priority-60-new-priority-40-example",
            with_priority(rules("Pass", "pass"), 40),
        );
    }
    for flow in [tcp(s, g, 80), tcp(g, s, 80)] {
        check(
            &c,
            flow,
            Verdict::Allowed,
            &[
                "(priority 40) rule",
                "passes it on, BaselineAdminNetworkPolicy default rule \"allow-all-",
            ],
        );
    }
}

#[test]
fn within_a_policy_the_first_matching_rule_decides_by_peer_and_port() {
    // admin_network_policy/standard-ingress-tcp-rules.yaml, with NetworkPolicy denying every
    // ingress to gryffindor underneath.
    let from = |house: &str| json!([{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": ns(house)}}}]);
    let port80 = json!([{"portNumber": {"protocol": "TCP", "port": 80}}]);
    let mut c = houses();
    c.policies = vec![policy(
        &ns("gryffindor"),
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )];
    c.admin = vec![anp(
        "ingress-tcp",
        json!({
            "priority": 3,
            "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": ns("gryffindor")}}},
            "ingress": [
                {"name": "allow-from-ravenclaw-everything", "action": "Allow", "from": from("ravenclaw")},
                {"name": "deny-from-ravenclaw-everything", "action": "Deny", "from": from("ravenclaw")},
                {"name": "pass-from-ravenclaw-everything", "action": "Pass", "from": from("ravenclaw")},
                {"name": "deny-from-slytherin-at-port-80", "action": "Deny", "from": from("slytherin"), "ports": port80},
                {"name": "pass-from-slytherin-at-port-80", "action": "Pass", "from": from("slytherin"), "ports": port80},
                {"name": "allow-from-hufflepuff-at-port-80", "action": "Allow", "from": from("hufflepuff"), "ports": port80},
                {"name": "deny-from-hufflepuff-everything-else", "action": "Deny", "from": from("hufflepuff")}
            ]
        }),
    )];
    let g = ip("gryffindor");
    check(
        &c,
        tcp(ip("ravenclaw"), g, 8080),
        Verdict::Allowed,
        &["rule \"allow-from-ravenclaw-everything\" allows it"],
    );
    check(
        &c,
        tcp(ip("slytherin"), g, 80),
        Verdict::Denied,
        &["rule \"deny-from-slytherin-at-port-80\" denies it"],
    );
    // Port 8080 from slytherin matches no admin rule: NetworkPolicy's default deny decides.
    check(
        &c,
        tcp(ip("slytherin"), g, 8080),
        Verdict::Denied,
        &["network-policy-conformance-gryffindor/deny-all selects"],
    );
    check(
        &c,
        tcp(ip("hufflepuff"), g, 80),
        Verdict::Allowed,
        &["rule \"allow-from-hufflepuff-at-port-80\" allows it"],
    );
    check(
        &c,
        tcp(ip("hufflepuff"), g, 81),
        Verdict::Denied,
        &["rule \"deny-from-hufflepuff-everything-else\" denies it"],
    );
    let mut udp = tcp(ip("slytherin"), g, 80);
    udp.proto = Proto::Udp;
    check(&c, udp, Verdict::Denied, &["deny-all selects"]);
}

#[test]
fn ports_by_name_and_range_and_networks_by_cidr() {
    let mut c = houses();
    c.admin = vec![anp(
        "ports",
        json!({
            "priority": 1,
            "subject": {"namespaces": houses_selector("gryffindor")},
            "ingress": [
                {"name": "named", "action": "Deny", "from": [{"namespaces": {}}],
                 "ports": [{"namedPort": "web"}]},
                {"name": "range", "action": "Deny", "from": [{"namespaces": {}}],
                 "ports": [{"portRange": {"protocol": "UDP", "start": 5000, "end": 6000}}]}
            ],
            "egress": [
                {"name": "no-docs-net", "action": "Deny", "to": [{"networks": ["192.0.2.0/24", "bogus"]}]}
            ]
        }),
    )];
    let (g, s) = (ip("gryffindor"), ip("slytherin"));
    check(&c, tcp(s, g, 80), Verdict::Denied, &["rule \"named\""]);
    check(&c, tcp(s, g, 81), Verdict::Allowed, &[]);
    let udp = |port| Flow {
        proto: Proto::Udp,
        ..tcp(s, g, port)
    };
    check(&c, udp(80), Verdict::Allowed, &[]);
    check(&c, udp(5353), Verdict::Denied, &["rule \"range\""]);
    check(&c, udp(6001), Verdict::Allowed, &[]);
    check(
        &c,
        tcp(g, "192.0.2.7", 443),
        Verdict::Denied,
        &[
            "egress from network-policy-conformance-gryffindor/harry-potter-0 to 192.0.2.7 tcp/443 \
           is denied: AdminNetworkPolicy ports (priority 1) rule \"no-docs-net\"",
        ],
    );
    check(&c, tcp(g, "198.51.100.1", 443), Verdict::Allowed, &[]);
}

#[test]
fn a_network_policy_that_selects_the_pod_keeps_the_baseline_out() {
    let mut c = houses();
    c.policies = vec![np_allow_slytherin()];
    c.baseline = vec![banp(gress("gryffindor", "slytherin", "Deny", "deny"))];
    let (g, s) = (ip("gryffindor"), ip("slytherin"));
    // The answer is NetworkPolicy's, worded as before the tiers existed.
    check(
        &c,
        tcp(s, g, 80),
        Verdict::Allowed,
        &["NetworkPolicy allows this flow (network-policy-conformance-gryffindor/"],
    );
    // Another house's pods are not the baseline's subject.
    check(
        &c,
        tcp(s, ip("hufflepuff"), 80),
        Verdict::Allowed,
        &["no NetworkPolicy selects"],
    );
    // A baseline rule that names no tier is worded with it.
    let mut no_np = c.clone();
    no_np.policies.clear();
    check(
        &no_np,
        tcp(s, g, 80),
        Verdict::Denied,
        &[
            "BaselineAdminNetworkPolicy default rule \"deny-all-ingress-from-slytherin\" denies it, \
           as no NetworkPolicy selects network-policy-conformance-gryffindor/harry-potter-0 (Ingress)",
        ],
    );
}

#[test]
fn what_the_snapshot_cannot_resolve_or_the_api_leaves_open_is_unknown() {
    let (g, s) = (ip("gryffindor"), ip("slytherin"));
    let mut c = houses();
    // Nodes: an address that is no pod may be a node's.
    c.admin = vec![anp(
        "nodes",
        json!({"priority": 1, "subject": {"namespaces": houses_selector("gryffindor")},
               "egress": [{"name": "deny-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    )];
    check(
        &c,
        tcp(g, "192.0.2.9", 10250),
        Verdict::Unknown,
        &[
            "egress cannot be decided: AdminNetworkPolicy nodes (priority 1) rule \"deny-nodes\": \
           its `nodes` peer may be 192.0.2.9",
        ],
    );
    // A pod's address is not a node's.
    check(&c, tcp(g, s, 80), Verdict::Allowed, &[]);

    // Two policies of one priority that disagree.
    let deny_or_allow = |action: &str| {
        json!({"priority": 7, "subject": {"namespaces": houses_selector("gryffindor")},
               "ingress": [{"name": action, "action": action,
                            "from": [{"namespaces": houses_selector("slytherin")}]}]})
    };
    c.admin = vec![
        anp("a", deny_or_allow("Allow")),
        anp("b", deny_or_allow("Deny")),
    ];
    check(
        &c,
        tcp(s, g, 80),
        Verdict::Unknown,
        &["match at priority 7, with different actions"],
    );
    // Agreeing ones decide.
    c.admin = vec![
        anp("a", deny_or_allow("Deny")),
        anp("b", deny_or_allow("Deny")),
    ];
    check(
        &c,
        tcp(s, g, 80),
        Verdict::Denied,
        &["AdminNetworkPolicy a (priority 7)"],
    );

    // A peer of a form not known here fails closed: everything in a Deny rule, nothing in an
    // Allow rule.
    let unknown_peer = |action: &str| {
        json!({"priority": 1, "subject": {"namespaces": houses_selector("gryffindor")},
               "ingress": [{"name": "future", "action": action,
                            "from": [{"someFuturePeer": {"x": 1}}]}]})
    };
    c.admin = vec![anp("future", unknown_peer("Deny"))];
    check(&c, tcp(s, g, 80), Verdict::Denied, &["rule \"future\""]);
    c.admin = vec![anp("future", unknown_peer("Allow"))];
    c.policies = vec![policy(
        &ns("gryffindor"),
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )];
    check(&c, tcp(s, g, 80), Verdict::Denied, &["deny-all selects"]);

    // An action not known here.
    c.admin = vec![anp("future", {
        let mut p = unknown_peer("Deny");
        p["ingress"][0]["action"] = "Log".into();
        p
    })];
    check(&c, tcp(s, g, 80), Verdict::Unknown, &["has action Log"]);

    // An object that is not an AdminNetworkPolicy at all is an error, not a policy.
    assert!(TierPolicy::from_object(&json!({"metadata": {"name": "x"}})).is_err());
}
