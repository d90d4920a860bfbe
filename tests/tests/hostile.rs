//! Privileged end to end: hostile input. gRPC clients that send garbage, huge, deeply nested or
//! lying messages, and watchers that open streams and never read; a process whose name is a
//! terminal escape sequence, in a pod and namespace with the longest names Kubernetes allows,
//! inside a cgroup nested past PATH_MAX; a pod flooding distinct flows while another pod's
//! evidence must survive. The agent stays up, bounded and answering; what it cannot keep it
//! counts.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use triage_agent_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use triage_agent_tests::{
    agent::{count_of, records, rss_mib},
    fixture::NodeFixture,
    simnode::CgroupDriver,
};

const WAIT: Duration = Duration::from_secs(20);
/// RSS the agent must stay under through every attack here (16 MiB empty, the store's
/// default capacity is far from full in these tests).
const RSS_BOUND_MIB: f64 = 128.0;

/// Every agent sees the whole machine's kernel events, and one machine plays several simulated
/// nodes: one test's flood is, to every other test's agent, a flood of pods it does not know
/// (kernel tables, rings and CPU shared with it), and the floods here are meant to push an agent
/// to its bounds. The tests of this file run one at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One gRPC call with a hand-made body (5-byte gRPC prefix included, or not): the grpc-status
/// the agent answered (from the trailers, or the headers of a trailers-only answer).
async fn raw_call(addr: &str, method: &str, body: Vec<u8>) -> anyhow::Result<String> {
    use http_body_util::BodyExt as _;

    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await?;
    tokio::spawn(conn);
    let request = hyper::Request::post(format!("http://{addr}/agent.v1.AgentService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Ok(status.to_str()?.to_owned());
    }
    let collected = response.into_body().collect().await?;
    let trailers = collected
        .trailers()
        .ok_or_else(|| anyhow::anyhow!("no trailers"))?;
    Ok(trailers
        .get("grpc-status")
        .ok_or_else(|| anyhow::anyhow!("no grpc-status"))?
        .to_str()?
        .to_owned())
}

/// A gRPC message frame: uncompressed flag, big-endian length, bytes.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Deterministic noise (xorshift), so a failure reproduces.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn hostile_grpc_clients_get_errors_and_non_reading_watchers_are_cut_off_while_the_agent_stays_bounded()
 {
    let _alone = one_at_a_time();
    let (node, mut agent, [db, web]) = NodeFixture::new()
        .dropping_udp("10000-30000")
        .start()
        .unwrap();
    let db_ip = node.pod(db).ip;
    let pid = agent.pid().unwrap();
    let addr = agent.addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Not HTTP/2 at all: the connection is closed, nothing else happens.
    for garbage in [
        noise(1 << 20, 1),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&garbage);
        let mut sink = Vec::new();
        // Ends (EOF or reset) instead of hanging: the server gave up on the connection.
        let _ = s.read_to_end(&mut sink);
        assert!(
            sink.len() < 1 << 16,
            "{} bytes answered to garbage",
            sink.len()
        );
    }

    // Well-formed HTTP/2, hostile gRPC bodies. Each gets an error status, none an OK.
    let huge_filter = {
        // QueryRequest.filter (field 1) holding EvidenceFilter.pod (field 2) of 20 MiB.
        let pod = vec![b'a'; 20 << 20];
        let mut inner = vec![0x12];
        push_varint(&mut inner, pod.len() as u64);
        inner.extend_from_slice(&pod);
        let mut outer = vec![0x0a];
        push_varint(&mut outer, inner.len() as u64);
        outer.extend_from_slice(&inner);
        outer
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        // A length prefix of 4 GiB - 1 with ten bytes behind it.
        ("declared 4 GiB", "Query", {
            let mut b = vec![0, 0xff, 0xff, 0xff, 0xff];
            b.extend_from_slice(&[0u8; 10]);
            b
        }),
        ("20 MiB message", "Query", frame(&huge_filter)),
        // 100,000 nested groups of an unknown field: the decoder's recursion limit.
        ("nested 100,000 deep", "Query", frame(&vec![0x7b; 100_000])),
        ("random bytes", "Query", frame(&noise(64 << 10, 7))),
        ("random bytes", "Watch", frame(&noise(4096, 9))),
        ("compressed flag, no encoding", "Status", {
            let mut b = frame(&[]);
            b[0] = 1;
            b
        }),
        ("truncated frame", "Status", vec![0, 0, 0]),
    ];
    for (what, method, body) in cases {
        let status = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), raw_call(&addr, method, body)).await
            })
            .unwrap_or_else(|_| panic!("{what}: no answer within 20 s"))
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_ne!(status, "0", "{what} to {method} was answered OK");
    }
    assert!(agent.status().is_ok(), "{}", agent.log());

    // Watchers that never read: 3 connections x 30 streams, past the 64-watcher limit.
    let endpoint = format!("http://{addr}");
    let (held, refused) = rt.block_on(async {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..3 {
            let mut client = AgentServiceClient::connect(endpoint.clone()).await.unwrap();
            for _ in 0..30 {
                match client
                    .watch(pb::WatchRequest {
                        filter: Some(pb::EvidenceFilter::default()),
                    })
                    .await
                {
                    Ok(stream) => held.push(stream),
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => refused += 1,
                    Err(s) => panic!("watch: {s}"),
                }
            }
        }
        (held, refused)
    });
    assert_eq!(held.len(), 64, "watchers beyond the limit were accepted");
    assert_eq!(refused, 26);
    let metric = |name: &str| -> f64 {
        let (_, body) = agent.http_get("/metrics").unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    assert_eq!(metric("triage_agent_watchers"), 64.0);

    // 20,000 new records (a drop to each of 10,000 ports, on both pods): far more updates
    // than any watcher's buffer holds. Meanwhile queries answer and RSS stays bounded.
    let sweep = node
        .spawn_piped(web, &["udp-sweep", &db_ip.to_string(), "10000", "19999"])
        .unwrap();
    let started = Instant::now();
    let (mut max_rss, mut slowest) = (0f64, Duration::ZERO);
    let v = loop {
        let asked = Instant::now();
        let v = agent.query("shop", "web").unwrap();
        slowest = slowest.max(asked.elapsed());
        max_rss = max_rss.max(rss_mib(pid));
        // Every watcher cut off: none left open (each cut one missed at least the update that
        // did not fit, and `watch_lagged` counts every update missed, not watchers).
        if records(&v, "packet_drop", "outbound").len() >= 1000
            && metric("triage_agent_watchers") == 0.0
        {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "watchers were not cut off: {}",
            agent.status().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(sweep.wait_with_output().unwrap().status.success());
    assert!(v["complete"] == true, "{v}");
    let lagged = agent.status().unwrap()["loss"]["watch_lagged"]
        .as_u64()
        .unwrap();
    assert!(lagged >= 64, "64 watchers cut off, {lagged} updates missed");
    assert!(
        slowest < Duration::from_secs(5),
        "a query took {slowest:?} with 64 stalled watchers"
    );
    assert!(max_rss < RSS_BOUND_MIB, "RSS reached {max_rss:.1} MiB");
    // Cut off watchers free their places: the gauge falls and a new watcher is accepted.
    let deadline = Instant::now() + WAIT;
    while metric("triage_agent_watchers") != 0.0 {
        assert!(Instant::now() < deadline, "watchers still counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(async {
        let mut client = AgentServiceClient::connect(endpoint.clone()).await.unwrap();
        client
            .watch(pb::WatchRequest {
                filter: Some(pb::EvidenceFilter::default()),
            })
            .await
            .expect("a watcher after the stalled ones were cut");
    });
    drop(held);
    eprintln!(
        "hostile gRPC: 64 stalled watchers cut off, peak RSS {max_rss:.1} MiB, slowest query {slowest:?}"
    );
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The longest names Kubernetes allows: a namespace is a DNS label (63), a pod name a DNS
/// subdomain (253).
fn longest_names() -> (String, String) {
    let namespace = format!("ns-{}", "a".repeat(60));
    let pod = [
        "p".repeat(63),
        "q".repeat(63),
        "r".repeat(63),
        "s".repeat(61),
    ]
    .join(".");
    assert_eq!((namespace.len(), pod.len()), (63, 253));
    (namespace, pod)
}

/// A process name made of what a terminal acts on: clear screen, set the window title, bell,
/// and a right-to-left override (13 of the 15 bytes a name can have).
const HOSTILE_NAME: &str = "\x1b[2J\x1b]0;x\x07\u{202e}";

#[test]
fn escape_sequences_longest_names_and_a_cgroup_past_path_max_are_shown_safely_and_attributed() {
    let _alone = one_at_a_time();
    let (namespace, pod) = longest_names();
    let (node, mut agent, [server, client]) = NodeFixture::new()
        .driver(CgroupDriver::Systemd)
        .pod(&namespace, "server")
        .pod(&namespace, &pod)
        .start()
        .unwrap();
    let server_ip = node.pod(server).ip;

    // 17 levels of 255-byte names below the container's cgroup: a path past PATH_MAX (4096).
    let base = node.container_cgroup_v2(client);
    let out = node
        .run(
            client,
            &[
                "deep-cgroup",
                &base.to_string_lossy(),
                "17",
                "as",
                HOSTILE_NAME,
                "connect",
                &format!("{server_ip}:5433"),
                "3",
                "20",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let path_len: usize = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("cgroup path ")?
                .strip_suffix(" bytes below the container")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(path_len > 4096, "cgroup path of {path_len} bytes");
    assert_eq!(text.matches("refused").count(), 3, "{text}");

    let v = agent
        .query_until(&namespace, &pod, WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) == 3
        })
        .unwrap();
    let r = records(&v, "connection_refused", "outbound")[0];
    // JSON carries the name exactly (its encoder escapes control characters).
    assert_eq!(r["process"]["comm"], HOSTILE_NAME, "{r}");
    assert_eq!(r["pod"]["name"], pod.as_str(), "{r}");
    assert_eq!(r["pod"]["namespace"], namespace.as_str(), "{r}");
    // Found from the cgroup: its nearest printable ancestor names the container.
    assert_eq!(r["container"], "app", "{r}");

    // The table and the diagnosis print no control character a terminal would act on.
    for args in [
        vec!["query", "--pod", &pod, "-n", &namespace],
        vec!["query", "--pod", &pod, "-n", &namespace, "-o", "wide"],
        vec!["status"],
    ] {
        let out = agent.cli(&args).unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            !shown.contains(['\x1b', '\x07', '\u{202e}']),
            "{args:?} printed a control character: {shown:?}"
        );
        if args[0] == "query" {
            assert!(shown.contains(&pod), "{shown}");
        }
        // The process column is `-o wide`'s: the name shown escaped.
        if args.contains(&"wide") {
            assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        }
    }
    let status = agent.status().unwrap();
    assert_eq!(status["loss"]["decode_errors"], 0, "{status}");
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn a_pod_flooding_distinct_flows_cannot_push_out_another_pods_evidence() {
    let _alone = one_at_a_time();
    let fixture = NodeFixture::new()
        .pod("attack", "sink")
        .pod("attack", "noisy")
        .pod("shop", "quiet")
        // A small store: 2,000 records, so 100 per pod and 500 per namespace.
        .agent_flags(["--store-capacity", "2000"]);
    let (node, [sink, noisy, quiet]) = fixture.node().unwrap();
    let sink_ip = node.pod(sink).ip;
    node.nft_node(&format!(
        "table bridge sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {sink_ip} udp dport 10000-60000 drop\n }}\n}}\n"
    ))
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    // The quiet pod's evidence first: three refusals.
    node.run(quiet, &["connect", &format!("{sink_ip}:5433"), "3", "20"])
        .unwrap();
    agent
        .query_until("shop", "quiet", WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) == 3
        })
        .unwrap();

    // The attack: 40,000 distinct flows (a dropped datagram to each of 40,000 ports), each a
    // record on the sender and on the receiver. The quiet pod fails once more meanwhile.
    let started = Instant::now();
    let sweep = node
        .spawn_piped(
            noisy,
            &["udp-sweep", &sink_ip.to_string(), "10000", "49999"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    node.run(quiet, &["connect", &format!("{sink_ip}:5434"), "1", "0"])
        .unwrap();
    assert!(sweep.wait_with_output().unwrap().status.success());
    // Everything the sweep made has reached the store (or been counted lost on the way): the
    // store's records and evictions stop moving.
    let mut last = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        std::thread::sleep(Duration::from_secs(1));
        let s = agent.status().unwrap();
        let now = (
            s["store_records"].as_u64().unwrap_or(0),
            s["loss"]["store_evicted"].as_u64().unwrap_or(0),
        );
        if now == last || Instant::now() > deadline {
            break s;
        }
        last = now;
    };
    let took = started.elapsed();

    // The quiet pod's first record survived the flood whole.
    let quiet_v = agent.query("shop", "quiet").unwrap();
    let refused = records(&quiet_v, "connection_refused", "outbound");
    let first = refused
        .iter()
        .find(|r| r["dst"] == format!("{sink_ip}:5433").as_str())
        .unwrap_or_else(|| panic!("the quiet pod's evidence was pushed out: {quiet_v}"));
    assert_eq!(first["count"], 3, "{quiet_v}");
    // Its failure during the flood is recorded, or counted where it was lost (the ring
    // buffer is shared by every pod: a flood of new flows can fill it).
    let during = refused
        .iter()
        .any(|r| r["dst"] == format!("{sink_ip}:5434").as_str());
    let ring_lost = status["loss"]["ring_buffer_full"].as_u64().unwrap_or(0)
        + status["loss"]["pipeline_full"].as_u64().unwrap_or(0);
    assert!(
        during || ring_lost > 0,
        "a refusal vanished uncounted: {quiet_v} {status}"
    );
    let kept = |ns: &str, pod: &str, direction: &str| {
        records(&agent.query(ns, pod).unwrap(), "packet_drop", direction).len()
    };
    let (noisy_kept, sink_kept) = (
        kept("attack", "noisy", "outbound"),
        kept("attack", "sink", "inbound"),
    );
    assert!(
        noisy_kept <= 100 && sink_kept <= 100,
        "the flood holds {noisy_kept} and {sink_kept} records, over the pod quota of 100"
    );
    let evicted = status["loss"]["store_evicted"].as_u64().unwrap_or(0);
    assert!(evicted > 0, "{status}");
    eprintln!(
        "fairness under a 40,000-flow flood ({took:?}): the quiet pod kept its record (and the \
         refusal during the flood: {during}); the flood's pods hold {noisy_kept} and \
         {sink_kept} records (quota 100 each); store {} records, {evicted} evicted and counted; \
         losses {}",
        status["store_records"], status["loss"]
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn a_port_scan_and_a_dropped_flood_against_a_pod_fold_and_leave_its_own_evidence() {
    let _alone = one_at_a_time();
    const LIMIT: u64 = 64 << 20;
    let fixture = NodeFixture::new()
        .pod("shop", "victim")
        .pod("shop", "other")
        .pod("kube-system", "resolver")
        .pod("attack", "scanner")
        // A small store: 2,000 records, so 100 per pod.
        .agent_flags(["--store-capacity", "2000"]);
    let (mut node, [victim, other, resolver, scanner]) = fixture.node().unwrap();
    let (victim_ip, other_ip, resolver_ip, scanner_ip) = (
        node.pod(victim).ip,
        node.pod(other).ip,
        node.pod(resolver).ip,
        node.pod(scanner).ip,
    );
    node.nft_node(&format!(
        "table bridge sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip saddr {scanner_ip} ip daddr {victim_ip} udp dport 10000-60000 drop\n }}\n}}\n"
    ))
    .unwrap();
    // A resolver that answers every name with NXDOMAIN.
    node.start_process(resolver, &["dns-upstream", "53", "3", "0"])
        .unwrap();
    node.set_cluster_dns(victim, &resolver_ip.to_string(), "")
        .unwrap();
    node.set_memory_limit(victim, LIMIT).unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    // The victim's own evidence first: a refusal, a failed lookup, an OOM kill.
    node.run(victim, &["connect", &format!("{other_ip}:5433"), "1", "0"])
        .unwrap();
    node.run(victim, &["resolve", "payments", "1", "0"])
        .unwrap();
    // Killed by the OOM killer at the limit.
    let killed = node
        .spawn(victim, &["alloc", "300"])
        .unwrap()
        .wait()
        .unwrap();
    assert!(!killed.success(), "{killed:?}");
    let own = |v: &serde_json::Value| {
        (
            count_of(&records(v, "connection_refused", "outbound")),
            records(v, "dns", "outbound").len(),
            v["evidence"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|e| e["kind"] == "oom_kill").count()),
        )
    };
    let before = agent
        .query_until("shop", "victim", WAIT, |v| {
            let (refused, dns, oom) = own(v);
            refused == 1 && dns > 0 && oom == 1
        })
        .unwrap();

    // The attack: a connect scan of 40,000 closed ports, then 40,000 datagrams (40 rounds
    // over 1,000 ports) that the node's policy drops. (40,000 distinct dropped flows at once
    // overflow the kernel's shared flow table, counted as flow_table_full: the kernel tables'
    // bounds, not the store's, are tested apart.)
    let scan = node
        .run(
            scanner,
            &["tcp-sweep", &victim_ip.to_string(), "1", "40000"],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&scan.stdout).trim(),
        "refused 40000 other 0",
        "{scan:?}"
    );
    let flood = node
        .run(
            scanner,
            &["udp-sweep", &victim_ip.to_string(), "10000", "10999", "40"],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&flood.stdout).trim(), "sent 40000");

    // Every scanned port is one refusal on the victim, every datagram one drop, all counted
    // exactly, in a handful of records.
    let inbound = |v: &serde_json::Value, kind: &str| count_of(&records(v, kind, "inbound"));
    let after = agent
        .query_until("shop", "victim", Duration::from_secs(60), |v| {
            inbound(v, "connection_refused") == 40_000 && inbound(v, "packet_drop") == 40_000
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {} / losses {}",
                agent.query("shop", "victim").unwrap(),
                agent.status().unwrap()["loss"]
            )
        });
    for kind in ["connection_refused", "packet_drop"] {
        let rs = records(&after, kind, "inbound");
        assert!(rs.len() <= 33, "{kind}: {} records", rs.len());
        let folded: Vec<_> = rs.iter().filter(|r| r["folded"] == true).collect();
        assert_eq!(folded.len(), 1, "{kind}: {after}");
        let f = folded[0];
        assert_eq!(f["senders"][0]["ip"], scanner_ip.to_string(), "{f}");
        assert_eq!(f["senders"][0]["count"], f["count"], "one sender: {f}");
        assert_eq!(f["other_senders_count"], 0, "{f}");
        assert_eq!(f["ports_more"], true, "{f}");
    }
    // The victim's own evidence is all still there.
    let (kept, was) = (own(&after), own(&before));
    assert!(
        kept.0 == 1 && kept.2 == 1 && kept.1 >= was.1,
        "{was:?} -> {kept:?}: {after}"
    );
    assert_eq!(after["agents"][0]["evicted_in_window"], 0, "{after}");
    let table = agent
        .cli(&["query", "--pod", "victim", "-n", "shop"])
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("port scan"), "{text}");
    assert!(
        text.contains("folded: 1 sender, more than 64 ports"),
        "{text}"
    );
    eprintln!(
        "a 40,000-port scan and a 40,000-datagram flood: victim holds {} records; losses {}",
        after["evidence"].as_array().map_or(0, Vec::len),
        agent.status().unwrap()["loss"]
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn a_pod_saturating_the_kernels_tables_and_rings_loses_only_its_own_evidence() {
    let _alone = one_at_a_time();
    let fixture = NodeFixture::new()
        .pod("attack", "sink")
        .pod("attack", "noisy")
        .pod("shop", "quiet")
        .pod("kube-system", "resolver");
    let (mut node, [sink, noisy, quiet, resolver]) = fixture.node().unwrap();
    let (sink_ip, resolver_ip) = (node.pod(sink).ip, node.pod(resolver).ip);
    // SYNs to sink:5432 and queries to sink:53 vanish on the node's bridge: attempts wait.
    node.nft_node(&format!(
        "table bridge sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {sink_ip} tcp dport 5432 drop\n  ip daddr {sink_ip} udp dport 53 drop\n }}\n}}\n"
    ))
    .unwrap();
    // A resolver that answers every name with NXDOMAIN, for the quiet pod.
    node.start_process(resolver, &["dns-upstream", "53", "3", "0"])
        .unwrap();
    node.set_cluster_dns(quiet, &resolver_ip.to_string(), "")
        .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    // The noisy pod: 17,000 connects held waiting (more than the whole connect table), a
    // sweep of 40,000 closed ports (as many distinct refusals), and 30,000 DNS queries to a
    // resolver that never answers (more than the held-query slots and the DNS ring).
    let mut hold = node
        .spawn_piped(
            noisy,
            &["hold-connects", &format!("{sink_ip}:5432"), "17000", "30"],
        )
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hold.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "holding 17000", "{line}");
    let sweep = node
        .spawn_piped(
            noisy,
            &["tcp-sweep", &sink_ip.to_string(), "10000", "49999"],
        )
        .unwrap();
    // The DNS flood and the quiet pod's failures while the agent is stopped (descheduled):
    // its readers fall behind, the rings fill past half, where each pod gets only its share of
    // the rest, and no drain comes to empty the flow table.
    let pid = libc::pid_t::try_from(agent.pid().unwrap()).unwrap();
    // SAFETY: a signal to the agent process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let flood = node.run(
        noisy,
        &[
            "dns-flood",
            &format!("{sink_ip}:53"),
            "30000",
            "flood.example",
        ],
    );
    // Meanwhile the quiet pod fails three ways: refused, timed out, NXDOMAIN.
    let quiet_runs = [
        node.run(quiet, &["connect", &format!("{sink_ip}:5433"), "1", "0"]),
        node.run(
            quiet,
            &["connect", &format!("{sink_ip}:5432"), "1", "0", "1000"],
        ),
        node.run(quiet, &["resolve", "payments", "1", "0"]),
    ];
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(
        String::from_utf8_lossy(&flood.unwrap().stdout).trim(),
        "sent 30000"
    );
    for run in quiet_runs {
        run.unwrap();
    }
    let quiet_v = agent
        .query_until("shop", "quiet", WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) >= 1
                && count_of(&records(v, "connection_timeout", "outbound")) >= 1
                && !records(v, "dns", "outbound").is_empty()
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: the quiet pod's evidence was lost: {} / losses {}",
                agent.query("shop", "quiet").unwrap(),
                agent.status().unwrap()["loss"]
            )
        });
    // The quiet pod lost nothing of its own.
    assert_eq!(quiet_v["pod_losses"], serde_json::json!([]), "{quiet_v}");

    // What the noisy pod lost is counted against it, in its answer.
    let noisy_v = agent
        .query_until("attack", "noisy", WAIT, |v| {
            let l = &v["pod_losses"][0];
            l["connects"].as_u64().unwrap_or(0) > 0 && l["dns_packets"].as_u64().unwrap_or(0) > 0
        })
        .unwrap_or_else(|e| panic!("{e}: {}", agent.query("attack", "noisy").unwrap()));
    let lost = &noisy_v["pod_losses"][0];
    assert_eq!(lost["pod"]["name"], "noisy", "{lost}");
    // At most its share (2,048) of the 17,000 attempts was remembered.
    assert!(
        lost["connects"].as_u64().unwrap_or(0) >= 17_000 - 2_048,
        "{lost}"
    );
    let table = agent
        .cli(&["query", "--pod", "noisy", "-n", "attack"])
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("the kernel lost") && text.contains("connect attempt(s) not watched"),
        "{text}"
    );
    let status = agent.status().unwrap();
    eprintln!(
        "one pod saturating the kernel's tables: the quiet pod kept its refusal, timeout and DNS \
         failure; the noisy pod lost {lost}; node losses {}",
        status["loss"]
    );
    let _ = hold.kill();
    let _ = hold.wait();
    assert!(sweep.wait_with_output().unwrap().status.success());
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

