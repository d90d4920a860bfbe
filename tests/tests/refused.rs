//! Privileged end to end: the real agent binary loads its programs into this kernel, watches
//! the stand-in API server, and real processes in simulated pods provoke real refusals. Every
//! assertion is on what `triage-agent query` prints. Needs root; fails (never skips) without.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test scenarios panic with context; helpers shared by tests are not #[test] fns"
)]

use std::time::{Duration, Instant};

use triage_agent_common::connect_slot;
use triage_agent_tests::{
    agent::{Drains, count_of, records},
    bpf_maps::Map,
    fixture::NodeFixture,
    simnode::{CgroupDriver, PodRuntime},
};

const WAIT: Duration = Duration::from_secs(20);

fn refused_count(out: &std::process::Output) -> usize {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l == "refused")
        .count()
}

fn both_sides_of_a_refusal(driver: CgroupDriver) {
    let fixture = NodeFixture::new()
        .driver(driver)
        .pod("shop", "db")
        .pod("shop", "web");
    let (mut node, [server, client]) = fixture.node().unwrap();
    // The server listens on 5432, the client is configured for 5433: nothing listens there.
    node.start_process(server, &["listen", "5432"]).unwrap();
    let mut agent = fixture.agent(&node).unwrap();
    let status = agent.status().unwrap();
    assert!(
        status["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["attached"] == true),
        "{status}"
    );

    let dst = format!("{}:5433", node.pod(server).ip);
    let out = node.run(client, &["connect", &dst, "3", "50"]).unwrap();
    assert_eq!(refused_count(&out), 3, "the workload itself saw 3 refusals");

    let web = agent
        .query_until("shop", "web", WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) >= 3
        })
        .unwrap();
    let out_recs = records(&web, "connection_refused", "outbound");
    assert_eq!(out_recs.len(), 1, "{web}");
    let r = out_recs[0];
    assert_eq!(r["count"], 3);
    assert_eq!(r["dst"], dst.as_str());
    assert_eq!(
        r["src"].as_str().unwrap().split(':').next().unwrap(),
        node.pod(client).ip.to_string()
    );
    assert_eq!(r["attribution"], "cgroup");
    assert_eq!(r["container"], "app");
    assert_eq!(r["protocol"], "tcp");
    assert_eq!(r["node"], node.name.as_str());
    assert_eq!(r["pod"]["namespace"], "shop");
    assert_eq!(r["pod"]["name"], "web");
    assert_eq!(r["pod"]["uid"], node.pod(client).uid.as_str());
    assert_eq!(r["process"]["comm"], "sim-workload");
    assert_eq!(r["peer"]["name"], "db");
    for field in ["first_seen", "last_seen"] {
        let t = r[field].as_str().unwrap();
        assert!(
            t.ends_with('Z') && t.contains('T'),
            "{field} is RFC 3339 UTC: {t}"
        );
    }

    let db = agent
        .query_until("shop", "db", WAIT, |v| {
            count_of(&records(v, "connection_refused", "inbound")) >= 3
        })
        .unwrap();
    let in_recs = records(&db, "connection_refused", "inbound");
    assert_eq!(in_recs.len(), 1, "{db}");
    let r = in_recs[0];
    assert_eq!(r["count"], 3);
    assert_eq!(r["dst"], dst.as_str());
    assert_eq!(r["attribution"], "ip");
    assert_eq!(r["reason"], "NO_SOCKET");
    assert_eq!(r["peer"]["name"], "web");
    assert!(
        records(&db, "connection_refused", "outbound").is_empty(),
        "the server refused, it was not refused"
    );

    // The port that is listened on is not a refusal.
    let ok = node
        .run(
            client,
            &[
                "connect",
                &format!("{}:5432", node.pod(server).ip),
                "2",
                "10",
            ],
        )
        .unwrap();
    assert_eq!(refused_count(&ok), 0);

    // The human output carries the diagnosis.
    let table = agent.cli(&["query", "--pod", "web", "-n", "shop"]).unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(
        text.contains("connection_refused")
            && text.contains("Diagnosis")
            && text.contains("nothing listens on port 5433"),
        "{text}"
    );
    assert!(text.contains("lost no events"), "{text}");

    let exit = agent.stop().unwrap();
    assert!(exit.success(), "agent exits cleanly on SIGTERM: {exit}");
    assert!(agent.log().contains("detached"), "{}", agent.log());
}

#[test]
fn refusal_attributed_to_both_pods_cgroupfs_driver() {
    both_sides_of_a_refusal(CgroupDriver::Cgroupfs);
}

