//! Privileged end to end: the agent's view of pod metadata stays honest when the API server
//! fails after the initial sync (Status says "not in sync" while it lasts) and when a running
//! watch is answered with 410 Gone (the agent re-lists and keeps attributing correctly).

use std::time::Duration;

use serde_json::Value;
use triage_agent_tests::{agent::records, fixture::NodeFixture};

const WAIT: Duration = Duration::from_secs(30);

fn inbound(v: &Value) -> u64 {
    records(v, "connection_refused", "inbound")
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn api_server_down_after_sync_is_shown_as_not_in_sync() {
    let (node, mut agent, [_a]) = NodeFixture::new().pod("meta", "a").start().unwrap();

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
    let (mut node, mut agent, [server, client]) = NodeFixture::new()
        .pod("meta", "server")
        .pod("meta", "client")
        .start()
        .unwrap();

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
