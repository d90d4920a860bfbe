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

fn scrape(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_owned(), body.to_owned())
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
        ("triage_agent_info", "gauge"),
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
        ("triage_agent_metadata_last_sync_age_seconds", "gauge"),
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
