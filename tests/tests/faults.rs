//! Privileged end to end: faults around the agent itself. Two agents on one node (a rolling
//! update overlapping, or a second copy started by hand) each see everything exactly once: their
//! programs, maps and rings are their own. An API server outage while a pod's IP is reused; kill
//! -9 in the middle of a flood; a minute of drop and refusal floods.

use std::time::Duration;

use triage_agent_tests::{
    agent::{Drains, count_of, records, rss_mib},
    fixture::NodeFixture,
    simnode::{CgroupDriver, PodRuntime},
};

const WAIT: Duration = Duration::from_secs(20);

/// Every agent sees the whole machine, and one machine plays several simulated nodes: a flood
/// in one test is traffic of pods another test's agent does not know, which waits for their
/// metadata and is then stored unattributed and counted as `attribution_expired` (right, for a
/// real node; no real node carries another node's pods). The outage test asserts that none of
/// its own node's events expire, so it never runs beside a flood.
static QUIET: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn quiet() -> std::sync::MutexGuard<'static, ()> {
    QUIET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn two_agents_on_one_node_both_work_and_neither_counts_twice() {
    let fixture = NodeFixture::new()
        .driver(CgroupDriver::Systemd)
        .dropping_udp("7000");
    let (node, [server, client]) = fixture.node().unwrap();
    let server_ip = node.pod(server).ip;
    let mut first = fixture.agent(&node).unwrap();
    let mut second = fixture.agent(&node).unwrap();

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
        // Let a late drain land (two more of this agent's drains), then the counts must be
        // exact: not 400, not 6.
        agent.wait_more_drains(Drains::FlowTables, 2).unwrap();
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

/// How long the API server stays away in the outage test (what the issue asks: a minute).
const OUTAGE: Duration = Duration::from_secs(60);
/// The agent's longest wait between pod watch attempts.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);

#[test]
fn an_api_server_outage_loses_nothing_and_attributes_its_events_right_afterwards() {
    let _quiet = quiet();
    let (mut node, agent, [client, old]) = NodeFixture::new()
        // Hand-made pods: the new pod takes the deleted one's IP, which a CNI's IPAM gives
        // back only after its whole range.
        .runtime(PodRuntime::HandMade)
        .pod("shop", "web")
        .pod("shop", "old")
        .start()
        .unwrap();
    let reused_ip = node.pod(old).ip;

    node.api.set_available(false);
    let s = agent
        .status_until(WAIT, |s| s["metadata"]["synced"] == false)
        .unwrap();
    assert!(
        s["metadata"]["last_error"].is_string(),
        "the outage is shown: {s}"
    );
    // Meanwhile the cluster moves on: a pod is deleted and another takes its IP.
    let outage_started = std::time::Instant::now();
    node.delete_pod(old);
    let new = node.add_pod_with_ip("shop", "new", reused_ip).unwrap();
    let dst = format!("{reused_ip}:5433");
    node.run(client, &["connect", &dst, "3", "20"]).unwrap();
    // The agent keeps answering during the outage, says it is not in sync, and holds the
    // events whose pods it cannot name for sure (not lost: waiting).
    let s = agent
        .status_until(WAIT, |s| {
            s["metadata"]["pending_events"].as_u64() >= Some(2)
        })
        .unwrap();
    assert_eq!(s["metadata"]["synced"], false, "{s}");
    let (code, body) = agent.http_get("/readyz").unwrap();
    assert_eq!(
        code, 200,
        "synced once: still ready during an outage: {body}"
    );
    std::thread::sleep(OUTAGE.saturating_sub(outage_started.elapsed()));

    node.api.set_available(true);
    // After a minute of failed attempts the agent's backoff is at its longest (30 s,
    // agent/src/attribute/metadata.rs): its next list can come that long after the server.
    agent
        .status_until(WATCH_BACKOFF_MAX + WAIT, |s| {
            s["metadata"]["synced"] == true
        })
        .unwrap();
    // The refusals made during the outage: on the client (exact, its cgroup), naming the pod
    // that really had the IP then, and on that pod, never on the deleted one.
    let web = agent
        .query_until("shop", "web", WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) == 3
        })
        .unwrap();
    let out = records(&web, "connection_refused", "outbound");
    assert!(
        out.iter().all(|r| r["peer"]["name"] == "new"),
        "the peer is the pod holding the IP at the time: {web}"
    );
    let new_answer = agent
        .query_until("shop", "new", WAIT, |v| {
            count_of(&records(v, "connection_refused", "inbound")) == 3
        })
        .unwrap();
    assert!(
        records(&new_answer, "connection_refused", "inbound")
            .iter()
            .all(|r| r["pod"]["name"] == "new"),
        "{new_answer}"
    );
    let old_answer = agent.query("shop", "old").unwrap();
    assert_eq!(
        count_of(&records(&old_answer, "connection_refused", "inbound")),
        0,
        "the deleted pod got the new pod's evidence: {old_answer}"
    );
    let s = agent.status().unwrap();
    let lost = &s["loss"];
    assert!(
        lost["attribution_expired"].as_u64().unwrap_or(0) == 0,
        "events waited for the outage to end rather than go unattributed: {s}"
    );
    let _ = new;
}

