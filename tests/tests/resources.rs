//! Privileged end to end: OOM kills and CPU throttling in the simulated node's real cgroups
//! (v1 memory and cpu controllers on this host), found by the real agent binary from pod
//! metadata and kubelet's layout, and read back with `triage-agent query`. Needs root; fails
//! (never skips) without.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test scenarios panic with context; helpers shared by tests are not #[test] fns"
)]

use std::time::Duration;

use serde_json::Value;
use triage_agent_tests::{
    agent::{AgentProcess, Drains, of_kind},
    fixture::NodeFixture,
    simnode::CgroupDriver,
};

const WAIT: Duration = Duration::from_secs(30);
const LIMIT: u64 = 64 << 20;
/// Sweeps (one a second: `--sample-interval 1s`) that outlast attribution's wait for a late
/// kernel event before it records an OOM count the kernel event did not report
/// (`COUNTER_HOLD`, 3 s, agent/src/attribute/resources.rs) and its next tick (1 s).
const COUNTER_HOLD_SWEEPS: u64 = 4;

/// A node with the `driver`, and the agent on it sampling its pods' cgroups every second,
/// reporting any throttled period.
fn sampling_fixture(driver: CgroupDriver) -> NodeFixture {
    NodeFixture::new()
        .driver(driver)
        .kubelet_cgroup_root()
        .agent_flags(["--sample-interval", "1s", "--throttle-threshold", "1"])
}

fn sampled(status: &Value, signal: &str) -> u64 {
    status["resources"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["signal"] == signal))
        .and_then(|r| r["containers"].as_u64())
        .unwrap_or(0)
}

/// Waits until the agent samples `n` containers.
fn wait_sampled(agent: &AgentProcess, n: u64) -> Value {
    agent
        .status_until(WAIT, |s| sampled(s, "oom_kill") == n)
        .unwrap()
}

#[test]
fn oom_kills_of_a_child_and_of_a_main_process() {
    let fixture = sampling_fixture(CgroupDriver::Cgroupfs)
        .pod("shop", "worker")
        .pod("shop", "hog")
        .pod("shop", "idle");
    let (node, [worker, hog, idle]) = fixture.node().unwrap();
    for pod in [worker, hog] {
        node.set_memory_limit(pod, LIMIT).unwrap();
    }
    let agent = fixture.agent(&node).unwrap();
    let status = wait_sampled(&agent, 3);
    let oom_source = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["signal"] == "oom_kill")
        .unwrap()
        .clone();
    assert_eq!(oom_source["hierarchy"], "cgroup v1", "{status}");
    assert!(
        oom_source["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "raw_tracepoint mark_victim"),
        "{status}"
    );
    assert!(
        status["probes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "mark_victim" && p["attached"] == true),
        "{status}"
    );

    // A worker child allocates 300 MiB against a 64 MiB limit; the first process lives on.
    let mut main = node.spawn(worker, &["alloc-child", "300"]).unwrap();
    let answer = agent
        .query_until("shop", "worker", WAIT, |v| {
            !of_kind(v, "oom_kill").is_empty()
        })
        .unwrap();
    let r = of_kind(&answer, "oom_kill")[0].clone();
    assert_eq!(r["main_process"], false, "{r}");
    assert_eq!(r["process"]["comm"], "sim-workload", "{r}");
    let victim = r["process"]["pid"].as_u64().unwrap();
    assert_ne!(
        victim,
        u64::from(main.id()),
        "the child died, not the first process"
    );
    assert_eq!(r["memory_limit_bytes"], LIMIT, "{r}");
    assert!(r["victim_rss_bytes"].as_u64().unwrap() > 32 << 20, "{r}");
    assert!(r["memory_usage_bytes"].as_u64().unwrap() > 32 << 20, "{r}");
    assert_eq!(r["attribution"], "cgroup");
    assert_eq!(r["container"], "app");
    assert_eq!(r["source"], "kernel");
    assert!(
        main.try_wait().unwrap().is_none(),
        "the first process is still running"
    );

    // The counter confirms the kill: still one record, counted once, after the counter was
    // sampled (two sweeps begun after the kill was seen) and any unmatched count would have
    // been recorded (the hold after them).
    agent
        .wait_more_drains(Drains::CgroupSweeps, 2 + COUNTER_HOLD_SWEEPS)
        .unwrap();
    let answer = agent.query("shop", "worker").unwrap();
    let kills = of_kind(&answer, "oom_kill");
    assert_eq!(kills.len(), 1, "{answer}");
    assert_eq!(kills[0]["count"], 1, "one kill, one record: {answer}");

    // The table says which process, the limit, and that Kubernetes did not report it.
    let table = agent
        .cli(&["query", "--pod", "worker", "-n", "shop"])
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("Kubernetes did not report it"), "{text}");
    assert!(text.contains("64.0MiB"), "{text}");

    // The main process itself.
    let mut hog_main = node.spawn(hog, &["alloc", "300"]).unwrap();
    let answer = agent
        .query_until("shop", "hog", WAIT, |v| !of_kind(v, "oom_kill").is_empty())
        .unwrap();
    let r = of_kind(&answer, "oom_kill")[0].clone();
    assert_eq!(r["main_process"], true, "{r}");
    assert_eq!(r["process"]["pid"], u64::from(hog_main.id()), "{r}");
    let _ = hog_main.wait();

    let quiet = agent.query("shop", "idle").unwrap();
    assert!(
        quiet["evidence"].as_array().unwrap().is_empty(),
        "an idle pod gets nothing: {quiet}"
    );
    let _ = idle;
    let _ = main.kill();
    let _ = main.wait();
}

