//! Privileged end to end: Prometheus scrapes a running agent. The exposition parses with a
//! Prometheus text-format parser, every documented metric is there with its type, evidence is
//! counted by kind and namespace, and no label could carry a pod, an address or a name.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios panic with context; helpers shared by tests are not #[test] fns"
)]

use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    time::{Duration, Instant},
};

use triage_agent_tests::fixture::NodeFixture;

const WAIT: Duration = Duration::from_secs(20);

/// What Prometheus 2.42 sends: OpenMetrics first, the text format as a fallback.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A scrape as Prometheus makes it (OpenMetrics).
fn scrape(addr: &str) -> (String, String) {
    scrape_accepting(addr, Some(PROMETHEUS_ACCEPT))
}

fn scrape_accepting(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_owned(), body.to_owned())
}

/// The metric names a rules file or dashboard reads (`up` is Prometheus's own).
fn metric_names(source: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["triage_agent_", "process_"] {
        let mut rest = source;
        while let Some(at) = rest.find(prefix) {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn prometheus_scrapes_low_cardinality_metrics_of_a_running_agent() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("evidence.db");
    let (node, mut agent, [server, client]) = NodeFixture::new()
        .pod("shop", "db")
        .pod("shop", "web")
        .agent_flags(["--store-path", store.to_str().unwrap()])
        .start()
        .unwrap();
    let metrics = agent.metrics.clone();
    let dst = format!("{}:5433", node.pod(server).ip);
    node.run(client, &["connect", &dst, "3", "10"]).unwrap();

    let deadline = Instant::now() + WAIT;
    let (head, body, parsed) = loop {
        let (head, body) = scrape(&metrics);
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        let refused = sample(
            &parsed,
            "triage_agent_evidence_occurrences_total",
            &[("kind", "connection_refused"), ("namespace", "shop")],
        );
        if refused.is_some_and(|n| n >= 6.0) || Instant::now() > deadline {
            break (head, body, parsed);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    // Three refusals, each a record on the client (outbound) and on the server (inbound).
    assert_eq!(
        sample(
            &parsed,
            "triage_agent_evidence_occurrences_total",
            &[("kind", "connection_refused"), ("namespace", "shop")]
        ),
        Some(6.0),
        "{body}"
    );
    for (name, kind) in [
        ("triage_agent_build_info", "gauge"),
        ("triage_agent_packet_drops", "counter"),
        ("triage_agent_dns_failures", "counter"),
        ("triage_agent_connection_failures", "counter"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("triage_agent_evidence_occurrences", "counter"),
        ("triage_agent_loss", "counter"),
        ("triage_agent_kernel_events", "counter"),
        ("triage_agent_dns_packets_parsed", "counter"),
        ("triage_agent_dns_lookups_matched_in_kernel", "counter"),
        ("triage_agent_probe_attached", "gauge"),
        ("triage_agent_signal_mode", "gauge"),
        ("triage_agent_store_records", "gauge"),
        ("triage_agent_store_capacity", "gauge"),
        ("triage_agent_store_expired", "counter"),
        ("triage_agent_watchers", "gauge"),
        ("triage_agent_metadata_synced", "gauge"),
        ("triage_agent_metadata_last_sync_timestamp_seconds", "gauge"),
        ("triage_agent_metadata_retries", "gauge"),
        ("triage_agent_pods", "gauge"),
        ("triage_agent_attribution_pending_events", "gauge"),
        ("triage_agent_bpf_stats_enabled", "gauge"),
        ("triage_agent_bpf_program_run_time_seconds", "counter"),
        ("triage_agent_bpf_program_runs", "counter"),
        ("triage_agent_store_disk_healthy", "gauge"),
        ("triage_agent_store_disk_used_bytes", "gauge"),
        ("triage_agent_store_disk_max_bytes", "gauge"),
        ("triage_agent_store_disk_commits", "counter"),
        (
            "triage_agent_store_disk_last_commit_timestamp_seconds",
            "gauge",
        ),
        ("triage_agent_store_disk_pending_changes", "gauge"),
        ("triage_agent_store_disk_restored_records", "gauge"),
        ("triage_agent_connections_open", "gauge"),
        ("triage_agent_connections_refused", "counter"),
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} ({kind}) missing:\n{body}"
        );
    }
    // Every loss point is there by name, and every probe with its state.
    for point in [
        "ring_buffer_full",
        "pipeline_full",
        "store_evicted",
        "dns_ring_full",
        "decode_errors",
        "attribution_expired",
        "watch_lagged",
    ] {
        assert!(
            sample(&parsed, "triage_agent_loss_total", &[("point", point)]).is_some(),
            "{point}: {body}"
        );
    }
    assert_eq!(
        sample(
            &parsed,
            "triage_agent_probe_attached",
            &[("program", "tcp_receive_reset")]
        ),
        Some(1.0)
    );
    // Every attached program's run time and count, read from the agent's own program
    // descriptors: the DaemonSet's capabilities cannot list the kernel's programs.
    for program in [
        "tcp_receive_reset",
        "kfree_skb",
        "dns_egress",
        "mark_victim",
    ] {
        for metric in [
            "triage_agent_bpf_program_runs_total",
            "triage_agent_bpf_program_run_time_seconds_total",
        ] {
            assert!(
                sample(&parsed, metric, &[("program", program)]).is_some(),
                "{metric} {program}: {body}"
            );
        }
    }
    // Each signal in exactly one mode: on this host, every one full.
    for signal in ["connection_refused", "packet_drop", "dns", "oom_kill"] {
        for (mode, value) in [("full", 1.0), ("degraded", 0.0), ("off", 0.0)] {
            assert_eq!(
                sample(
                    &parsed,
                    "triage_agent_signal_mode",
                    &[("signal", signal), ("mode", mode)]
                ),
                Some(value),
                "{signal} {mode}: {body}"
            );
        }
    }
    assert_eq!(
        sample(&parsed, "triage_agent_metadata_synced", &[]),
        Some(1.0)
    );
    assert_eq!(sample(&parsed, "triage_agent_pods", &[]), Some(2.0));
    // Both listeners' connections: this scrape's own is open on the metrics listener.
    for listener in ["metrics", "grpc"] {
        assert_eq!(
            sample(
                &parsed,
                "triage_agent_connections_refused_total",
                &[("listener", listener)]
            ),
            Some(0.0),
            "{listener}: {body}"
        );
    }
    // The node-level counters: every refusal the agent recorded, by kind and cause, whatever
    // its namespace: the six above, and any other test's running at once on this host, which
    // the agent sees tied to no pod of its node.
    let refused_total = |metric: &str| -> f64 {
        parsed
            .samples
            .iter()
            .filter(|s| s.metric == metric && s.labels.get("kind") == Some("connection_refused"))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .sum()
    };
    let refusals = refused_total("triage_agent_connection_failures_total");
    assert!(refusals >= 6.0, "{body}");
    assert_eq!(
        refusals,
        refused_total("triage_agent_evidence_occurrences_total"),
        "{body}"
    );
    // The process's own figures, as every exporter has them.
    let rss = sample(&parsed, "process_resident_memory_bytes", &[]).unwrap_or_default();
    assert!(rss > 1e6 && rss < 1e9, "rss {rss}");
    let started = sample(&parsed, "process_start_time_seconds", &[]).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 600.0 && started <= now + 1.0,
        "start {started}"
    );

    // Without OpenMetrics in Accept (curl, promtool): Prometheus's text format 0.0.4, which
    // `promtool check metrics` accepts.
    let (head, text) = scrape_accepting(&metrics, None);
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        text.contains("# TYPE triage_agent_loss_total counter\n") && !text.contains("# EOF"),
        "{text}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus; cargo xtask setup)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the shipped alert rules and dashboard read is one the agent exports.
    // (The families of the text format, so a counter with no sample yet counts too.)
    let exported: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for file in [
        "deploy/prometheus/rules.yaml",
        "deploy/grafana/triage-agent.json",
    ] {
        let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path).unwrap();
        for name in metric_names(&source) {
            assert!(
                exported.contains(name.as_str()),
                "{file} reads {name}, which the agent does not export"
            );
        }
    }

    // Low cardinality: only these label names, and no value that is an address or a pod.
    let allowed: HashSet<&str> = [
        "kind",
        "namespace",
        "point",
        "program",
        "signal",
        "mode",
        "version",
        "node",
        "kernel",
        "listener",
        "reason",
        "direction",
        "outcome",
        "cause",
    ]
    .into();
    let pods: Vec<String> = [server, client]
        .iter()
        .map(|i| node.pod(*i).name.clone())
        .collect();
    for s in &parsed.samples {
        for (k, v) in s.labels.iter() {
            assert!(allowed.contains(k.as_str()), "label {k} on {}", s.metric);
            assert!(
                v.parse::<std::net::IpAddr>().is_err() && !v.contains(':') || k == "kernel",
                "{k}={v}"
            );
            assert!(!pods.contains(v), "a pod name as a label value: {k}={v}");
        }
    }
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}

/// Prometheus itself (Debian's 2.42) scrapes a running agent with the shipped alert rules
/// loaded: the drop, DNS and connection counters it stores move after provoked failures (a
/// policy drop, an NXDOMAIN lookup, a refusal), read back through its HTTP API, and every
/// rule loads healthy.
#[test]
fn a_real_prometheus_scrapes_the_agent_and_loads_its_rules() {
    let fixture = NodeFixture::new().dropping_udp("7000");
    let (mut node, [db, web]) = fixture.node().unwrap();
    node.add_dns_server("coredns", "10.96.0.10", &["--local=/#/"])
        .unwrap();
    node.set_cluster_dns(web, "10.96.0.10", "").unwrap();
    let mut agent = fixture.agent(&node).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let port = triage_agent_tests::agent::free_port().unwrap();
    let rules = format!(
        "{}/../deploy/prometheus/rules.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: triage-agent\n    static_configs:\n      - targets: ['{}']\n",
            agent.metrics
        ),
    )
    .unwrap();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian's prometheus; cargo xtask setup)");
    let api = |path: &str| -> Option<serde_json::Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(WAIT)).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        // Chunked or not: the JSON object is between the outer braces.
        let body = &body[body.find('{')?..=body.rfind('}')?];
        serde_json::from_str(body).ok()
    };
    let value = |query: &str| -> Option<f64> {
        let query: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let v = api(&format!("/api/v1/query?query={query}"))?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };

    // The failures: UDP to db's dropped port, a lookup of a name that does not exist, a
    // connection to a port nothing listens on.
    let db_ip = node.pod(db).ip;
    node.run(web, &["udp", &format!("{db_ip}:7000"), "5"])
        .unwrap();
    node.run(web, &["resolve", "nosuch", "1", "50"]).unwrap();
    node.run(web, &["connect", &format!("{db_ip}:5433"), "2", "10"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let queries = [
        r#"sum(triage_agent_packet_drops_total{reason="NETFILTER_DROP"})"#,
        r#"sum(triage_agent_dns_failures_total{outcome="nxdomain"})"#,
        r#"sum(triage_agent_connection_failures_total{kind="connection_refused"})"#,
        r#"up{job="triage-agent"}"#,
    ];
    let seen = loop {
        let seen: Vec<Option<f64>> = queries.iter().map(|q| value(q)).collect();
        if seen.iter().all(|v| v.is_some_and(|v| v > 0.0)) || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    for (query, v) in queries.iter().zip(&seen) {
        assert!(v.is_some_and(|v| v > 0.0), "{query} = {v:?}\n{}", log());
    }
    // The shipped rules load and evaluate.
    let groups = api("/api/v1/rules").unwrap();
    let rules: Vec<&serde_json::Value> = groups["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 5, "{groups}");
    for r in rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
}