#[test]
fn refusal_attributed_to_both_pods_systemd_driver() {
    both_sides_of_a_refusal(CgroupDriver::Systemd);
}

#[test]
fn reused_ip_goes_to_the_new_pod() {
    let (mut node, agent, [old, client]) = NodeFixture::new()
        // Hand-made pods: the new pod takes the deleted one's IP, which a CNI's IPAM gives
        // back only after its whole range.
        .runtime(PodRuntime::HandMade)
        .pod("team", "old")
        .pod("team", "client")
        .start()
        .unwrap();
    let ip = node.pod(old).ip;
    let dst = format!("{ip}:8080");
    let out = node.run(client, &["connect", &dst, "2", "20"]).unwrap();
    assert_eq!(refused_count(&out), 2);
    agent
        .query_until("team", "old", WAIT, |v| {
            count_of(&records(v, "connection_refused", "inbound")) == 2
        })
        .unwrap();

    node.delete_pod(old);
    // The agent has seen the deletion before the IP comes back, and the new pod before traffic.
    agent.wait_pods(1, WAIT).unwrap();
    let new = node.add_pod_with_ip("team", "new", ip).unwrap();
    assert_eq!(node.pod(new).ip, ip);
    agent.wait_pods(2, WAIT).unwrap();
    let out = node.run(client, &["connect", &dst, "4", "20"]).unwrap();
    assert_eq!(
        refused_count(&out),
        4,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let v = agent
        .query_until("team", "new", WAIT, |v| {
            count_of(&records(v, "connection_refused", "inbound")) == 4
        })
        .unwrap();
    assert_eq!(
        records(&v, "connection_refused", "inbound")[0]["pod"]["uid"],
        node.pod(new).uid.as_str()
    );
    let old_answer = agent.query("team", "old").unwrap();
    assert_eq!(
        count_of(&records(&old_answer, "connection_refused", "inbound")),
        2,
        "the old pod keeps only its own: {old_answer}"
    );
    // The client's view: all six refusals, to the same destination, one record.
    let c = agent.query("team", "client").unwrap();
    assert_eq!(
        count_of(&records(&c, "connection_refused", "outbound")),
        6,
        "{c}"
    );
}

#[test]
fn api_server_down_at_start_then_events_attributed_when_it_returns() {
    let fixture = NodeFixture::new().pod("ops", "target").pod("ops", "caller");
    let (node, [server, client]) = fixture.node().unwrap();
    node.api.set_available(false);
    let agent = fixture.agent_unsynced(&node).unwrap();
    let status = agent.status().unwrap();
    assert_eq!(status["metadata"]["synced"], false);

    let dst = format!("{}:9999", node.pod(server).ip);
    node.run(client, &["connect", &dst, "2", "20"]).unwrap();
    // Collected but held back: visible in Status as waiting, not lost.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = agent.status().unwrap();
        if s["metadata"]["pending_events"].as_u64().unwrap_or(0) >= 4
            && s["metadata"]["last_error"].is_string()
        {
            assert!(s["metadata"]["retries"].as_u64().unwrap() >= 1, "{s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events not held while the API server is down: {s}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent.log().contains("retrying with backoff"),
        "{}",
        agent.log()
    );

    node.api.set_available(true);
    let v = agent
        .query_until("ops", "caller", Duration::from_secs(60), |v| {
            count_of(&records(v, "connection_refused", "outbound")) == 2
        })
        .unwrap();
    assert_eq!(
        records(&v, "connection_refused", "outbound")[0]["attribution"],
        "cgroup"
    );
    agent
        .query_until("ops", "target", WAIT, |v| {
            count_of(&records(v, "connection_refused", "inbound")) == 2
        })
        .unwrap();
    let s = agent.status().unwrap();
    assert_eq!(s["metadata"]["synced"], true);
    assert_eq!(s["loss"]["attribution_expired"], 0);
}

/// An attempt whose end no program saw (a run the kernel skipped, or a move to the table that
/// crossed the attempt's own answer on another CPU) stays in `CONNECTS`, holding a place of its
/// cgroup's share. A later socket at that address is not connecting: its reset is no refusal,
/// and the stale attempt, which names a process, must not become one. The harness plays the
/// skipped run: it puts back the entry of an attempt that was answered, as the kernel left it.
#[test]
fn a_stale_connect_entry_never_turns_a_reset_into_a_refusal() {
    let fixture = NodeFixture::new().pod("shop", "db").pod("shop", "web");
    let (mut node, [server, client]) = fixture.node().unwrap();
    node.start_process(server, &["accept-unread", "5432", "3000"])
        .unwrap();
    // SYNs are dropped at first: the attempt retransmits and moves to the table.
    node.nft_pod(
        server,
        "table inet sim_blackhole {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 5432 drop\n  }\n}\n",
    )
    .unwrap();
    let agent = fixture.agent(&node).unwrap();
    let dst = format!("{}:5432", node.pod(server).ip);
    let mut conn = node.spawn_piped(client, &["connect-hold", &dst]).unwrap();
    let tgid = conn.id();

    // PendingConnect: cgroup_id (8 bytes), pid, tgid, comm (16), syn_retransmits, error.
    let field = |v: &[u8], at: usize| u32::from_ne_bytes(v[at..at + 4].try_into().unwrap());
    let deadline = Instant::now() + WAIT;
    // This agent's maps (agents of tests running beside this one have their own).
    let agent_pid = agent.pid().unwrap();
    let connects = Map::of_process(agent_pid, "CONNECTS").unwrap();
    let shares = Map::of_process(agent_pid, "CONNECT_SHARES").unwrap();
    let slots = Map::of_process(agent_pid, "CONNECT_SLOTS").unwrap();
    let (key, mut stale) = 'found: loop {
        for (k, v) in connects.entries().unwrap() {
            if field(&v, 12) == tgid {
                break 'found (k, v);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the attempt never reached CONNECTS"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(field(&stale, 32) >= 1, "moved at a SYN retransmission");
    let cgroup: [u8; 8] = stale[..8].try_into().unwrap();
    assert!(
        shares.get(&cgroup).unwrap().is_some(),
        "the attempt's cgroup holds a place of its share"
    );

    // The SYNs get through: answered, the attempt leaves the table and gives its place back.
    node.nft_pod(server, "delete table inet sim_blackhole\n")
        .unwrap();
    let mut out = std::io::BufReader::new(conn.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    assert_eq!(connects.get(&key).unwrap(), None, "cleared at ESTABLISHED");

    // The run that was skipped: the entry is back, with its place of the share and its count
    // in its socket's slot (ConnectSlot: sk, seal, PendingConnect, then that count), naming a
    // process that is not the one whose connection is reset.
    stale[16..32].copy_from_slice(b"stale-attempt\0\0\0");
    connects.put(&key, &stale).unwrap();
    let index = connect_slot(u64::from_ne_bytes(key[..].try_into().unwrap())).to_ne_bytes();
    let mut slot = slots.get(&index).unwrap().unwrap();
    let tabled = u64::from_ne_bytes(slot[56..64].try_into().unwrap());
    slot[56..64].copy_from_slice(&(tabled + 1).to_ne_bytes());
    slots.put(&index, &slot).unwrap();
    let held = shares.get(&cgroup).unwrap().unwrap();
    let one_more = (i64::from_ne_bytes(held[..].try_into().unwrap()) + 1).to_ne_bytes();
    shares.put(&cgroup, &one_more).unwrap();

    // The server closes without reading the byte it was sent: the connection is reset.
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "reset", "the client saw its connection reset");
    conn.wait().unwrap();
    // Two drains of the flow tables later, whatever the reset recorded is in the store.
    agent.wait_more_drains(Drains::FlowTables, 2).unwrap();

    // A refusal that is one, from the same pod, beside it.
    let refused = format!("{}:5433", node.pod(server).ip);
    let out = node.run(client, &["connect", &refused, "1", "10"]).unwrap();
    assert_eq!(refused_count(&out), 1);
    let web = agent
        .query_until("shop", "web", WAIT, |v| {
            records(v, "connection_refused", "outbound")
                .iter()
                .any(|r| r["dst"] == refused.as_str())
        })
        .unwrap();
    let outbound = records(&web, "connection_refused", "outbound");
    assert_eq!(outbound.len(), 1, "only the real refusal: {web}");
    assert_eq!(outbound[0]["process"]["comm"], "sim-workload", "{web}");
    assert_eq!(
        connects.get(&key).unwrap(),
        None,
        "the stale attempt is let go"
    );
    assert_eq!(
        shares.get(&cgroup).unwrap().unwrap(),
        held,
        "its place goes back to the cgroup's share"
    );
    let slot = slots.get(&index).unwrap().unwrap();
    assert_eq!(
        u64::from_ne_bytes(slot[56..64].try_into().unwrap()),
        tabled,
        "and its count in the slot goes"
    );
}
