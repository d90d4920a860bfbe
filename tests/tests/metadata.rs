//! Privileged end to end: the agent's view of pod metadata stays honest when the API server
//! fails after the initial sync (Status says "not in sync" while it lasts) and when a running
//! watch is answered with 410 Gone (the agent re-lists and keeps attributing correctly).

#![expect(
    clippy::expect_used,
    reason = "test scenarios panic with context; helpers shared by tests are not #[test] fns"
)]

use std::time::Duration;

use serde_json::Value;
use triage_agent_tests::{
    agent::{AgentProcess, records},
    simnode::{CgroupDriver, SimConfig, SimNode},
};

const WAIT: Duration = Duration::from_secs(30);

fn node() -> SimNode {
    SimNode::start(SimConfig {
        workload: env!("CARGO_BIN_EXE_sim-workload").into(),
        driver: CgroupDriver::Cgroupfs,
    })
    .expect("simulated node")
}

fn inbound(v: &Value) -> u64 {
    records(v, "connection_refused", "inbound")
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn api_server_down_after_sync_is_shown_as_not_in_sync() {
    let mut node = node();
    node.add_pod("meta", "a").unwrap();
    let mut agent = AgentProcess::start(&node).unwrap();
    agent.wait_ready(true, WAIT).unwrap();

    node.api.set_available(false);
    // The running watch breaks when the server goes away; the agent must stop claiming sync.
    let s = agent
        .status_until(WAIT, |s| s["metadata"]["synced"] == false)
        .unwrap();
    assert!(s["metadata"]["last_error"].is_string(), "{s}");

    node.api.set_available(true);
    let s = agent
        .status_until(WAIT, |s| s["metadata"]["synced"] == true)
        .unwrap();
    assert!(s["metadata"]["last_error"].is_null(), "{s}");
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn watch_answered_with_410_relists_and_attribution_stays_right() {
    let mut node = node();
    let server = node.add_pod("meta", "server").unwrap();
    let client = node.add_pod("meta", "client").unwrap();
    let mut agent = AgentProcess::start(&node).unwrap();
    agent.wait_ready(true, WAIT).unwrap();
    agent.wait_pods(2, WAIT).unwrap();

    // A 410 Gone in the running watch (history compacted under it, as etcd compaction does
    // to a watcher that fell behind): the agent must re-list.
    let lists_before = node.api.list_requests();
    node.api.expire_watches();
    let late = node.add_pod("meta", "late").unwrap();
    agent.wait_pods(3, WAIT).unwrap();
    assert!(
        node.api.list_requests() > lists_before,
        "the agent re-listed after 410"
    );
    assert!(
        agent.log().contains("410") || agent.log().to_lowercase().contains("expired"),
        "the watch failure was logged:\n{}",
        agent.log()
    );

    let dst = format!("{}:7777", node.pod(late).ip);
    node.run(client, &["connect", &dst, "3", "20"]).unwrap();
    agent
        .query_until("meta", "late", WAIT, |v| inbound(v) == 3)
        .unwrap();
    let dst = format!("{}:7777", node.pod(server).ip);
    node.run(client, &["connect", &dst, "1", "20"]).unwrap();
    agent
        .query_until("meta", "server", WAIT, |v| inbound(v) == 1)
        .unwrap();
    let s = agent.status().unwrap();
    assert_eq!(s["metadata"]["synced"], true, "{s}");
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}
