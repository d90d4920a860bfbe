//! Privileged end to end: silent drops. A policy-enforcing CNI is emulated with nftables rules
//! on the simulated node's bridge (and REJECT rules); real processes in simulated pods send
//! real traffic; every assertion is on what `triage-agent query` prints.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios panic with context; helpers shared by tests are not #[test] fns"
)]

use std::time::Duration;

use serde_json::Value;
use triage_agent_tests::{
    agent::{AgentProcess, Drains, count_of, records},
    fixture::NodeFixture,
};

const WAIT: Duration = Duration::from_secs(20);

fn lines(out: &std::process::Output, word: &str) -> usize {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(word))
        .count()
}

/// A bridge-family table in the node namespace: what a CNI's policy rules do to pod traffic.
fn policy(rule: &str) -> String {
    format!(
        "table bridge sim_policy {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
    )
}

#[test]
fn ingress_drop_between_two_pods_is_evidence_on_both_and_a_timeout_not_a_refusal() {
    let fixture = NodeFixture::new().pod("data", "db").pod("shop", "web");
    let (mut node, [db, web]) = fixture.node().unwrap();
    let (db_ip, web_ip) = (node.pod(db).ip, node.pod(web).ip);
    node.start_process(db, &["listen", "5432"]).unwrap();
    node.nft_node(&policy(&format!(
        "ip saddr {web_ip} ip daddr {db_ip} tcp dport 5432 drop"
    )))
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    let dst = format!("{db_ip}:5432");
    let out = node
        .run(web, &["connect", &dst, "2", "10", "1500"])
        .unwrap();
    assert_eq!(lines(&out, "timeout"), 2, "{out:?}");

    let v = agent
        .query_until("shop", "web", WAIT, |v| {
            // Two connects of 1.5 s each: two SYNs and at least one retransmission each (the
            // repeats arrive with the next drain of the kernel's flow table).
            count_of(&records(v, "connection_timeout", "outbound")) == 2
                && count_of(&records(v, "packet_drop", "outbound")) >= 4
        })
        .unwrap();
    assert!(
        records(&v, "connection_refused", "outbound").is_empty(),
        "a dropped SYN is never a refusal: {v}"
    );
    let t = records(&v, "connection_timeout", "outbound")[0];
    assert_eq!(t["dst"], dst.as_str());
    assert!(
        !t["src"].as_str().unwrap().ends_with(":0"),
        "the client's port survives the socket's close: {t}"
    );
    assert_eq!(t["protocol"], "tcp");
    assert_eq!(t["peer"]["name"], "db");
    assert_eq!(t["attribution"], "cgroup");
    assert_eq!(t["process"]["comm"], "sim-workload");
    let d = records(&v, "packet_drop", "outbound")[0];
    assert_eq!(d["reason"], "NETFILTER_DROP");
    assert_eq!(d["protocol"], "tcp");
    assert_eq!(d["tcp_flags"], "SYN");
    assert_eq!(d["dst"], dst.as_str());
    assert_eq!(d["peer"]["name"], "db");
    // Two connects of 1.5 s each: two SYNs and at least one retransmission each.
    assert!(d["count"].as_u64().unwrap() >= 4, "{d}");

    let v = agent
        .query_until("data", "db", WAIT, |v| {
            !records(v, "packet_drop", "inbound").is_empty()
        })
        .unwrap();
    let d = records(&v, "packet_drop", "inbound")[0];
    assert_eq!(d["peer"]["name"], "web");
    assert_eq!(d["attribution"], "ip");
    assert_eq!(
        d["src"].as_str().unwrap().split(':').next(),
        Some(web_ip.to_string().as_str())
    );

    let table = agent.cli(&["query", "--pod", "web", "-n", "shop"]).unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("are being dropped by the kernel (NETFILTER_DROP)")
            && text.contains("never answered"),
        "{text}"
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn rejects_are_refusals_by_a_firewall_not_missing_listeners() {
    let fixture = NodeFixture::new().pod("shop", "api").pod("shop", "web");
    let (mut node, [api, web]) = fixture.node().unwrap();
    let api_ip = node.pod(api).ip;
    // A listener on both ports: any refusal must come from the firewall.
    node.start_process(api, &["listen", "8080"]).unwrap();
    node.start_process(api, &["listen", "8081"]).unwrap();
    // REJECT rules at the destination (a host firewall in the pod's namespace, as some CNIs
    // install per-pod rules): a forged reset and an ICMP admin-prohibited.
    node.nft_pod(
        api,
        "table inet sim_firewall {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 8080 reject with tcp reset\n    tcp dport 8081 reject with icmpx type admin-prohibited\n  }\n}\n",
    )
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    let out = node
        .run(web, &["connect", &format!("{api_ip}:8080"), "2", "10"])
        .unwrap();
    assert_eq!(lines(&out, "refused"), 2, "{out:?}");
    let out = node
        .run(web, &["connect", &format!("{api_ip}:8081"), "1", "10"])
        .unwrap();
    assert_eq!(lines(&out, "error") + lines(&out, "refused"), 1, "{out:?}");

    let reset = format!("{api_ip}:8080");
    let icmp = format!("{api_ip}:8081");
    let v = agent
        .query_until("shop", "web", WAIT, |v| {
            let refused = records(v, "connection_refused", "outbound");
            let by_reset: Vec<_> = refused
                .iter()
                .copied()
                .filter(|r| r["dst"] == reset.as_str())
                .collect();
            count_of(&by_reset) == 2 && refused.iter().any(|r| r["dst"] == icmp.as_str())
        })
        .unwrap();
    let by_reset: Vec<_> = records(&v, "connection_refused", "outbound")
        .into_iter()
        .filter(|r| r["dst"] == reset.as_str())
        .collect();
    assert_eq!(count_of(&by_reset), 2, "{v}");
    assert_eq!(
        by_reset[0]["cause"], "rejected",
        "a reset the pod's stack never sent"
    );
    // The ICMP reject: a refusal with cause rejected, never "nothing listens" and never a
    // timeout (the application takes the errno before the socket closes; the error report
    // the kernel made while the connect waited tells it).
    let answer = v["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["dst"] == icmp.as_str() && e["kind"] != "packet_drop")
        .unwrap();
    assert_eq!(answer["kind"], "connection_refused", "{answer}");
    assert_eq!(answer["cause"], "rejected", "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().starts_with("ICMP_"),
        "{answer}"
    );
    assert!(
        records(&v, "packet_drop", "outbound")
            .iter()
            .any(|d| d["dst"] == icmp.as_str() && d["reason"] == "NETFILTER_DROP"),
        "{v}"
    );
    // The api pod's stack never refused anything.
    let v = agent.query("shop", "api").unwrap();
    assert!(
        records(&v, "connection_refused", "inbound").is_empty(),
        "{v}"
    );
    let table = agent.cli(&["query", "--pod", "web", "-n", "shop"]).unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("rejected by a firewall rule"), "{text}");
    assert!(!text.contains("nothing listens on port"), "{text}");
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn a_flood_of_20000_dropped_packets_is_counted_exactly_and_working_traffic_is_quiet() {
    const PACKETS: u64 = 20_000;
    let fixture = NodeFixture::new()
        .pod("load", "sink")
        .pod("load", "source")
        .pod("load", "fine");
    let (mut node, [sink, source, fine]) = fixture.node().unwrap();
    let sink_ip = node.pod(sink).ip;
    node.start_process(sink, &["listen", "9000"]).unwrap();
    node.nft_node(&policy(&format!("ip daddr {sink_ip} udp dport 7000 drop")))
        .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    let out = node
        .run(
            source,
            &["udp", &format!("{sink_ip}:7000"), &PACKETS.to_string()],
        )
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("sent {PACKETS}")),
        "{out:?}"
    );
    // Working traffic: connections that succeed leave no evidence.
    let out = node
        .run(fine, &["connect", &format!("{sink_ip}:9000"), "5", "10"])
        .unwrap();
    assert_eq!(lines(&out, "connected"), 5, "{out:?}");

    let v = agent
        .query_until("load", "source", WAIT, |v| {
            count_of(&records(v, "packet_drop", "outbound")) >= PACKETS
        })
        .unwrap();
    let drops = records(&v, "packet_drop", "outbound");
    assert_eq!(
        count_of(&drops),
        PACKETS,
        "exactly one count per packet: {v}"
    );
    assert_eq!(drops.len(), 1, "one flow, one record: {v}");
    assert_eq!(drops[0]["protocol"], "udp");
    assert!(drops[0].get("tcp_flags").is_none());
    // Still exact two drains later (nothing counted twice).
    agent.wait_more_drains(Drains::FlowTables, 2).unwrap();
    let v = agent.query("load", "source").unwrap();
    assert_eq!(count_of(&records(&v, "packet_drop", "outbound")), PACKETS);
    let receiver = agent.query("load", "sink").unwrap();
    assert_eq!(
        count_of(&records(&receiver, "packet_drop", "inbound")),
        PACKETS
    );
    let quiet = agent.query("load", "fine").unwrap();
    assert_eq!(quiet["evidence"], serde_json::json!([]), "{quiet}");
    let s = agent.status().unwrap();
    for (name, n) in s["loss"].as_object().unwrap() {
        assert_eq!(n, 0, "loss {name} during the flood: {s}");
    }
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

/// Ten flows in turn, five packets each, 100 times: every fifth packet changes the flow a CPU
/// counted last, so the repeats counted in the per-CPU slot move to the flow table each time,
/// and what is left in the slots is added at each drain. Each flow must still come out exact.
#[test]
fn interleaved_flows_are_each_counted_exactly() {
    const ROUNDS: u64 = 100;
    const BURST: u64 = 5;
    const PORTS: u16 = 10;
    let fixture = NodeFixture::new().pod("load", "sink").pod("load", "source");
    let (node, [sink, source]) = fixture.node().unwrap();
    let sink_ip = node.pod(sink).ip;
    node.nft_node(&policy(&format!(
        "ip daddr {sink_ip} udp dport 7100-{} drop",
        7100 + PORTS - 1
    )))
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    let out = node
        .run(
            source,
            &[
                "udp-sweep",
                &sink_ip.to_string(),
                "7100",
                &(7100 + PORTS - 1).to_string(),
                &ROUNDS.to_string(),
                &BURST.to_string(),
            ],
        )
        .unwrap();
    let total = ROUNDS * BURST * u64::from(PORTS);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("sent {total}")),
        "{out:?}"
    );
    let v = agent
        .query_until("load", "source", WAIT, |v| {
            count_of(&records(v, "packet_drop", "outbound")) >= total
        })
        .unwrap();
    // Two drains later, nothing counted twice.
    agent.wait_more_drains(Drains::FlowTables, 2).unwrap();
    let v2 = agent.query("load", "source").unwrap();
    assert_eq!(v["evidence"], v2["evidence"], "changed after a drain");
    let drops = records(&v2, "packet_drop", "outbound");
    assert_eq!(drops.len(), usize::from(PORTS), "one record per flow: {v2}");
    for d in &drops {
        assert_eq!(
            d["count"],
            ROUNDS * BURST,
            "exactly one count per packet: {d}"
        );
    }
    let s = agent.status().unwrap();
    for (name, n) in s["loss"].as_object().unwrap() {
        assert_eq!(n, 0, "loss {name}: {s}");
    }
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

