//! Table-driven cases from the Kubernetes NetworkPolicy documentation and its edge cases.

use serde_json::{Value, json};

use super::{Explanation, Flow, Proto, Snapshot, Verdict, evaluate, fixtures::*};

/// One case: policies (namespace, name, spec), a flow, the expected verdict and the policies
/// the answer must name.
struct Case {
    name: &'static str,
    policies: Vec<(&'static str, &'static str, Value)>,
    src: &'static str,
    dst: &'static str,
    port: u16,
    proto: Proto,
    verdict: Verdict,
    named: &'static [&'static str],
}

fn case(
    name: &'static str,
    policies: Vec<(&'static str, &'static str, Value)>,
    (src, dst, port, proto): (&'static str, &'static str, u16, Proto),
    verdict: Verdict,
    named: &'static [&'static str],
) -> Case {
    Case {
        name,
        policies,
        src,
        dst,
        port,
        proto,
        verdict,
        named,
    }
}

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;
// Pod addresses of the fixture cluster.
const WEB: &str = "10.0.0.1";
const API: &str = "10.0.0.2";
const DB: &str = "10.0.1.1";
const CACHE: &str = "10.0.1.2";
const DNS: &str = "10.0.2.1";
const BATCH: &str = "10.0.3.1";
const CLIENT: &str = "172.17.0.5";
const FRONTEND: &str = "10.9.0.3";
const REDIS: &str = "172.17.0.10";
const WORKER: &str = "10.9.1.4";
const V6: &str = "fd00::5";

/// The documentation's test-network-policy.
fn doc_policy() -> (&'static str, &'static str, Value) {
    (
        "default",
        "test-network-policy",
        json!({
            "podSelector": {"matchLabels": {"role": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                    {"podSelector": {"matchLabels": {"role": "frontend"}}}
                ],
                "ports": [{"protocol": "TCP", "port": 6379}]
            }],
            "egress": [{
                "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                "ports": [{"protocol": "TCP", "port": 5978}]
            }]
        }),
    )
}

