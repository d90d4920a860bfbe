//! The AdminNetworkPolicy tiers, with the upstream conformance suite's cluster (four houses)
//! and its policies (network-policy-api, conformance/base, v1alpha1): integration of the
//! three tiers, priorities, rule order, ports, CIDR peers; then what the snapshot cannot
//! resolve, and ambiguity.

use serde_json::{Value, json};

use super::{
    Flow, Proto, Snapshot, Verdict,
    admin::{Tier, TierPolicy},
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

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec
    })
}

fn anp(name: &str, spec: Value) -> TierPolicy {
    TierPolicy::from_object(&object("AdminNetworkPolicy", name, spec), Tier::Admin)
        .unwrap_or_else(|e| panic!("AdminNetworkPolicy {name}: {e}"))
}

fn banp(spec: Value) -> TierPolicy {
    TierPolicy::from_object(
        &object("BaselineAdminNetworkPolicy", "default", spec),
        Tier::Baseline,
    )
    .unwrap_or_else(|e| panic!("BaselineAdminNetworkPolicy: {e}"))
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

    // A peer of a form not known here (a newer API the plugin may implement): unknown,
    // whatever the action.
    let unknown_peer = |action: &str| {
        json!({"priority": 1, "subject": {"namespaces": houses_selector("gryffindor")},
               "ingress": [{"name": "future", "action": action,
                            "from": [{"someFuturePeer": {"x": 1}}]}]})
    };
    for action in ["Deny", "Allow", "Pass"] {
        c.admin = vec![anp("future", unknown_peer(action))];
        check(
            &c,
            tcp(s, g, 80),
            Verdict::Unknown,
            &["rule \"future\": it has a peer of a form explain does not know (someFuturePeer)"],
        );
    }
    // But a rule whose ports do not match is not that flow's rule.
    let mut p = unknown_peer("Deny");
    p["ingress"][0]["ports"] = json!([{"portNumber": {"port": 443}}]);
    c.admin = vec![anp("future", p)];
    check(&c, tcp(s, g, 80), Verdict::Allowed, &[]);

    // An action not known here, and Pass in the baseline (which has no Pass).
    c.admin = vec![anp("future", {
        let mut p = deny_or_allow("Deny");
        p["ingress"][0]["action"] = "Log".into();
        p
    })];
    check(&c, tcp(s, g, 80), Verdict::Unknown, &["has action \"Log\""]);
    c.admin.clear();
    c.baseline = vec![banp({
        let mut p = deny_or_allow("Pass");
        if let Some(m) = p.as_object_mut() {
            m.remove("priority");
        }
        p
    })];
    check(
        &c,
        tcp(s, g, 80),
        Verdict::Unknown,
        &["has action \"Pass\", which explain does not know for a BaselineAdminNetworkPolicy"],
    );
    c.baseline.clear();

    // Domain names: which addresses they stand for is the plugin's choice, pods included.
    c.admin = vec![anp(
        "names",
        json!({"priority": 1, "subject": {"namespaces": houses_selector("gryffindor")},
               "egress": [{"name": "allow-names", "action": "Allow",
                           "to": [{"domainNames": ["*.example.com"]}]}]}),
    )];
    check(&c, tcp(g, s, 80), Verdict::Unknown, &["`domainNames` peer"]);

    // A subject with neither field.
    c.admin = vec![anp(
        "no-subject",
        json!({"priority": 1, "subject": {}, "ingress": []}),
    )];
    check(&c, tcp(s, g, 80), Verdict::Unknown, &["subject of a form"]);
}

/// Objects are read strictly: an earlier or later form of v1alpha1 is reported unreadable
/// (and the CLI names it, making the verdict unknown), never read as a wider policy.
#[test]
fn other_forms_of_the_api_are_unreadable_not_widened() {
    let read = |spec: Value| {
        TierPolicy::from_object(&object("AdminNetworkPolicy", "x", spec), Tier::Admin)
    };
    let good = json!({"priority": 1, "subject": {"namespaces": {}},
        "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"a": "b"}}}]}]});
    assert!(read(good.clone()).is_ok());
    // v0.1.0's peer: namespaces held a namespaceSelector (read leniently: every namespace).
    let mut old = good.clone();
    old["ingress"][0]["from"][0]["namespaces"] =
        json!({"namespaceSelector": {"matchLabels": {"a": "b"}}});
    let e = read(old).err().unwrap_or_default();
    assert!(e.contains("no field \"namespaceSelector\""), "{e}");
    // v0.1.0's subject and pods peer.
    let mut old = good.clone();
    old["subject"] = json!({"namespaceSelector": {}});
    assert!(read(old).is_err());
    let mut old = good.clone();
    old["ingress"][0]["from"][0] =
        json!({"pods": {"namespaces": {"namespaceSelector": {}}, "podSelector": {}}});
    assert!(read(old).is_err());
    // A selector operator, a protocol, a port field, a missing priority.
    let mut bad = good.clone();
    bad["subject"]["namespaces"] =
        json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]});
    assert!(read(bad).err().unwrap_or_default().contains("operator"));
    let mut bad = good.clone();
    bad["ingress"][0]["ports"] = json!([{"portNumber": {"protocol": "tcp", "port": 80}}]);
    assert!(read(bad).is_err());
    let mut bad = good.clone();
    bad["ingress"][0]["ports"] = json!([{"portSet": [80]}]);
    assert!(read(bad).is_err());
    let mut bad = good;
    if let Some(m) = bad.as_object_mut() {
        m.remove("priority");
    }
    assert_eq!(read(bad).err().as_deref(), Some("spec.priority is missing"));
    // Not an object with a spec at all.
    assert!(TierPolicy::from_object(&json!({"metadata": {"name": "x"}}), Tier::Admin).is_err());
}

