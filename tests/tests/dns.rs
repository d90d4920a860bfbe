//! Privileged end to end: DNS. A real resolver (dnsmasq, behind a Service VIP translated in the
//! node's namespace like kube-proxy does) answers pods whose processes resolve names with
//! glibc's getaddrinfo through a kubelet-style resolv.conf (search path, ndots:5). Failures are
//! real: names that do not exist, an upstream that fails or is slow, a NetworkPolicy drop rule.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios panic with context; helpers shared by tests are not #[test] fns"
)]

use std::time::Duration;

use serde_json::Value;
use triage_agent_tests::{
    agent::{AgentProcess, DRAIN_WAIT, Drains, records},
    fixture::NodeFixture,
    simnode::{CgroupDriver, SimNode},
};

const WAIT: Duration = Duration::from_secs(25);
const VIP: &str = "10.96.0.10";
/// The DNS task's drains (one a second) that the tracker's timeout (`--dns-timeout`, 5 s by
/// default) spans.
const DNS_TIMEOUT_DRAINS: u64 = 5;

/// The cluster DNS: dnsmasq authoritative for cluster.local and test., forwarding
/// servfail.test and slow.test to an upstream pod that answers SERVFAIL, or NOERROR after
/// 1.5 s. Returns the DNS pod's index.
fn cluster_dns(node: &mut SimNode) -> usize {
    let upstream = node.add_pod("kube-system", "upstream").unwrap();
    node.start_process(upstream, &["dns-upstream", "5353", "2", "0"])
        .unwrap();
    node.start_process(upstream, &["dns-upstream", "5354", "0", "1500"])
        .unwrap();
    let up = node.pod(upstream).ip;
    let db = format!("--host-record=db.shop.svc.cluster.local,{}", node.node_ip());
    let api = format!("--host-record=api.example.test,{}", node.node_ip());
    let servfail = format!("--server=/servfail.test/{up}#5353");
    let slow = format!("--server=/slow.test/{up}#5354");
    node.add_dns_server(
        "coredns",
        VIP,
        &[
            "--local=/cluster.local/",
            "--local=/test/",
            // Every other name: NXDOMAIN, as CoreDNS's upstream would answer for names that
            // do not exist (the simulated node has no uplink).
            "--local=/#/",
            &db,
            &api,
            &servfail,
            &slow,
        ],
    )
    .unwrap()
}

fn network_policy(
    namespace: &str,
    name: &str,
    spec: Value,
) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec
    }))
    .expect("a NetworkPolicy")
}

fn dns_records<'a>(v: &'a Value, outcome: &str) -> Vec<&'a Value> {
    records(v, "dns", "outbound")
        .into_iter()
        .filter(|r| r["outcome"] == outcome)
        .collect()
}