#[test]
fn a_pod_writing_another_pods_source_address_is_named_for_its_drops_not_the_other_pod() {
    let _alone = one_at_a_time();
    let fixture = NodeFixture::new()
        .pod("shop", "victim")
        .pod("attack", "spoofer")
        .pod("data", "target")
        .pod("data", "udp-only");
    let (node, [victim, spoofer, target, udp_only]) = fixture.node().unwrap();
    let (victim_ip, target_ip) = (node.pod(victim).ip, node.pod(target).ip);
    node.nft_node(&format!(
        "table bridge sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {target_ip} udp dport 9999 drop\n }}\n}}\n"
    ))
    .unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    // The spoofer has connected somewhere before (as nearly every pod does): the kernel knows
    // its network namespace. Then it writes the victim's address on datagrams the node's
    // policy drops.
    node.run(
        spoofer,
        &["connect", &format!("{target_ip}:5433"), "1", "0"],
    )
    .unwrap();
    let out = node
        .run(
            spoofer,
            &[
                "spoof-udp",
                &victim_ip.to_string(),
                &target_ip.to_string(),
                "9999",
                "5",
            ],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sent 5");
    // A pod that never connected anywhere sends real datagrams the policy drops: its way in
    // cannot be checked, so its drops are named by their source address, unverified.
    node.run(udp_only, &["udp", &format!("{target_ip}:9999"), "3"])
        .unwrap();

    let spoofer_v = agent
        .query_until("attack", "spoofer", WAIT, |v| {
            count_of(&records(v, "packet_drop", "outbound")) == 5
        })
        .unwrap_or_else(|e| panic!("{e}: {}", agent.query("attack", "spoofer").unwrap()));
    let d = records(&spoofer_v, "packet_drop", "outbound")[0];
    assert_eq!(
        d["src"].as_str().unwrap().split(':').next(),
        Some(victim_ip.to_string().as_str()),
        "the record shows the forged source: {d}"
    );
    assert_eq!(d["attribution"], "cgroup", "{d}");
    let udp_v = agent
        .query_until("data", "udp-only", WAIT, |v| {
            count_of(&records(v, "packet_drop", "outbound")) == 3
        })
        .unwrap();
    assert_eq!(
        records(&udp_v, "packet_drop", "outbound")[0]["attribution"],
        "unverified",
        "{udp_v}"
    );
    // Nothing of it is the victim's.
    let victim_v = agent.query("shop", "victim").unwrap();
    assert_eq!(
        victim_v["evidence"],
        serde_json::json!([]),
        "the victim is blamed for drops it never sent: {victim_v}"
    );
    // The target's inbound records are there, naming who the packets claimed to be from.
    let target_v = agent
        .query_until("data", "target", WAIT, |v| {
            count_of(&records(v, "packet_drop", "inbound")) == 8
        })
        .unwrap();
    eprintln!(
        "spoofed source: spoofer {} / target {}",
        spoofer_v["evidence"], target_v["evidence"]
    );
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}