fn deny_ingress(ns: &'static str) -> (&'static str, &'static str, Value) {
    (
        ns,
        "default-deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )
}

fn deny_egress(ns: &'static str) -> (&'static str, &'static str, Value) {
    (
        ns,
        "default-deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )
}

fn allow_db_from(from: Value) -> (&'static str, &'static str, Value) {
    (
        "data",
        "db-ingress",
        json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": from}]}),
    )
}

fn cases() -> Vec<Case> {
    use Verdict::{Allowed, Denied, Unknown};
    vec![
        case(
            "no policy at all",
            vec![],
            (WEB, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "doc: client in the ipBlock",
            vec![doc_policy()],
            (CLIENT, REDIS, 6379, TCP),
            Allowed,
            &["default/test-network-policy"],
        ),
        case(
            "doc: address in except",
            vec![doc_policy()],
            ("172.17.1.5", REDIS, 6379, TCP),
            Denied,
            &["default/test-network-policy"],
        ),
        case(
            "doc: podSelector frontend",
            vec![doc_policy()],
            (FRONTEND, REDIS, 6379, TCP),
            Allowed,
            &[],
        ),
        case(
            "doc: namespaceSelector myproject",
            vec![doc_policy()],
            (WORKER, REDIS, 6379, TCP),
            Allowed,
            &[],
        ),
        case(
            "doc: wrong port",
            vec![doc_policy()],
            (FRONTEND, REDIS, 6380, TCP),
            Denied,
            &["default/test-network-policy"],
        ),
        case(
            "doc: wrong protocol",
            vec![doc_policy()],
            (FRONTEND, REDIS, 6379, UDP),
            Denied,
            &[],
        ),
        case(
            "doc: egress to the ipBlock port",
            vec![doc_policy()],
            (REDIS, "10.0.0.5", 5978, TCP),
            Allowed,
            &[],
        ),
        case(
            "doc: egress to another port",
            vec![doc_policy()],
            (REDIS, "10.0.0.5", 5979, TCP),
            Denied,
            &[],
        ),
        case(
            "doc: egress outside the ipBlock",
            vec![doc_policy()],
            (REDIS, "10.1.0.5", 5978, TCP),
            Denied,
            &[],
        ),
        case(
            "doc: other pods unaffected",
            vec![doc_policy()],
            (CLIENT, FRONTEND, 80, TCP),
            Allowed,
            &[],
        ),
        case(
            "default deny ingress",
            vec![deny_ingress("data")],
            (WEB, DB, 5432, TCP),
            Denied,
            &["data/default-deny-ingress"],
        ),
        case(
            "default deny ingress leaves egress alone",
            vec![deny_ingress("data")],
            (DB, WEB, 80, TCP),
            Allowed,
            &[],
        ),
        case(
            "default deny egress",
            vec![deny_egress("jobs")],
            (BATCH, DNS, 53, UDP),
            Denied,
            &["jobs/default-deny-egress"],
        ),
        case(
            "default deny egress leaves ingress alone",
            vec![deny_egress("jobs")],
            (WEB, BATCH, 80, TCP),
            Allowed,
            &[],
        ),
        case(
            "default deny all",
            vec![(
                "data",
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            (DB, CACHE, 6379, TCP),
            Denied,
            &["data/deny-all"],
        ),
        case(
            "allow all ingress",
            vec![
                deny_ingress("data"),
                (
                    "data",
                    "allow-all",
                    json!({"podSelector": {}, "ingress": [{}]}),
                ),
            ],
            (WEB, DB, 5432, TCP),
            Allowed,
            &["data/default-deny-ingress", "data/allow-all"],
        ),
        case(
            "allow all egress",
            vec![
                deny_egress("jobs"),
                (
                    "jobs",
                    "allow-all-egress",
                    json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}),
                ),
            ],
            (BATCH, DNS, 53, UDP),
            Allowed,
            &[],
        ),
        case(
            "namespaceSelector allows the namespace",
            vec![allow_db_from(
                json!([{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]),
            )],
            (API, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "namespaceSelector denies another namespace",
            vec![allow_db_from(
                json!([{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]),
            )],
            (BATCH, DB, 5432, TCP),
            Denied,
            &["data/db-ingress"],
        ),
        case(
            "podSelector alone means the policy's namespace",
            vec![allow_db_from(
                json!([{"podSelector": {"matchLabels": {"app": "web"}}}]),
            )],
            (WEB, DB, 5432, TCP),
            Denied,
            &["data/db-ingress"],
        ),
        case(
            "podSelector alone allows its own namespace",
            vec![allow_db_from(
                json!([{"podSelector": {"matchLabels": {"app": "cache"}}}]),
            )],
            (CACHE, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "both selectors in one peer: AND, match",
            vec![allow_db_from(
                json!([{"namespaceSelector": {"matchLabels": {"team": "shop"}}, "podSelector": {"matchLabels": {"app": "web"}}}]),
            )],
            (WEB, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "both selectors in one peer: AND, other pod",
            vec![allow_db_from(
                json!([{"namespaceSelector": {"matchLabels": {"team": "shop"}}, "podSelector": {"matchLabels": {"app": "web"}}}]),
            )],
            (API, DB, 5432, TCP),
            Denied,
            &[],
        ),
        case(
            "two peers: OR",
            vec![allow_db_from(
                json!([{"namespaceSelector": {"matchLabels": {"team": "shop"}}}, {"podSelector": {"matchLabels": {"app": "web"}}}]),
            )],
            (API, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "empty namespaceSelector: every namespace",
            vec![allow_db_from(json!([{"namespaceSelector": {}}]))],
            (BATCH, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "namespace by its metadata.name label",
            vec![allow_db_from(
                json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "jobs"}}}]),
            )],
            (BATCH, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "matchExpressions In",
            vec![allow_db_from(
                json!([{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}}]),
            )],
            (API, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "matchExpressions In, not in the list",
            vec![allow_db_from(
                json!([{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}}]),
            )],
            (BATCH, DB, 5432, TCP),
            Denied,
            &[],
        ),
        case(
            "matchExpressions NotIn",
            vec![allow_db_from(
                json!([{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}}]),
            )],
            (API, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "matchExpressions NotIn excludes",
            vec![allow_db_from(
                json!([{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}}]),
            )],
            (WEB, DB, 5432, TCP),
            Denied,
            &[],
        ),
        case(
            "matchExpressions Exists",
            vec![allow_db_from(
                json!([{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}]),
            )],
            (WEB, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "matchExpressions DoesNotExist",
            vec![allow_db_from(
                json!([{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}]),
            )],
            (WEB, DB, 5432, TCP),
            Denied,
            &[],
        ),
        case(
            "namespace matchExpressions",
            vec![allow_db_from(
                json!([{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}}]),
            )],
            (CACHE, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "no policyTypes: Ingress is implied even with only egress rules",
            vec![(
                "data",
                "egress-only",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "egress": [{}]}),
            )],
            (WEB, DB, 5432, TCP),
            Denied,
            &["data/egress-only"],
        ),
        case(
            "no policyTypes and no egress rules: egress stays open",
            vec![(
                "data",
                "ingress-only",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]}),
            )],
            (DB, WEB, 80, TCP),
            Allowed,
            &[],
        ),
        case(
            "policyTypes Egress only: ingress stays open",
            vec![(
                "data",
                "egress-typed",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"]}),
            )],
            (WEB, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "endPort range includes",
            vec![(
                "data",
                "range",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 32000, "endPort": 32768}]}]}),
            )],
            (WEB, DB, 32500, TCP),
            Allowed,
            &[],
        ),
        case(
            "endPort range excludes",
            vec![(
                "data",
                "range",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 32000, "endPort": 32768}]}]}),
            )],
            (WEB, DB, 32769, TCP),
            Denied,
            &[],
        ),
        case(
            "named port resolves on the destination",
            vec![(
                "data",
                "named",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": "pg"}]}]}),
            )],
            (WEB, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "named port the destination lacks",
            vec![(
                "data",
                "named",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": "http"}]}]}),
            )],
            (WEB, DB, 8080, TCP),
            Denied,
            &[],
        ),
        case(
            "named egress port with its protocol",
            vec![
                deny_egress("jobs"),
                (
                    "jobs",
                    "dns",
                    json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}),
                ),
            ],
            (BATCH, DNS, 53, UDP),
            Allowed,
            &[],
        ),
        case(
            "allows add up across policies",
            vec![
                deny_ingress("data"),
                allow_db_from(json!([{"namespaceSelector": {"matchLabels": {"team": "shop"}}}])),
            ],
            (WEB, DB, 5432, TCP),
            Allowed,
            &["data/default-deny-ingress", "data/db-ingress"],
        ),
        case(
            "a policy in another namespace selects nothing here",
            vec![(
                "shop",
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            (BATCH, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "egress allowed, ingress denied",
            vec![
                (
                    "shop",
                    "web-egress",
                    json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}]}]}),
                ),
                deny_ingress("data"),
            ],
            (WEB, DB, 5432, TCP),
            Denied,
            &["shop/web-egress", "data/default-deny-ingress"],
        ),
        case(
            "both directions denied",
            vec![deny_egress("shop"), deny_ingress("data")],
            (WEB, DB, 5432, TCP),
            Denied,
            &["shop/default-deny-egress", "data/default-deny-ingress"],
        ),
        case(
            "IPv6 ipBlock",
            vec![allow_db_from(json!([{"ipBlock": {"cidr": "fd00::/64"}}]))],
            (V6, DB, 5432, TCP),
            Allowed,
            &[],
        ),
        case(
            "IPv6 ipBlock elsewhere",
            vec![allow_db_from(json!([{"ipBlock": {"cidr": "fd01::/64"}}]))],
            (V6, DB, 5432, TCP),
            Denied,
            &[],
        ),
        case(
            "malformed CIDR matches nothing",
            vec![allow_db_from(json!([{"ipBlock": {"cidr": "10.0.0.0/99"}}]))],
            (WEB, DB, 5432, TCP),
            Denied,
            &[],
        ),
        case(
            "egress to an external address by ipBlock",
            vec![(
                "jobs",
                "to-api",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}),
            )],
            (BATCH, "192.0.2.10", 443, TCP),
            Allowed,
            &[],
        ),
        case(
            "selectors never match an external address",
            vec![(
                "jobs",
                "to-pods",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}]}]}),
            )],
            (BATCH, "192.0.2.10", 443, TCP),
            Denied,
            &[],
        ),
        case(
            "two addresses that are no pods",
            vec![deny_ingress("data")],
            ("192.0.2.1", "192.0.2.2", 80, TCP),
            Unknown,
            &[],
        ),
    ]
}