fn throttling_then_deletion(driver: CgroupDriver) {
    let fixture = sampling_fixture(driver)
        .pod("web", "busy")
        .pod("web", "idle")
        .pod("web", "doomed");
    let (mut node, [busy, idle, doomed]) = fixture.node().unwrap();
    // 0.1 core: 10 ms per 100 ms period.
    node.set_cpu_quota(busy, 10_000, 100_000).unwrap();
    let agent = fixture.agent(&node).unwrap();
    wait_sampled(&agent, 3);
    node.start_process(busy, &["spin", "60"]).unwrap();
    node.start_process(doomed, &["spin", "60"]).unwrap();

    let answer = agent
        .query_until("web", "busy", WAIT, |v| {
            of_kind(v, "cpu_throttling")
                .first()
                .is_some_and(|r| r["throttled_periods"].as_u64().unwrap_or(0) >= 5)
        })
        .unwrap();
    let r = of_kind(&answer, "cpu_throttling")[0].clone();
    assert_eq!(r["cpu_limit_cores"], 0.1, "{r}");
    assert!(r["ratio"].as_f64().unwrap() > 0.5, "{r}");
    assert!(r["throttled_seconds"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["total_periods"].as_u64().unwrap() >= r["throttled_periods"].as_u64().unwrap());
    assert!(r["interval_seconds"].as_f64().unwrap() >= 0.9, "{r}");
    assert!(
        r["cpu_pressure_some_avg10"].is_number(),
        "PSI from cgroup2: {r}"
    );
    assert_eq!(r["container"], "app");
    assert_eq!(r["attribution"], "cgroup");
    let table = agent.cli(&["query", "--pod", "busy", "-n", "web"]).unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("Review the CPU limit"), "{text}");
    assert!(text.contains("Restarting will not help"), "{text}");

    // Unlimited containers are not throttled, however busy; idle ones get nothing.
    for pod in ["doomed", "idle"] {
        let v = agent.query("web", pod).unwrap();
        assert!(of_kind(&v, "cpu_throttling").is_empty(), "{pod}: {v}");
    }

    // A pod deleted mid-sampling: its cgroup goes, then its metadata. No error, no leak.
    node.delete_pod(doomed);
    agent
        .status_until(WAIT, |s| sampled(s, "cpu_throttling") == 2)
        .unwrap();
    // Two sweeps later: any error reading the deleted pod's files would be in the log.
    agent.wait_more_drains(Drains::CgroupSweeps, 2).unwrap();
    let log = agent.log();
    assert!(
        !log.contains("cannot read cgroup file") && !log.contains("not understood"),
        "no error spam for a deleted pod:\n{log}"
    );
    let pid = agent.pid().unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    node.delete_pod(idle);
    agent
        .status_until(WAIT, |s| sampled(s, "cpu_throttling") == 1)
        .unwrap();
    agent.wait_more_drains(Drains::CgroupSweeps, 2).unwrap();
    let after = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        after < fds,
        "the deleted pod's files are closed: {fds} -> {after}"
    );
}

#[test]
fn throttling_and_a_pod_deleted_mid_sampling_cgroupfs() {
    throttling_then_deletion(CgroupDriver::Cgroupfs);
}

#[test]
fn throttling_and_a_pod_deleted_mid_sampling_systemd() {
    throttling_then_deletion(CgroupDriver::Systemd);
}