/// `triage-agent query -o json` reading NetworkPolicies through `kubeconfig`.
fn query_explained(agent: &AgentProcess, namespace: &str, pod: &str, kubeconfig: &str) -> Value {
    let out = agent
        .cli(&[
            "query",
            "--pod",
            pod,
            "-n",
            namespace,
            "-o",
            "json",
            "--kubeconfig",
            kubeconfig,
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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

#[test]
fn drops_are_explained_by_the_networkpolicy_that_denies_them_or_not_at_all() {
    let fixture = NodeFixture::new().pod("data", "db").pod("shop", "web");
    let (mut node, [db, web]) = fixture.node().unwrap();
    let (db_ip, web_ip) = (node.pod(db).ip, node.pod(web).ip);
    node.start_process(db, &["listen", "5432"]).unwrap();
    node.start_process(db, &["listen", "6000"]).unwrap();
    // The policy: db takes 5432 from cache pods only, and 6000 from web. The CNI's rules derived
    // from it drop web -> db:5432; a firewall rule that is no policy's drops web -> db:6000.
    node.api.apply_network_policy(network_policy(
        "data",
        "db-ingress",
        serde_json::json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "cache"}}}], "ports": [{"port": 5432}]},
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 6000}]}
            ]
        }),
    ));
    node.nft_node(&policy(&format!(
        "ip saddr {web_ip} ip daddr {db_ip} tcp dport {{ 5432, 6000 }} drop"
    )))
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();
    for port in [5432, 6000] {
        let dst = format!("{db_ip}:{port}");
        let out = node
            .run(web, &["connect", &dst, "1", "10", "1200"])
            .unwrap();
        assert_eq!(lines(&out, "timeout"), 1, "{out:?}");
    }
    agent
        .query_until("shop", "web", WAIT, |v| {
            records(v, "packet_drop", "outbound").len() == 2
        })
        .unwrap();

    let kubeconfig = node.kubeconfig();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let v = query_explained(&agent, "shop", "web", kubeconfig);
    let drop_to = |port: u16| {
        records(&v, "packet_drop", "outbound")
            .into_iter()
            .find(|d| d["dst"] == format!("{db_ip}:{port}"))
            .cloned()
            .unwrap_or_else(|| panic!("no drop to {port}: {v}"))
    };
    let denied = drop_to(5432)["explanation"].clone();
    assert_eq!(denied["verdict"], "denied", "{denied}");
    assert_eq!(denied["policies"], serde_json::json!(["data/db-ingress"]));
    assert_eq!(
        denied["text"],
        "ingress to data/db tcp/5432 from shop/web is denied: data/db-ingress selects data/db \
         (Ingress) and no rule allows shop/web"
    );
    assert!(
        denied["fix"]
            .as_str()
            .unwrap()
            .contains("kind: NetworkPolicy")
    );
    let allowed = drop_to(6000)["explanation"].clone();
    assert_eq!(allowed["verdict"], "allowed", "{allowed}");
    assert!(
        allowed["text"]
            .as_str()
            .unwrap()
            .contains("NetworkPolicy allows this flow (data/db-ingress allow it); the drop happened elsewhere (reason NETFILTER_DROP on node"),
        "{allowed}"
    );
    // The timeouts are explained the same way.
    let timeout = records(&v, "connection_timeout", "outbound")
        .into_iter()
        .find(|t| t["dst"] == format!("{db_ip}:5432"))
        .cloned()
        .unwrap();
    assert_eq!(timeout["explanation"]["verdict"], "denied");

    // `explain` prints the policy and a fix to review.
    let out = agent
        .cli(&[
            "explain",
            "--pod",
            "web",
            "-n",
            "shop",
            "--kubeconfig",
            kubeconfig,
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[denied] ingress to data/db tcp/5432 from shop/web"),
        "{text}"
    );
    assert!(text.contains("a policy that would allow it"), "{text}");

    // Without API access the answer still comes, and says why there is no explanation.
    let v = query_explained(&agent, "shop", "web", "/nonexistent");
    let x = &records(&v, "packet_drop", "outbound")[0]["explanation"];
    assert_eq!(x["verdict"], "unknown");
    assert!(x["text"].as_str().unwrap().contains("unavailable"), "{x}");
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn default_deny_egress_blocking_dns_to_a_cluster_ip_is_explained_with_the_dns_fix() {
    const DNS_VIP: &str = "10.96.0.10";
    let fixture = NodeFixture::new()
        .pod("kube-system", "coredns")
        .pod("jobs", "batch");
    let (node, [_coredns, batch]) = fixture.node().unwrap();
    node.api.apply_network_policy(network_policy(
        "jobs",
        "default-deny-egress",
        serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    ));
    // The CNI enforces the pod's egress policy on its way out: everything but loopback.
    node.nft_pod(
        batch,
        "table inet sim_egress {\n chain output {\n  type filter hook output priority 0; policy accept;\n  oifname != \"lo\" drop\n }\n}\n",
    )
    .unwrap();
    node.route_services(batch, "10.96.0.0/12").unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    let out = node
        .run(batch, &["udp", &format!("{DNS_VIP}:53"), "3"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent"),
        "{out:?}"
    );
    agent
        .query_until("jobs", "batch", WAIT, |v| {
            count_of(&records(v, "packet_drop", "outbound")) == 3
        })
        .unwrap();
    let kubeconfig = node.kubeconfig();
    let v = query_explained(&agent, "jobs", "batch", kubeconfig.to_str().unwrap());
    let d = records(&v, "packet_drop", "outbound")[0];
    assert_eq!(d["dst"], format!("{DNS_VIP}:53"));
    assert_eq!(d["protocol"], "udp");
    assert_eq!(d["reason"], "NETFILTER_DROP");
    assert_eq!(
        d["attribution"], "cgroup",
        "dropped on the sender's way out: its socket names its cgroup"
    );
    assert_eq!(d["container"], "app");
    let x = &d["explanation"];
    assert_eq!(x["verdict"], "denied", "{x}");
    assert_eq!(
        x["text"],
        format!(
            "egress from jobs/batch to {DNS_VIP} udp/53 is denied: jobs/default-deny-egress \
             selects jobs/batch (Egress) and no rule allows udp/53"
        )
    );
    let fix = x["fix"].as_str().unwrap();
    assert!(
        fix.contains("k8s-app: kube-dns") && fix.contains("UDP") && fix.contains("TCP"),
        "{fix}"
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}