/// Kernel program ids the process holds open (its program and link fds say so in fdinfo).
fn bpf_prog_ids(pid: u32) -> std::collections::BTreeSet<u32> {
    let mut ids = std::collections::BTreeSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        for line in info.lines() {
            if let Some(id) = line.strip_prefix("prog_id:") {
                ids.extend(id.trim().parse::<u32>().ok());
            }
        }
    }
    ids
}

/// Whether the kernel still has program `id` (BPF_PROG_GET_FD_BY_ID).
fn bpf_prog_exists(id: u32) -> bool {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    // union bpf_attr for this command: prog_id, next_id, open_flags.
    let mut attr = [0u32; 8];
    attr[0] = id;
    // SAFETY: bpf(2) reads `attr` (a zeroed bpf_attr prefix of the size passed) and returns a
    // new fd or -1; the fd is closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: closing the fd bpf(2) just returned to us.
        unsafe { libc::close(fd as libc::c_int) };
        return true;
    }
    false
}

#[test]
fn kill_9_during_a_flood_leaves_nothing_attached_and_the_restart_keeps_the_evidence() {
    let _quiet = quiet();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("evidence.db");
    let store = store.to_str().unwrap();
    let fixture = NodeFixture::new()
        .dropping_udp("7000-7001")
        .agent_flags(["--store-path", store]);
    let (node, mut agent, [server, client]) = fixture.start().unwrap();
    let server_ip = node.pod(server).ip;
    node.run(client, &["udp", &format!("{server_ip}:7000"), "200"])
        .unwrap();
    let before = agent
        .query_until("shop", "web", WAIT, |v| {
            count_of(&records(v, "packet_drop", "outbound")) == 200
        })
        .unwrap();
    let last_seen = records(&before, "packet_drop", "outbound")[0]["last_seen"]
        .as_str()
        .unwrap()
        .to_owned();
    agent
        .status_until(WAIT, |s| {
            s["store_disk"]["pending"] == 0
                && s["store_disk"]["last_commit"]
                    .as_str()
                    .is_some_and(|t| t > last_seen.as_str())
        })
        .unwrap();
    let programs = bpf_prog_ids(agent.pid().unwrap());
    assert!(programs.len() >= 5, "the agent's programs: {programs:?}");

    // The flood, and the kill in the middle of it.
    let mut flood = node
        .spawn(client, &["flood-udp", &format!("{server_ip}:7000"), "6"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    agent.kill9().unwrap();
    // Nothing stays attached: every program the agent held is gone from the kernel (its
    // links and maps went with its file descriptors; nothing is pinned).
    let deadline = std::time::Instant::now() + WAIT;
    while programs.iter().any(|id| bpf_prog_exists(*id)) {
        assert!(
            std::time::Instant::now() < deadline,
            "programs still loaded after kill -9: {:?}",
            programs
                .iter()
                .filter(|id| bpf_prog_exists(**id))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        std::fs::read_dir("/sys/fs/bpf").map_or(true, |mut d| !d
            .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().contains("triage")))),
        "nothing pinned"
    );

    // The new agent attaches while the flood goes on, and answers at once with what the old
    // one had committed.
    let agent = fixture.agent_unsynced(&node).unwrap();
    let after = agent.query("shop", "web").unwrap();
    assert!(
        count_of(&records(&after, "packet_drop", "outbound")) >= 200,
        "committed evidence survived the kill: {after}"
    );
    assert!(flood.wait().unwrap().success());
    // And counts exactly from here: a new flow of 100 drops is 100.
    agent.wait_pods(2, WAIT).unwrap();
    node.run(client, &["udp", &format!("{server_ip}:7001"), "100"])
        .unwrap();
    agent
        .query_until("shop", "web", WAIT, |v| {
            records(v, "packet_drop", "outbound")
                .iter()
                .any(|r| r["dst"] == format!("{server_ip}:7001") && r["count"] == 100)
        })
        .unwrap();
    let s = agent.status().unwrap();
    assert!(
        s["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["attached"] == true),
        "every program attached after the kill: {s}"
    );
}

/// How long the flood test floods (what the issue asks: a minute).
const FLOOD: Duration = Duration::from_secs(60);
/// The agent's RSS bound under the floods: its store holds a handful of records (the floods are
/// two flows, counted in the kernel), so growth would be a leak.
const FLOOD_RSS_BOUND_MIB: f64 = 128.0;

#[test]
fn a_minute_of_drop_and_refusal_floods_keeps_the_agent_alive_bounded_exact_and_answering() {
    let _quiet = quiet();
    let fixture = NodeFixture::new().dropping_udp("7000");
    let (node, mut agent, [server, client]) = fixture.start().unwrap();
    let server_ip = node.pod(server).ip;
    let pid = agent.pid().unwrap();
    let secs = FLOOD.as_secs().to_string();
    let drops = node
        .spawn_piped(client, &["flood-udp", &format!("{server_ip}:7000"), &secs])
        .unwrap();
    let refusals = node
        .spawn_piped(
            client,
            &["flood-connect", &format!("{server_ip}:7001"), &secs],
        )
        .unwrap();
    let started = std::time::Instant::now();
    let mut max_rss = 0f64;
    let mut slowest = Duration::ZERO;
    let mut answers = 0;
    while started.elapsed() < FLOOD {
        let asked = std::time::Instant::now();
        let v = agent.query("shop", "web").unwrap();
        slowest = slowest.max(asked.elapsed());
        answers += 1;
        assert!(v["complete"] == true, "{v}");
        max_rss = max_rss.max(rss_mib(pid));
        std::thread::sleep(Duration::from_secs(2));
    }
    let parse = |out: std::process::Output| -> u64 {
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the flood's count: {out:?}"))
    };
    let sent = parse(drops.wait_with_output().unwrap());
    let attempts = parse(refusals.wait_with_output().unwrap());
    assert!(
        sent > 100_000 && attempts > 1_000,
        "floods too weak: {sent} {attempts}"
    );
    // Exact: every dropped datagram counted once; every refused connect counted.
    let v = agent
        .query_until("shop", "web", WAIT, |v| {
            records(v, "packet_drop", "outbound")
                .iter()
                .map(|r| r["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == sent
        })
        .unwrap();
    let refused = count_of(&records(&v, "connection_refused", "outbound"));
    assert!(
        refused <= attempts && refused * 100 >= attempts * 99,
        "{refused} refusals counted of {attempts} attempts"
    );
    assert!(
        max_rss < FLOOD_RSS_BOUND_MIB,
        "RSS reached {max_rss:.1} MiB under the floods"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a query took {slowest:?} during the floods ({answers} answered)"
    );
    // Every loss counter is visible in Status (none should have moved for two flows).
    let s = agent.status().unwrap();
    for name in [
        "ring_buffer_full",
        "flow_table_full",
        "pipeline_full",
        "store_evicted",
    ] {
        assert_eq!(s["loss"][name], 0, "{name}: {s}");
    }
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}
