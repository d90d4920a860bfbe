//! Privileged end to end: faults around the agent itself. Two agents on one node (a rolling
//! update overlapping, or a second copy started by hand) each see everything exactly once: their
//! programs, maps and rings are their own.

use std::time::Duration;

use serde_json::Value;
use triage_agent_tests::{
    agent::{AgentProcess, records},
    simnode::{CgroupDriver, SimConfig, SimNode},
};

const WAIT: Duration = Duration::from_secs(20);

fn count_of(records: &[&Value]) -> u64 {
    records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn two_agents_on_one_node_both_work_and_neither_counts_twice() {
    let mut node = SimNode::start(SimConfig {
        workload: env!("CARGO_BIN_EXE_sim-workload").into(),
        driver: CgroupDriver::Systemd,
    })
    .unwrap();
    let server = node.add_pod("shop", "db").unwrap();
    let client = node.add_pod("shop", "web").unwrap();
    let server_ip = node.pod(server).ip;
    node.nft_node(&format!(
        "table bridge sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {server_ip} udp dport 7000 drop\n }}\n}}\n"
    ))
    .unwrap();
    let mut first = AgentProcess::start(&node).unwrap();
    first.wait_ready(true, WAIT).unwrap();
    let mut second = AgentProcess::start(&node).unwrap();
    second.wait_ready(true, WAIT).unwrap();
    for agent in [&first, &second] {
        agent.wait_pods(2, WAIT).unwrap();
    }

    let out = node
        .run(client, &["udp", &format!("{server_ip}:7000"), "200"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent 200"),
        "{out:?}"
    );
    node.run(
        client,
        &["connect", &format!("{server_ip}:5433"), "3", "20"],
    )
    .unwrap();
    for agent in [&first, &second] {
        agent
            .query_until("shop", "web", WAIT, |v| {
                count_of(&records(v, "packet_drop", "outbound")) >= 200
                    && count_of(&records(v, "connection_refused", "outbound")) >= 3
            })
            .unwrap();
        // Let a late drain land, then the counts must be exact: not 400, not 6.
        std::thread::sleep(Duration::from_millis(1200));
        let v = agent.query("shop", "web").unwrap();
        assert_eq!(
            count_of(&records(&v, "packet_drop", "outbound")),
            200,
            "{v}"
        );
        assert_eq!(
            count_of(&records(&v, "connection_refused", "outbound")),
            3,
            "{v}"
        );
    }
    // Stopping one leaves the other running and its programs attached.
    assert!(first.stop().unwrap().success(), "{}", first.log());
    let status = second.status().unwrap();
    assert!(
        status["probes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "kfree_skb" || p["name"] == "dns_egress")
            .all(|p| p["attached"] == true),
        "{status}"
    );
    node.run(client, &["udp", &format!("{server_ip}:7000"), "50"])
        .unwrap();
    second
        .query_until("shop", "web", WAIT, |v| {
            count_of(&records(v, "packet_drop", "outbound")) == 250
        })
        .unwrap();
    assert!(second.stop().unwrap().success(), "{}", second.log());
}
