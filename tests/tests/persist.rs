//! Privileged end to end: evidence survives `kill -9`. The agent keeps its store on disk
//! (`--store-path`); once a batch holding a failure is committed (Status: no pending changes, last
//! commit after the failure), the agent is killed with SIGKILL and started again on the same file,
//! and the failure is in its first answer, with its count. A second agent on the same file is
//! refused the file, keeps working in memory, and says so in Status and `/readyz`.

use std::time::Duration;

use triage_agent_tests::{agent::records, fixture::NodeFixture};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn evidence_committed_before_a_kill_9_is_answered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evidence.db");
    let path_arg = path.to_str().unwrap();
    let fixture = NodeFixture::new()
        .pod("shop", "db")
        .pod("shop", "web")
        .agent_flags(["--store-path", path_arg]);
    let (node, mut agent, [server, client]) = fixture.start().unwrap();
    let (code, body) = agent.http_get("/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(agent.http_get("/healthz").unwrap().0, 200);

    let dst = format!("{}:5433", node.pod(server).ip);
    node.run(client, &["connect", &dst, "3", "10"]).unwrap();
    let before = agent
        .query_until("shop", "web", WAIT, |v| {
            records(v, "connection_refused", "outbound")
                .first()
                .is_some_and(|r| r["count"] == 3)
        })
        .unwrap();
    let last_seen = records(&before, "connection_refused", "outbound")[0]["last_seen"]
        .as_str()
        .unwrap()
        .to_owned();
    // Acknowledged: nothing pending once the store held all three (pending counts what is not
    // committed yet, in the writer too). The record's last_seen is not when the store got it:
    // attribution may hold an event a moment (while the cgroup tree is walked, say).
    let status = agent
        .status_until(WAIT, |s| {
            let d = &s["store_disk"];
            d["pending"] == 0
                && d["last_commit"]
                    .as_str()
                    .is_some_and(|t| t > last_seen.as_str())
        })
        .unwrap();
    assert!(status["store_disk"]["error"].is_null(), "{status}");

    agent.kill9().unwrap();
    // Started again on the same file, without waiting for the pod list.
    let agent = fixture.agent_unsynced(&node).unwrap();
    let status = agent.status().unwrap();
    assert!(
        status["store_disk"]["restored"].as_u64().unwrap() >= 2,
        "client and server records: {status}"
    );
    // Before any new traffic and before the pod list is even needed: the answer is there.
    let after = agent.query("shop", "web").unwrap();
    let refused = records(&after, "connection_refused", "outbound");
    assert_eq!(refused.len(), 1, "{after}");
    assert_eq!(refused[0]["count"], 3);
    assert_eq!(refused[0]["last_seen"].as_str(), Some(last_seen.as_str()));
    let inbound = agent.query("shop", "db").unwrap();
    assert_eq!(
        records(&inbound, "connection_refused", "inbound")[0]["count"],
        3,
        "{inbound}"
    );
    // New failures count on the restored records.
    agent.wait_pods(2, WAIT).unwrap();
    node.run(client, &["connect", &dst, "2", "10"]).unwrap();
    agent
        .query_until("shop", "web", WAIT, |v| {
            records(v, "connection_refused", "outbound")
                .first()
                .is_some_and(|r| r["count"] == 5)
        })
        .unwrap();

    // A second agent on the same file: refused the file, says so, not ready; still observes.
    let second = fixture.agent_unsynced(&node).unwrap();
    let status = second
        .status_until(WAIT, |s| s["store_disk"]["error"].is_string())
        .unwrap();
    let error = status["store_disk"]["error"].as_str().unwrap();
    assert!(error.contains("in use by another triage-agent"), "{error}");
    let (code, body) = second.http_get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("in use by another triage-agent"), "{body}");
    assert_eq!(
        second.http_get("/healthz").unwrap().0,
        200,
        "alive, just not ready"
    );
    assert_eq!(agent.http_get("/readyz").unwrap().0, 200);
}