/// Selectors by pod and by namespace are told apart, ports default to TCP, a named port on
/// egress is the destination pod's, networks match pod addresses (and IPv6), Pass against
/// Deny at one priority is ambiguous, and one side denied wins over the other unknown.
#[test]
fn pods_namespaces_ports_networks_and_sides() {
    let mut c = houses();
    c.pods.push(pod(
        &ns("gryffindor"),
        "hermione-granger-0",
        "10.2.0.2",
        json!({"conformance-house": "gryffindor", "role": "prefect"}),
        json!([]),
    ));
    c.pods.push(pod(
        &ns("slytherin"),
        "v6",
        "fd00::7",
        json!({"conformance-house": "slytherin"}),
        json!([{"name": "web", "containerPort": 8080}]),
    ));
    let (g, s, hermione) = (ip("gryffindor"), ip("slytherin"), "10.2.0.2");
    c.admin = vec![anp(
        "prefects",
        json!({
            "priority": 5,
            "subject": {"pods": {"namespaceSelector": houses_selector("gryffindor"),
                                 "podSelector": {"matchLabels": {"role": "prefect"}}}},
            "ingress": [{"name": "no-slytherin", "action": "Deny",
                         "from": [{"pods": {"namespaceSelector": {},
                                            "podSelector": houses_selector("slytherin")}}],
                         "ports": [{"portNumber": {"port": 80}}]}],
            "egress": [
                {"name": "no-web", "action": "Deny", "to": [{"namespaces": {}}],
                 "ports": [{"namedPort": "web"}]},
                {"name": "no-house-net", "action": "Deny",
                 "to": [{"networks": ["10.2.3.0/24", "fd00::/64"]}]}
            ]
        }),
    )];
    // Only the prefect is the subject; TCP is the default protocol.
    check(
        &c,
        tcp(s, hermione, 80),
        Verdict::Denied,
        &["rule \"no-slytherin\""],
    );
    check(&c, tcp(s, g, 80), Verdict::Allowed, &[]);
    let udp = Flow {
        proto: Proto::Udp,
        ..tcp(s, hermione, 80)
    };
    check(&c, udp, Verdict::Allowed, &[]);
    // A pods peer selects by the pod's own labels, not its namespace's.
    for p in &mut c.pods {
        if p.metadata.name.as_deref() == Some("draco-malfoy-0") {
            p.metadata.labels = Some([("app".to_owned(), "x".to_owned())].into());
        }
    }
    check(&c, tcp(s, hermione, 80), Verdict::Allowed, &[]);
    // Egress: the named port is the destination pod's (web is 80 on harry, 8080 on v6).
    check(
        &c,
        tcp(hermione, g, 80),
        Verdict::Denied,
        &["rule \"no-web\""],
    );
    check(&c, tcp(hermione, g, 8080), Verdict::Allowed, &[]);
    check(
        &c,
        tcp(hermione, "fd00::7", 8080),
        Verdict::Denied,
        &["rule \"no-web\""],
    );
    // Networks match a pod's address too, and IPv6.
    check(
        &c,
        tcp(hermione, ip("ravenclaw"), 22),
        Verdict::Denied,
        &["no-house-net"],
    );
    check(
        &c,
        tcp(hermione, "fd00::9", 22),
        Verdict::Denied,
        &["no-house-net"],
    );

    // Pass and Deny at one priority: which applies is the implementation's.
    let one = |action: &str| {
        json!({"priority": 3, "subject": {"namespaces": houses_selector("gryffindor")},
               "ingress": [{"name": action, "action": action,
                            "from": [{"namespaces": houses_selector("ravenclaw")}]}],
               "egress": [{"name": "maybe-nodes", "action": "Deny", "to": [{"nodes": {}}]}]})
    };
    c.admin = vec![anp("a", one("Pass")), anp("b", one("Deny"))];
    check(
        &c,
        tcp(ip("ravenclaw"), g, 80),
        Verdict::Unknown,
        &["with different actions"],
    );
    // One side denied and the other undecided: denied. Harry's egress to draco may match a
    // domain name (unknown); draco's ingress from gryffindor is denied.
    c.admin = vec![
        anp(
            "names",
            json!({"priority": 1, "subject": {"namespaces": houses_selector("gryffindor")},
                   "egress": [{"name": "names", "action": "Allow",
                               "to": [{"domainNames": ["*.example.com"]}]}]}),
        ),
        anp(
            "deny-in",
            json!({"priority": 2, "subject": {"namespaces": houses_selector("slytherin")},
                   "ingress": [{"name": "no-gryffindor", "action": "Deny",
                                "from": [{"namespaces": houses_selector("gryffindor")}]}]}),
        ),
    ];
    check(
        &c,
        tcp(g, s, 80),
        Verdict::Denied,
        &["rule \"no-gryffindor\" denies it"],
    );
    // Nodes: a host-network pod's address is a node's, not a pod's.
    c.admin = vec![anp("b", one("Deny"))];
    c.pods.push(pod(
        &ns("ravenclaw"),
        "host-net",
        "192.0.2.50",
        json!({}),
        json!([]),
    ));
    if let Some(p) = c.pods.last_mut()
        && let Some(spec) = p.spec.as_mut()
    {
        spec.host_network = Some(true);
    }
    check(
        &c,
        tcp(g, "192.0.2.50", 80),
        Verdict::Unknown,
        &["`nodes` peer may be 192.0.2.50"],
    );
    check(
        &c,
        tcp(ip("ravenclaw"), g, 80),
        Verdict::Denied,
        &["rule \"Deny\""],
    );
}