#[test]
fn every_case() {
    let all = cases();
    assert!(all.len() >= 40, "{} cases", all.len());
    let mut failures = Vec::new();
    for c in &all {
        let mut snapshot = cluster();
        snapshot.policies = c
            .policies
            .iter()
            .map(|(ns, name, spec)| policy(ns, name, spec.clone()))
            .collect();
        let flow = Flow {
            src: c.src.parse().unwrap(),
            dst: c.dst.parse().unwrap(),
            port: c.port,
            proto: c.proto,
        };
        let e = evaluate(&snapshot, &flow);
        if e.verdict != c.verdict {
            failures.push(format!(
                "{}: {:?}, expected {:?}: {}",
                c.name, e.verdict, c.verdict, e.text
            ));
        }
        for p in c.named {
            if !e.policies.iter().any(|q| q == p) {
                failures.push(format!("{}: {p} not named in {:?}", c.name, e.policies));
            }
        }
        if e.verdict == Verdict::Denied && e.fix.is_none() {
            failures.push(format!("{}: a denial comes with a fix", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn texts_say_who_denies_what() {
    let mut snapshot = cluster();
    snapshot.policies = vec![policy(
        "jobs",
        "default-deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )];
    let e = evaluate(
        &snapshot,
        &Flow {
            src: BATCH.parse().unwrap(),
            dst: DNS.parse().unwrap(),
            port: 53,
            proto: UDP,
        },
    );
    assert_eq!(
        e.text,
        "egress from jobs/batch to kube-system/coredns udp/53 is denied: jobs/default-deny-egress \
         selects jobs/batch (Egress) and no rule allows udp/53"
    );
    // The fix is the reviewed allow-DNS policy, valid YAML for a NetworkPolicy.
    let fix = e.fix.unwrap();
    let parsed: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_saphyr::from_str(&fix).unwrap();
    let rule = &parsed.spec.unwrap().egress.unwrap()[0];
    assert_eq!(
        rule.ports.as_ref().unwrap().len(),
        2,
        "UDP and TCP 53: {fix}"
    );
    assert!(
        fix.contains("kube-dns") && fix.contains("kind: NetworkPolicy"),
        "{fix}"
    );

    snapshot.policies = vec![policy(
        "data",
        "db-ingress",
        json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cache"}}}]}]}),
    )];
    let e = evaluate(
        &snapshot,
        &Flow {
            src: WEB.parse().unwrap(),
            dst: DB.parse().unwrap(),
            port: 5432,
            proto: TCP,
        },
    );
    assert_eq!(
        e.text,
        "ingress to data/db tcp/5432 from shop/web is denied: data/db-ingress selects data/db \
         (Ingress) and no rule allows shop/web"
    );
    let fix = e.fix.unwrap();
    assert!(
        fix.contains("namespace: data") && fix.contains("5432"),
        "{fix}"
    );
}

#[test]
fn allowed_flows_say_the_drop_is_elsewhere_and_unknown_ends_are_named() {
    let e = evaluate(
        &cluster(),
        &Flow {
            src: WEB.parse().unwrap(),
            dst: "192.0.2.7".parse().unwrap(),
            port: 443,
            proto: TCP,
        },
    );
    assert_eq!(e.verdict, Verdict::Allowed);
    assert!(e.text.contains("the drop happened elsewhere"), "{}", e.text);
    assert!(e.text.contains("192.0.2.7 maps to no pod"), "{}", e.text);
}

#[test]
fn host_network_and_finished_pods_are_not_found_by_ip() {
    let mut snapshot = cluster();
    let mut host = pod(
        "kube-system",
        "node-agent",
        "10.0.9.9",
        json!({}),
        json!([]),
    );
    if let Some(spec) = host.spec.as_mut() {
        spec.host_network = Some(true);
    }
    let mut done = pod("jobs", "done", "10.0.9.8", json!({}), json!([]));
    if let Some(status) = done.status.as_mut() {
        status.phase = Some("Succeeded".into());
    }
    snapshot.pods.extend([host, done]);
    assert!(snapshot.pod_at("10.0.9.9".parse().unwrap()).is_none());
    assert!(snapshot.pod_at("10.0.9.8".parse().unwrap()).is_none());
    assert!(snapshot.pod_at(WEB.parse().unwrap()).is_some());
}

/// Policy kinds the evaluator does not evaluate turn any verdict into "unknown", saying what
/// NetworkPolicy alone decided and which kinds are left; none leaves it as it was.
#[test]
fn other_policy_kinds_make_the_verdict_unknown_and_are_named() {
    let denied = Explanation {
        verdict: Verdict::Denied,
        policies: vec!["data/pg-ingress".into()],
        text: "ingress to data/pg tcp/5432 from shop/web is denied".into(),
        fix: Some("kind: NetworkPolicy".into()),
    };
    let with = |kinds: &[&str]| Snapshot {
        unevaluated: kinds.iter().map(|k| (*k).to_owned()).collect(),
        ..Snapshot::default()
    };
    assert_eq!(denied.clone().qualified(&with(&[])), denied);
    let q = denied.qualified(&with(&["CiliumNetworkPolicy (cilium.io) objects"]));
    assert_eq!(q.verdict, Verdict::Unknown);
    assert!(
        q.text
            .starts_with("by NetworkPolicy alone, denied: ingress to data/pg")
            && q.text.contains("CiliumNetworkPolicy (cilium.io) objects")
            && q.text.contains("which explain does not evaluate"),
        "{}",
        q.text
    );
    assert_eq!(
        q.policies,
        ["data/pg-ingress"],
        "what NetworkPolicy said stays"
    );
    let allowed = Explanation {
        verdict: Verdict::Allowed,
        policies: Vec::new(),
        text: "no NetworkPolicy selects either end".into(),
        fix: None,
    };
    let q = allowed
        .clone()
        .qualified(&with(&["CiliumNetworkPolicy (cilium.io) objects"]));
    assert_eq!(q.verdict, Verdict::Unknown);
    assert!(
        q.text.starts_with("by NetworkPolicy alone, allowed: "),
        "{}",
        q.text
    );
    // With the admin tiers read, the answer says they were part of the verdict.
    let mut tiers = with(&["CiliumNetworkPolicy (cilium.io) objects"]);
    tiers.baseline = vec![
        super::admin::TierPolicy::from_object(
            &serde_json::json!({
                "metadata": {"name": "default"},
                "spec": {"subject": {"namespaces": {}}}
            }),
            super::admin::Tier::Baseline,
        )
        .unwrap_or_else(|e| panic!("{e}")),
    ];
    let q = allowed.qualified(&tiers);
    assert!(
        q.text.starts_with(
            "by AdminNetworkPolicy, NetworkPolicy and BaselineAdminNetworkPolicy, allowed: "
        ),
        "{}",
        q.text
    );
}