fn resolve(node: &SimNode, pod: usize, name: &str, times: &str) -> String {
    let out = node.run(pod, &["resolve", name, times, "50"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lookups(v: &Value) -> Option<&Value> {
    v["dns_lookups"].as_array().and_then(|a| a.first())
}

#[test]
fn lookups_are_matched_to_answers_and_each_failure_is_one_finding() {
    let fixture = NodeFixture::new()
        // The upstream's ports too, so the DNS server's own forwarded lookups are seen.
        .agent_flags(["--dns-ports", "53,5353,5354"]);
    let (mut node, []) = fixture.node().unwrap();
    cluster_dns(&mut node);
    let mut pods = Vec::new();
    for (name, options) in [
        ("ok", ""),
        ("nx", ""),
        ("search", ""),
        ("servfail", ""),
        ("slow", ""),
        ("tcp", "use-vc"),
    ] {
        let pod = node.add_pod("shop", name).unwrap();
        node.set_cluster_dns(pod, VIP, options).unwrap();
        pods.push(pod);
    }
    let mut agent = fixture.agent(&node).unwrap();

    // Success: "db" is found on the first search domain; nothing to report, only counted.
    let out = resolve(&node, pods[0], "db", "5");
    assert_eq!(out.matches("ok").count(), 5, "{out}");
    // A name that does not exist: NXDOMAIN for it and each of its search expansions.
    assert!(resolve(&node, pods[1], "nosuch", "1").contains("fail"));
    // A name outside the cluster walks the search path before it is found.
    assert!(resolve(&node, pods[2], "api.example.test", "2").contains("ok"));
    // The upstream fails: SERVFAIL (absolute name: no search path).
    assert!(resolve(&node, pods[3], "x.servfail.test.", "1").contains("fail"));
    // The upstream is slow: 1.5 s per answer.
    resolve(&node, pods[4], "x.slow.test.", "1");
    // Over TCP (options use-vc).
    assert!(resolve(&node, pods[5], "nosuch-tcp.test.", "1").contains("fail"));

    let v = agent
        .query_until("shop", "ok", WAIT, |v| {
            lookups(v).is_some_and(|l| l["lookups"].as_u64() >= Some(10))
        })
        .unwrap();
    assert!(
        records(&v, "dns", "outbound").is_empty(),
        "success is not evidence: {v}"
    );
    let l = lookups(&v).unwrap();
    assert_eq!(l["succeeded"], l["lookups"], "{l}");
    assert_eq!(l["pod"]["name"], "ok");

    let v = agent
        .query_until("shop", "nx", WAIT, |v| {
            !dns_records(v, "nxdomain").is_empty()
        })
        .unwrap();
    let nx = dns_records(&v, "nxdomain");
    assert_eq!(
        nx.len(),
        1,
        "one finding for the name, not one per expansion: {v}"
    );
    assert_eq!(nx[0]["query"], "nosuch");
    assert_eq!(nx[0]["rcode"], "NXDOMAIN");
    assert_eq!(nx[0]["server"], format!("{VIP}:53"));
    assert_eq!(nx[0]["attribution"], "cgroup");
    assert_eq!(nx[0]["container"], "app");
    assert!(nx[0]["search_nxdomains"].as_u64() >= Some(3), "{v}");
    assert_eq!(records(&v, "dns", "outbound").len(), 1, "{v}");

    let v = agent
        .query_until("shop", "search", WAIT, |v| {
            dns_records(v, "search_expansion")
                .first()
                .is_some_and(|r| r["count"] == 2)
        })
        .unwrap();
    let s = dns_records(&v, "search_expansion");
    assert_eq!(s.len(), 1, "{v}");
    assert_eq!(s[0]["query"], "api.example.test");
    assert!(s[0]["search_nxdomains"].as_u64() >= Some(3), "{v}");
    assert!(dns_records(&v, "nxdomain").is_empty(), "{v}");
    let diagnosis = v["diagnosis"].to_string();
    assert!(diagnosis.contains("trailing dot"), "{diagnosis}");

    let v = agent
        .query_until("shop", "servfail", WAIT, |v| {
            !dns_records(v, "servfail").is_empty()
        })
        .unwrap();
    let f = dns_records(&v, "servfail")[0];
    assert_eq!(
        (f["query"].as_str(), f["rcode"].as_str()),
        (Some("x.servfail.test"), Some("SERVFAIL"))
    );
    // getaddrinfo asks A and AAAA: one record each.
    let mut qtypes: Vec<&str> = dns_records(&v, "servfail")
        .iter()
        .filter_map(|r| r["qtype"].as_str())
        .collect();
    qtypes.sort_unstable();
    assert!(qtypes == ["A"] || qtypes == ["A", "AAAA"], "{v}");

    let v = agent
        .query_until("shop", "slow", WAIT, |v| !dns_records(v, "slow").is_empty())
        .unwrap();
    let f = dns_records(&v, "slow")[0];
    assert!(f["latency_ms"].as_u64() >= Some(1400), "{f}");
    assert_eq!(f["rcode"], "NOERROR");

    let v = agent
        .query_until("shop", "tcp", WAIT, |v| {
            !dns_records(v, "nxdomain").is_empty()
        })
        .unwrap();
    let f = dns_records(&v, "nxdomain")[0];
    assert_eq!(f["protocol"], "tcp", "{f}");
    assert_eq!(f["query"], "nosuch-tcp.test");

    // The DNS server's own forwarded lookups are its evidence.
    let v = agent
        .query_until("kube-system", "coredns", WAIT, |v| {
            !dns_records(v, "servfail").is_empty()
        })
        .unwrap();
    assert!(
        dns_records(&v, "servfail")[0]["server"]
            .as_str()
            .unwrap()
            .ends_with(":5353")
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn a_lookup_whose_queries_are_dropped_times_out_and_names_the_drop_and_the_policy() {
    let fixture = NodeFixture::new();
    let (mut node, []) = fixture.node().unwrap();
    cluster_dns(&mut node);
    let batch = node.add_pod("jobs", "batch").unwrap();
    node.set_cluster_dns(batch, VIP, "timeout:2 attempts:1")
        .unwrap();
    let batch_ip = node.pod(batch).ip;
    node.api.apply_network_policy(network_policy(
        "jobs",
        "default-deny-egress",
        serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    ));
    // The CNI enforces it where the pod's traffic enters the node.
    node.nft_node(&format!(
        "table ip sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip saddr {batch_ip} drop\n }}\n}}\n"
    ))
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    assert!(resolve(&node, batch, "db.shop.svc.cluster.local.", "1").contains("fail"));
    let v = agent
        .query_until("jobs", "batch", WAIT, |v| {
            !dns_records(v, "timeout").is_empty()
                && !records(v, "packet_drop", "outbound").is_empty()
        })
        .unwrap();
    let t = dns_records(&v, "timeout")[0];
    assert_eq!(t["query"], "db.shop.svc.cluster.local");
    assert_eq!(t["reached_server"], false, "{t}");
    assert!(t["rcode"].is_null());
    assert!(t["latency_ms"].as_u64() >= Some(5000), "{t}");
    let d = records(&v, "packet_drop", "outbound")[0];
    assert_eq!(d["reason"], "NETFILTER_DROP");
    let diagnosis = v["diagnosis"].to_string();
    assert!(
        diagnosis.contains("The queries were dropped by the kernel (NETFILTER_DROP"),
        "{diagnosis}"
    );
    // With the cluster's policies: the drop is the default-deny policy.
    let kubeconfig = node.kubeconfig();
    let out = agent
        .cli(&[
            "query",
            "--pod",
            "batch",
            "-n",
            "jobs",
            "-o",
            "json",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ])
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = records(&v, "packet_drop", "outbound")[0];
    assert_eq!(d["explanation"]["verdict"], "denied", "{v}");
    assert!(
        d["explanation"]["text"]
            .as_str()
            .unwrap()
            .contains("jobs/default-deny-egress")
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn a_query_flood_keeps_the_inflight_table_bounded_and_accounts_for_every_query() {
    const QUERIES: u64 = 10_000;
    const PER_POD: u64 = 1000;
    let fixture = NodeFixture::new()
        .driver(CgroupDriver::Systemd)
        .pod("load", "flood")
        .agent_flags([
            "--dns-inflight-per-pod",
            &PER_POD.to_string(),
            "--dns-timeout",
            "2s",
        ]);
    let (mut node, [flood]) = fixture.node().unwrap();
    node.set_cluster_dns(flood, VIP, "").unwrap();
    let ip = node.pod(flood).ip;
    // Nobody answers: every query stays in flight until evicted or timed out.
    node.nft_node(&format!(
        "table ip sim_blackhole {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip saddr {ip} drop\n }}\n}}\n"
    ))
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    let out = node
        .run(
            flood,
            &[
                "dns-flood",
                &format!("{VIP}:53"),
                &QUERIES.to_string(),
                "flood.test",
            ],
        )
        .unwrap();
    let sent: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("sent ")
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(sent, QUERIES);
    let loss = |v: &Value, name: &str| v["agents"][0]["loss"][name].as_u64().unwrap_or(0);
    let accounted = |v: &Value| {
        let timeouts: u64 = dns_records(v, "timeout")
            .iter()
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum();
        (
            timeouts,
            loss(v, "dns_inflight_evicted")
                + loss(v, "dns_ring_full")
                + loss(v, "pipeline_full")
                + loss(v, "dns_malformed"),
        )
    };
    let v = agent
        .query_until("load", "flood", WAIT, |v| {
            let (timeouts, lost) = accounted(v);
            timeouts + lost >= QUERIES
        })
        .unwrap();
    let (timeouts, lost) = accounted(&v);
    assert!(
        timeouts <= PER_POD,
        "the table holds {PER_POD} per pod: {timeouts} timeouts"
    );
    assert!(timeouts > 0, "{v}");
    assert!(lost >= QUERIES - PER_POD, "{v}");
    // Every query is a timeout or a counted loss; other tests' DNS traffic can only add.
    assert!(timeouts + lost >= QUERIES);
    let status = agent.status().unwrap();
    assert!(
        status.to_string().contains("dns_inflight_evicted"),
        "{status}"
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn a_repeated_failure_is_counted_in_the_kernel_exactly_after_its_first_reports() {
    const WINDOW: u64 = 32;
    let fixture = NodeFixture::new();
    let (mut node, []) = fixture.node().unwrap();
    cluster_dns(&mut node);
    let pod = node.add_pod("shop", "flood").unwrap();
    node.set_cluster_dns(pod, VIP, "").unwrap();
    let mut agent = fixture.agent(&node).unwrap();
    let parsed0 = metric(&agent, "triage_agent_dns_packets_parsed_total");

    // One socket asking a name that does not exist, 32 queries in flight, for 3 s: tens of
    // thousands of NXDOMAINs.
    let name = "missing.shop.svc.cluster.local";
    let out = node
        .run(
            pod,
            &[
                "dns-load",
                &format!("{VIP}:53"),
                "3",
                name,
                &WINDOW.to_string(),
            ],
        )
        .unwrap();
    let answered: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(answered > 10_000, "{answered} answers");
    let nx_count = |v: &Value| -> u64 {
        dns_records(v, "nxdomain")
            .iter()
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let failed = |v: &Value| lookups(v).and_then(|l| l["failed"].as_u64()).unwrap_or(0);
    let v = agent
        .query_until("shop", "flood", WAIT, |v| {
            nx_count(v) >= answered && failed(v) >= answered
        })
        .unwrap();
    // Every answer the client read is one NXDOMAIN lookup; those still in flight when it
    // stopped reading may have been answered too (at most the window).
    let n = nx_count(&v);
    assert!(
        n <= answered + WINDOW,
        "{n} NXDOMAINs for {answered} answers: {v}"
    );
    for r in dns_records(&v, "nxdomain") {
        assert_eq!(r["query"], name, "{r}");
        assert_eq!(r["search_nxdomains"].as_u64().unwrap_or(0), 0, "{r}");
    }
    assert!(failed(&v) <= answered + WINDOW, "{v}");
    // Most were counted in the kernel, not copied up one by one (two packets each).
    let parsed = metric(&agent, "triage_agent_dns_packets_parsed_total") - parsed0;
    println!("{answered} answers read, {n} NXDOMAINs reported, {parsed} DNS packets parsed");
    assert!(
        parsed < answered / 4,
        "{parsed} DNS packets parsed for {answered} NXDOMAINs"
    );
    let status = agent.status().unwrap();
    for point in [
        "dns_ring_full",
        "dns_repeats_lost",
        "pipeline_full",
        "dns_inflight_evicted",
    ] {
        assert_eq!(
            status["loss"][point].as_u64().unwrap_or(0),
            0,
            "{point}: {status}"
        );
    }
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

/// A counter's value from the agent's /metrics (0 when absent).
fn metric(agent: &AgentProcess, name: &str) -> u64 {
    let (_, body) = agent.http_get("/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn good_lookups_are_matched_in_the_kernel_and_only_failures_reach_the_agent() {
    const GOOD: u64 = 150;
    let fixture = NodeFixture::new();
    let (mut node, []) = fixture.node().unwrap();
    cluster_dns(&mut node);
    let pod = node.add_pod("shop", "busy").unwrap();
    node.set_cluster_dns(pod, VIP, "").unwrap();
    let mut agent = fixture.agent(&node).unwrap();
    let parsed0 = metric(&agent, "triage_agent_dns_packets_parsed_total");

    // "db" is found on the first search domain: an A and an AAAA lookup per getaddrinfo, each
    // answered NOERROR at once.
    let out = node
        .run(pod, &["resolve", "db", &GOOD.to_string(), "1"])
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.matches("ok").count() as u64, GOOD, "{out}");
    let v = agent
        .query_until("shop", "busy", WAIT, |v| {
            lookups(v).is_some_and(|l| l["lookups"].as_u64() >= Some(2 * GOOD))
        })
        .unwrap();
    let l = lookups(&v).unwrap();
    assert_eq!(l["lookups"].as_u64(), Some(2 * GOOD), "{l}");
    assert_eq!(l["succeeded"].as_u64(), Some(2 * GOOD), "{l}");
    assert!(records(&v, "dns", "outbound").is_empty(), "{v}");
    // /metrics is a snapshot at most a second old: read until it has caught up with the query.
    let deadline = std::time::Instant::now() + WAIT;
    let in_kernel = loop {
        let n = metric(&agent, "triage_agent_dns_lookups_matched_in_kernel_total");
        if n >= 2 * GOOD || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let parsed = metric(&agent, "triage_agent_dns_packets_parsed_total") - parsed0;
    assert!(in_kernel >= 2 * GOOD, "matched in the kernel: {in_kernel}");
    // Each lookup is four packets (query and answer, at the client and at the server): none
    // of the good ones is parsed here.
    assert!(
        parsed < 8,
        "{parsed} DNS packets parsed for {GOOD} good lookups"
    );

    // A failure goes up with its query, and the pod's counters say both.
    assert!(resolve(&node, pod, "nosuch.test.", "1").contains("fail"));
    let v = agent
        .query_until("shop", "busy", WAIT, |v| {
            !dns_records(v, "nxdomain").is_empty()
        })
        .unwrap();
    assert_eq!(
        dns_records(&v, "nxdomain")[0]["query"],
        "nosuch.test",
        "{v}"
    );
    let parsed = metric(&agent, "triage_agent_dns_packets_parsed_total") - parsed0;
    assert!(
        parsed >= 2,
        "the failed lookups' queries and answers: {parsed}"
    );
    let v = agent
        .query_until("shop", "busy", WAIT, |v| {
            lookups(v).is_some_and(|l| l["failed"].as_u64() >= Some(1))
        })
        .unwrap();
    let l = lookups(&v).unwrap();
    assert_eq!(l["succeeded"].as_u64(), Some(2 * GOOD), "{l}");

    // A DNS server on this node that receives queries and never answers: the kernel notes on
    // the held query that it arrived, and the timeout says so.
    let mute = node.add_pod("kube-system", "mute").unwrap();
    node.start_process(mute, &["dns-upstream", "53", "0", "600000"])
        .unwrap();
    let server_ip = node.pod(mute).ip.to_string();
    let patient = node.add_pod("shop", "patient").unwrap();
    node.set_cluster_dns(patient, &server_ip, "timeout:1 attempts:1")
        .unwrap();
    assert!(resolve(&node, patient, "x.test.", "1").contains("fail"));
    let v = agent
        .query_until("shop", "patient", WAIT, |v| {
            !dns_records(v, "timeout").is_empty()
        })
        .unwrap();
    let t = dns_records(&v, "timeout")[0];
    assert_eq!(t["query"], "x.test", "{t}");
    assert_eq!(t["reached_server"], true, "{t}");
    assert_eq!(t["server"], format!("{server_ip}:53"), "{t}");
    let diagnosis = v["diagnosis"].to_string();
    assert!(
        diagnosis.contains("reached the DNS server on this node but no answer"),
        "{diagnosis}"
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

/// A resolver's resend of a query the agent has taken over from the kernel (unanswered past
/// the handover age) must reach the agent: held in the kernel again, the resend would be
/// matched there while the agent waited for the first send's answer and reported a timeout
/// for a lookup that succeeded. The first query is dropped once by a rule; glibc resends it
/// (same socket, same id) after its 2 s timeout, and that one is answered.
#[test]
fn a_resend_after_the_agent_took_its_query_over_is_matched_by_the_agent() {
    let fixture = NodeFixture::new();
    let (mut node, []) = fixture.node().unwrap();
    cluster_dns(&mut node);
    let pod = node.add_pod("shop", "retry").unwrap();
    node.set_cluster_dns(pod, VIP, "timeout:2 attempts:2 single-request")
        .unwrap();
    let ip = node.pod(pod).ip;
    // The pod's first DNS query is dropped (it is within the limit's burst); later ones exceed
    // the limit and pass.
    node.nft_node(&format!(
        "table ip sim_drop_first {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip saddr {ip} udp dport 53 limit rate 1/hour burst 1 packets drop\n }}\n}}\n"
    ))
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    let before = agent.drains(Drains::DnsTables).unwrap();
    let out = resolve(&node, pod, "db", "1");
    assert_eq!(out.matches("ok").count(), 1, "{out}");
    // The answered resend reaches the tracker: the lookup is slow (about 2 s from its first
    // send), never a timeout, and the pod's counters say it succeeded.
    let v = agent
        .query_until("shop", "retry", WAIT, |v| {
            !dns_records(v, "slow").is_empty()
                && lookups(v).is_some_and(|l| l["lookups"].as_u64() >= Some(2))
        })
        .unwrap();
    let slow = dns_records(&v, "slow");
    assert_eq!(slow.len(), 1, "{v}");
    assert_eq!(slow[0]["query"], "db.shop.svc.cluster.local", "{v}");
    let latency = slow[0]["latency_ms"].as_f64().unwrap();
    assert!((1900.0..4000.0).contains(&latency), "{v}");
    // Past the tracker's timeout for the first send, which went after `before` was read: the
    // drains its timeout spans, one for the drain that was under way then, one for the
    // tracker's tick (250 ms) that would decide the timeout, and two for a timeout decided
    // then to reach the store (the drain that hands the pod's counters on, and one more).
    // Still no timeout.
    agent
        .wait_drains_past(
            Drains::DnsTables,
            before,
            DNS_TIMEOUT_DRAINS + 4,
            DRAIN_WAIT,
        )
        .unwrap();
    let v = agent.query("shop", "retry").unwrap();
    assert!(dns_records(&v, "timeout").is_empty(), "{v}");
    let l = lookups(&v).unwrap();
    assert_eq!(l["succeeded"], l["lookups"], "{l}");
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

/// With kubelet's cgroup root known, the DNS programs hang on the pods' cgroup (`kubepods`),
/// not on the cgroup2 root: a node daemon's lookups run no program (none of its packets is
/// parsed, with the server on the node too), while a pod's still are, and Status says where
/// the programs hang.
#[test]
fn the_dns_programs_hang_on_the_pods_cgroup_and_node_daemons_pay_nothing() {
    const PORT: &str = "5399";
    let fixture = NodeFixture::new()
        .kubelet_cgroup_root()
        .agent_flags(["--dns-ports", PORT]);
    let (mut node, []) = fixture.node().unwrap();
    let pod = node.add_pod("shop", "client").unwrap();
    let mut agent = fixture.agent(&node).unwrap();
    let status = agent.status().unwrap();
    let kubepods = format!("/{}/kubepods", node.cgroup_base().display());
    let probes = status["probes"].as_array().expect("probes");
    for name in ["dns_egress", "dns_ingress"] {
        let hook = probes
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["hook"].as_str())
            .unwrap_or_default();
        assert!(
            hook.starts_with("cgroup_skb/") && hook.ends_with(&kubepods),
            "{name} hangs on {hook:?}, not on {kubepods}"
        );
    }

    // A server and a client in the node's network namespace and outside every pod's cgroup,
    // as kubelet or a node-local resolver: every answer NXDOMAIN.
    let workload = triage_agent_tests::fixture::workload_binary().unwrap();
    let in_node = |args: &[&str]| {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", node.node_netns()])
            .arg(&workload)
            .args(args);
        cmd
    };
    let mut server = in_node(&["dns-upstream", PORT, "3", "0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let server_addr = format!("{}:{PORT}", node.node_ip());
    let parsed0 = metric(&agent, "triage_agent_dns_packets_parsed_total");
    // Each waits for its answers (2 s at most), so none comes to a socket already closed.
    let out = in_node(&["dns-flood", &server_addr, "50", "daemon.test", "2000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Three DNS drains (a second each) and a /metrics snapshot (at most a second old) later,
    // anything the programs had sent up would show.
    agent.wait_more_drains(Drains::DnsTables, 3).unwrap();
    let after_daemon = metric(&agent, "triage_agent_dns_packets_parsed_total");
    assert_eq!(
        after_daemon - parsed0,
        0,
        "a node daemon's failed lookups were parsed: the programs ran for it"
    );
    // The pod's lookups to the same server are seen: the programs run there.
    let out = node
        .run(pod, &["dns-flood", &server_addr, "50", "pod.test", "2000"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = agent
        .query_until("shop", "client", WAIT, |v| {
            !dns_records(v, "nxdomain").is_empty()
        })
        .unwrap();
    assert_eq!(dns_records(&v, "nxdomain")[0]["query"], "pod.test", "{v}");
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&agent, "triage_agent_dns_packets_parsed_total") == after_daemon {
        assert!(
            std::time::Instant::now() < deadline,
            "the pod's failed lookups were never counted as parsed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}
