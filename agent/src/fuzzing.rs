//! The bodies of the fuzz targets, one function per target taking the input bytes. Each
//! cargo-fuzz target in fuzz/fuzz_targets is a one-line call to its function here, so the same
//! code runs under libFuzzer with sanitizers (`cargo xtask fuzz`) and as an ordinary test that
//! replays every checked-in seed (agent/tests/fuzz_seeds.rs, run by `cargo test`).
//!
//! Every function takes arbitrary bytes: it must not panic on any input, and panics (through
//! `assert!`) only where a property of the code under test does not hold. [`TARGETS`] names
//! them; the test fails when it and the fuzz targets or seed directories disagree. The fuzz
//! crate builds the agent with `cluster` and `disk-store` (no eBPF toolchain needed).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use prost::Message as _;
use triage_agent_proto::v1 as pb;

use crate::{
    cgroup::path::{
        KubeletLayout, KubeletRoot, container_id_of, parse_cgroup_path, strip_runtime_scheme,
    },
    cli::{client, render},
    diagnose,
    dns::{self, TrackConfig, Tracker, packet},
    evidence::{
        Filter, Protocol,
        fixtures::{dropped, oom_killed, refused, t, throttled, timeout},
    },
    kernel::{btf::Btf, mountinfo, tracefs},
    loss::{Counters, Loss},
    probes::decode,
    probes::dns_repeats::{RepeatChange, Repeated},
    samplers::cgroupfs,
    store::{Store, StoreConfig},
};

/// A fuzz target's body: takes any bytes.
pub type Body = fn(&[u8]);

/// Every fuzz target by its name in fuzz/Cargo.toml, which is also its seed directory's name
/// (fuzz/seeds/<name>).
pub const TARGETS: &[(&str, Body)] = &[
    ("btf", btf),
    ("cgroup_files", cgroup_files),
    ("cgroup_path", cgroup_path),
    ("dns_packet", dns_packet),
    ("dns_sequence", dns_sequence),
    ("grpc_evidence", grpc_evidence),
    ("mountinfo", mountinfo),
    ("otlp_env", otlp_env),
    #[cfg(feature = "cluster")]
    ("policy_eval", policy_eval),
    ("render_answer", render_answer),
    ("ring_record", ring_record),
    ("store_events", store_events),
    #[cfg(feature = "disk-store")]
    ("store_readback", store_readback),
    ("tracefs_format", tracefs_format),
];

/// Kernel BTF blobs: parsing and lookups never panic or hang.
pub fn btf(data: &[u8]) {
    if let Ok(btf) = Btf::from_bytes(data.to_vec()) {
        let _ = btf.member_offset("sk_buff", "data");
        let _ = btf.member_offset("a", "b.c.d");
        let _ = btf.enum_values("sk_rst_reason");
    }
}

/// cgroupfs file contents (cpu.stat, cpu.max, memory.events, memory.oom_control, pressure
/// files, ...) in both versions: parsing never panics, whatever a file says.
pub fn cgroup_files(data: &[u8]) {
    for v2 in [false, true] {
        let _ = cgroupfs::cpu_stat(data, v2);
        let _ = cgroupfs::oom_counts(data, v2);
    }
    let _ = cgroupfs::cpu_max(data);
    let (quota, period) = data.split_at(data.len() / 2);
    let _ = cgroupfs::cfs_quota(quota, period);
    let _ = cgroupfs::bytes_or_max(data);
    let _ = cgroupfs::flag(data);
    let _ = cgroupfs::psi_some_avg10(data);
    let _ = cgroupfs::keyed(data, "nr_throttled");
    let _ = cgroupfs::keyed(data, "");
}

/// Cgroup paths (any process can create cgroups below its own): parsing never panics, and a pod
/// identity is only ever taken from text that is in the path.
pub fn cgroup_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let kind = KubeletLayout::under(
        &KubeletRoot::new(std::path::Path::new("/kubelet")),
        ["/sys/fs/cgroup"],
    );
    for id in [parse_cgroup_path(path), kind.parse(path)]
        .into_iter()
        .flatten()
    {
        assert!(!id.pod_uid.is_empty());
        // Container ids are normalised to lower case.
        if let Some(c) = &id.container_id {
            assert!(
                path.to_ascii_lowercase().contains(&c.to_ascii_lowercase()),
                "container id {c} not in {path}"
            );
        }
    }
    for segment in path.split('/') {
        let _ = container_id_of(segment);
    }
    let _ = strip_runtime_scheme(path);
}

/// DNS ring records and payloads: decoding, parsing and matching never panic, whatever the
/// bytes (the kernel copies them from any socket on a DNS port).
pub fn dns_packet(data: &[u8]) {
    let _ = packet::parse(Protocol::Udp, data);
    let _ = packet::parse(Protocol::Tcp, data);
    let counters = Arc::new(Counters::default());
    let mut tracker = Tracker::new(TrackConfig::default(), counters.clone());
    let is_dns = |port| port == 53;
    // As a whole record, then as the payload of well-formed records from both sides.
    let _ = dns::handle(data, &mut tracker, &counters, &is_dns);
    let client = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000));
    let server = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 53));
    let len = data.len() as u64;
    for (side, src, dst) in [
        (packet::Side::Egress, client, server),
        (packet::Side::Ingress, server, client),
    ] {
        let record = packet::encode(&packet::Captured {
            boot_ns: len,
            cgroup_id: 7,
            side,
            protocol: Protocol::Udp,
            src,
            dst,
            wire_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
            payload: data,
            // Some as a query the kernel held, with what a server did with it.
            server: data
                .first()
                .filter(|b| *b & 1 == 1)
                .map(|b| packet::ServerSide {
                    cgroup: (b & 2 != 0).then_some(9),
                    answered: b & 4 != 0,
                }),
        });
        let _ = dns::handle(&record, &mut tracker, &counters, &is_dns);
    }
    // Failures the tracker hands to the kernel, repeated as the kernel would count them.
    for change in tracker.take_repeat_changes() {
        if let RepeatChange::Count(key) = change {
            let _ = tracker.repeated_in_kernel(Repeated {
                key,
                count: len,
                latency_sum: Duration::from_nanos(len.wrapping_mul(1_000_003)),
                latency_max: Duration::from_nanos(len),
                first_ns: len,
                last_ns: len / 2,
            });
        }
    }
    tracker.age_repeats();
    let _ = tracker.tick(u64::MAX / 2);
    let _ = tracker.take_tallies();
}

/// Evidence from a peer over gRPC: protobuf decoding and conversion never panic.
pub fn grpc_evidence(data: &[u8]) {
    if let Ok(msg) = pb::QueryResponse::decode(data) {
        for e in msg.evidence {
            let _ = crate::codec::evidence_from_pb(e);
        }
    }
}

/// /proc/self/mountinfo lines: parsing never panics and every mount it yields is made of the
/// input's own text.
pub fn mountinfo(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for m in mountinfo::mounts(text) {
        assert!(text.contains(m.point) && text.contains(m.fstype));
        let _ = m.has_option("memory");
        let _ = m.has_option("");
    }
}

/// The NetworkPolicy evaluator on arbitrary policies, pods and namespaces (as the API server's
/// JSON would bring them) and arbitrary flows: it never panics, and a verdict of `denied` always
/// names a policy. The first 6 bytes choose the flow, the rest is the JSON.
#[cfg(feature = "cluster")]
pub fn policy_eval(data: &[u8]) {
    use k8s_openapi::api::{
        core::v1::{Namespace, Pod},
        networking::v1::NetworkPolicy,
    };

    use crate::policy::{
        Flow, Proto, Snapshot, Verdict,
        admin::{Tier, TierPolicy},
        evaluate,
    };

    #[derive(serde::Deserialize)]
    struct Input {
        #[serde(default)]
        policies: Vec<NetworkPolicy>,
        #[serde(default)]
        namespaces: Vec<Namespace>,
        #[serde(default)]
        pods: Vec<Pod>,
        #[serde(default)]
        admin: Vec<serde_json::Value>,
        #[serde(default)]
        baseline: Vec<serde_json::Value>,
    }

    let Some((&[src, dst, port_lo, port_hi, proto, _], json)) = data.split_first_chunk::<6>()
    else {
        return;
    };
    let Ok(input) = serde_json::from_slice::<Input>(json) else {
        return;
    };
    let snapshot = Snapshot {
        policies: input.policies,
        namespaces: input.namespaces,
        pods: input.pods,
        admin: input
            .admin
            .iter()
            .filter_map(|o| TierPolicy::from_object(o, Tier::Admin).ok())
            .collect(),
        baseline: input
            .baseline
            .iter()
            .filter_map(|o| TierPolicy::from_object(o, Tier::Baseline).ok())
            .collect(),
        unevaluated: Vec::new(),
    };
    let flow = Flow {
        src: Ipv4Addr::new(10, 0, 0, src % 8).into(),
        dst: Ipv4Addr::new(10, 0, 0, dst % 8).into(),
        port: u16::from_le_bytes([port_lo, port_hi]),
        proto: match proto % 3 {
            0 => Proto::Tcp,
            1 => Proto::Udp,
            _ => Proto::Sctp,
        },
    };
    let e = evaluate(&snapshot, &flow);
    if e.verdict == Verdict::Denied {
        assert!(!e.policies.is_empty(), "denied without a policy");
    }
    let _ = serde_json::to_string(&e);
}

/// Arbitrary gRPC answers from an agent: converting, diagnosing and rendering them (table and
/// JSON, query and status) never panics, and tables never carry control characters.
pub fn render_answer(data: &[u8]) {
    let printable = |table: &str| !table.chars().any(|c| c != '\n' && c.is_control());
    if let Ok(msg) = pb::QueryResponse::decode(data)
        && let Ok(answer) = client::answer_from_pb("http://fuzz:1", msg)
    {
        let findings = diagnose::diagnose(&answer.evidence);
        let evidence = answer.evidence.clone();
        let answers = [answer];
        let table = render::query_table("p", "ns", None, &evidence, &findings, &answers, &[]);
        assert!(printable(&table), "control character in {table:?}");
        let _ = render::query_json(&evidence, &findings, &answers, &[]).to_string();
        for e in &evidence {
            let _ = crate::evidence::line::watch_line(e);
        }
    }
    if let Ok(status) = pb::StatusResponse::decode(data) {
        let statuses = [("fuzz:1".to_owned(), status)];
        let table = render::status_table(&statuses);
        assert!(printable(&table), "control character in {table:?}");
        let _ = render::status_json(&statuses).to_string();
    }
}

/// Ring buffer records from the kernel: decoding never panics, whatever the bytes.
pub fn ring_record(data: &[u8]) {
    let _ = decode::decode(data);
}

/// The store's total capacity in [`store_events`].
const STORE_CAPACITY: usize = 40;

/// The evidence store driven by arbitrary sequences of occurrences, restores, sweeps and
/// queries (4 bytes per step): it never panics and its bounds always hold (total capacity, each
/// pod's quota, each namespace's quota), with every removal counted.
pub fn store_events(data: &[u8]) {
    let counters = Arc::new(Counters::default());
    let mut config = StoreConfig::new("n1", STORE_CAPACITY, Duration::from_secs(600));
    config.pod_quota = 6;
    config.namespace_quota = 15;
    config.unattributed_quota = 5;
    let quotas = config.clone();
    let mut store = Store::new(config, counters.clone());
    let mut restored_id = 1_000_000u64;
    for op in data.chunks(4) {
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| op.get(i).copied().unwrap_or(0));
        let pod = format!("p{}", a % 10);
        let ns = format!("ns{}", (a / 10) % 3);
        let at = u64::from(c) * 10;
        let port = u16::from(b) + 1;
        let builder = match d % 6 {
            0 => refused(),
            1 => timeout(),
            2 => dropped(),
            3 => oom_killed(),
            4 => throttled(),
            _ => refused().unattributed(),
        };
        let builder = if d % 6 == 5 {
            builder
        } else {
            builder.pod_uid(&ns, &pod, &format!("{ns}-{pod}"))
        };
        let builder = builder.dst(&format!("10.0.0.9:{port}")).at(at);
        match d / 64 {
            0 | 1 => store.record(builder.occurrence()),
            2 => {
                restored_id += 1;
                store.restore(restored_id, builder.evidence());
            }
            _ => {
                if b % 2 == 0 {
                    store.sweep(t(at) + Duration::from_secs(u64::from(b) * 10));
                } else {
                    let filter = Filter {
                        namespace: Some(ns.clone()),
                        pod: Some(pod.clone()),
                        since: Some(t(at)),
                        ..Filter::default()
                    };
                    let r = store.query(&filter, usize::from(b));
                    assert!(r.evidence.len() <= usize::from(b));
                }
            }
        }
        let stats = store.stats();
        assert!(
            usize::try_from(stats.records).is_ok_and(|n| n <= STORE_CAPACITY),
            "over capacity"
        );
        let all = store.query(
            &Filter {
                include_unattributed: true,
                ..Filter::default()
            },
            usize::MAX,
        );
        assert_eq!(all.evidence.len() as u64, stats.records);
        let mut per_pod = HashMap::new();
        let mut per_ns = HashMap::new();
        let mut unattributed = 0;
        for e in &all.evidence {
            match e.pod() {
                Some(p) => {
                    *per_pod.entry(p.uid.clone()).or_insert(0usize) += 1;
                    *per_ns.entry(p.namespace.clone()).or_insert(0usize) += 1;
                }
                None => unattributed += 1,
            }
        }
        assert!(
            per_pod.values().all(|n| *n <= quotas.pod_quota),
            "pod over quota"
        );
        assert!(
            per_ns.values().all(|n| *n <= quotas.namespace_quota),
            "namespace over quota"
        );
        assert!(
            unattributed <= quotas.unattributed_quota,
            "unattributed over quota"
        );
        let _ = counters.snapshot().get(Loss::StoreEvicted);
    }
}

/// tracefs `format` files: parsing never panics.
pub fn tracefs_format(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let f = tracefs::Format::parse(text);
        let _ = f.offset("t", "saddr", Some(28));
    }
}

/// The DNS tracker's bounds in [`dns_sequence`]: small, so a short input reaches them.
const DNS_PER_POD: usize = 3;
const DNS_TOTAL: usize = 5;

/// Names a structured step asks for: a search walk's expansions and the name that exists.
const DNS_NAMES: [&str; 4] = [
    "db.shop.svc.cluster.local",
    "db.svc.cluster.local",
    "db.cluster.local",
    "db",
];

/// One DNS tracker driven by a sequence of packets (queries and answers, from both ends, at
/// arbitrary times, forwards and backwards) and ticks; each step is 6 bytes, then as many
/// payload bytes as its last byte says (none: a well-formed message the step describes). It
/// never panics, the queries in flight stay within the tracker's bounds, and every query that
/// entered the table ends exactly once: answered (a lookup in the tallies, or a
/// `truncated_retry` finding), timed out (a lookup), or evicted (`dns_inflight_evicted`).
pub fn dns_sequence(data: &[u8]) {
    let counters = Arc::new(Counters::default());
    let config = TrackConfig {
        timeout: Duration::from_secs(5),
        slow: Duration::from_secs(1),
        per_pod: DNS_PER_POD,
        total: DNS_TOTAL,
    };
    let mut tracker = Tracker::new(config, counters.clone());
    let is_dns = |port| port == 53;
    let server = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 53));
    let mut now: u64 = 10_000_000_000;
    // Lookups ended so far, as the tracker reports them.
    let mut ended = 0u64;
    let mut rest = data;
    while let Some((&[op, time, who, id, rcode, len], tail)) = rest.split_first_chunk::<6>() {
        let (payload, after) = tail.split_at(usize::from(len).min(tail.len()));
        rest = after;
        // Time: up to ~12.8 s per step, sometimes backwards (CPUs' clocks interleave).
        let step = u64::from(time) * 50_000_000;
        now = if op & 0x80 != 0 {
            now.saturating_sub(step / 8)
        } else {
            now.saturating_add(step)
        };
        if op & 0x40 != 0 {
            let findings = tracker.tick(now);
            ended += ended_by(findings, &mut tracker);
            continue;
        }
        let client = SocketAddr::from((
            Ipv4Addr::new(10, 0, 0, 1 + who % 3),
            40000 + u16::from(who / 3 % 4),
        ));
        let answer = op & 1 != 0;
        // Which end the packet is seen at: the asking socket, or a server on this node.
        let at_server = op & 2 != 0;
        let side = match (answer, at_server) {
            (false, false) | (true, true) => packet::Side::Egress,
            (true, false) | (false, true) => packet::Side::Ingress,
        };
        let (src, dst) = if answer {
            (server, client)
        } else {
            (client, server)
        };
        let protocol = if op & 4 != 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let built;
        let payload = if payload.is_empty() {
            let name = DNS_NAMES
                .get(usize::from(id >> 2) % DNS_NAMES.len())
                .copied()
                .unwrap_or("db");
            let message = packet::message(
                u16::from(id & 3),
                answer,
                rcode % 6,
                op & 8 != 0,
                name,
                if op & 16 != 0 { 28 } else { 1 },
            );
            built = if protocol == Protocol::Tcp {
                // TCP carries a two-byte length first.
                let mut framed = u16::try_from(message.len())
                    .unwrap_or(u16::MAX)
                    .to_be_bytes()
                    .to_vec();
                framed.extend_from_slice(&message);
                framed
            } else {
                message
            };
            built.as_slice()
        } else {
            payload
        };
        let record = packet::encode(&packet::Captured {
            boot_ns: now,
            cgroup_id: u64::from(who % 3),
            side,
            protocol,
            src,
            dst,
            wire_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            payload,
            server: (op & 32 != 0).then_some(packet::ServerSide {
                cgroup: (rcode & 0x80 != 0).then_some(9),
                answered: rcode & 0x40 != 0,
            }),
        });
        let findings = dns::handle(&record, &mut tracker, &counters, &is_dns);
        ended += ended_by(findings, &mut tracker);
        assert!(tracker.in_flight() <= DNS_TOTAL, "over the total bound");
        let evicted = counters.get(Loss::DnsInflightEvicted);
        assert_eq!(
            tracker.queries_tracked(),
            tracker.in_flight() as u64 + ended + evicted,
            "a query ended twice or never (ended {ended}, evicted {evicted})"
        );
    }
    // Long after: every query still in flight times out.
    let findings = tracker.tick(now.saturating_add(3_600_000_000_000));
    ended += ended_by(findings, &mut tracker);
    assert_eq!(tracker.in_flight(), 0, "a query outlived its timeout");
    assert_eq!(
        tracker.queries_tracked(),
        ended + counters.get(Loss::DnsInflightEvicted),
        "a query ended twice or never"
    );
}

/// Lookups ended by `findings` and the tallies taken now (see [`dns_sequence`]).
fn ended_by(findings: Vec<crate::event::Finding>, tracker: &mut Tracker) -> u64 {
    let truncated: u64 = findings
        .iter()
        .filter(|f| f.outcome == crate::evidence::DnsOutcome::TruncatedRetry)
        .map(|f| f.count)
        .sum();
    let tallied: u64 = tracker
        .take_tallies()
        .iter()
        .map(|t| t.lookups.lookups)
        .sum();
    truncated + tallied
}

/// A header value and endpoint password [`otlp_env`] puts in the environment: no error may
/// show it.
const OTLP_SECRET: &str = "s3cr3t-T0KEN-nOt-To-ShOw";

/// The OTLP variables [`otlp_env`] sets, one line of the input each, in this order (the
/// certificate and key files are left out: their values are paths the parser reads).
const OTLP_VARS: [&str; 17] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BLRP_SCHEDULE_DELAY",
    "OTEL_BLRP_MAX_QUEUE_SIZE",
    "OTEL_BLRP_EXPORT_TIMEOUT",
];

/// The OTLP exporter's settings from arbitrary environment values (one line per variable of
/// [`OTLP_VARS`]; the two lines after them wrap a secret header value, and the first byte
/// puts the secret in the endpoint's credentials too): parsing never panics, and no error
/// ever shows a header value or the endpoint's password.
pub fn otlp_env(data: &[u8]) {
    use crate::otlp::config::OtlpConfig;

    let text = String::from_utf8_lossy(data);
    // The secret only comes from where this function puts it.
    if text
        .to_ascii_lowercase()
        .contains(&OTLP_SECRET.to_ascii_lowercase())
    {
        return;
    }
    let mut lines = text.split('\n');
    let mut env: HashMap<&str, String> = OTLP_VARS
        .iter()
        .zip(lines.by_ref())
        .map(|(var, value)| (*var, value.to_owned()))
        .collect();
    // Around the secret, no comma: it stays one entry's value.
    let prefix = lines.next().unwrap_or_default().replace(',', "");
    let suffix = lines.next().unwrap_or_default().replace(',', "");
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    ] {
        if let Some(value) = env.get_mut(var) {
            value.push_str(&format!(",authorization={prefix}{OTLP_SECRET}{suffix}"));
        }
    }
    if data.first().is_some_and(|b| b & 1 == 1) {
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        ] {
            if let Some(value) = env.get_mut(var)
                && let Some((scheme, rest)) = value.split_once("://")
            {
                *value = format!("{scheme}://user:{OTLP_SECRET}@{rest}");
            }
        }
    }
    if let Err(e) = OtlpConfig::from_env(|name| env.get(name).cloned()) {
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains(OTLP_SECRET),
            "an error shows the secret: {shown}"
        );
    }
}

/// Rows of a store file from arbitrary bytes (each: a flag byte, an 8-byte id, a 2-byte
/// length and that many bytes of record), read back as at startup: it never panics, every row is
/// either a record or counted as `store_unreadable` and removed, and what is left is exactly
/// what was read.
#[cfg(feature = "disk-store")]
pub fn store_readback(data: &[u8]) {
    use std::collections::HashSet;

    use crate::store::persist::{StoredValue, read_back_rows};

    let mut rows = Vec::new();
    let mut rest = data;
    while let Some((&[flag, i0, i1, i2, i3, i4, i5, i6, i7, l0, l1], tail)) =
        rest.split_first_chunk::<11>()
    {
        let len = u16::from_le_bytes([l0, l1]);
        let (bytes, after) = tail.split_at(usize::from(len).min(tail.len()));
        rest = after;
        let id = i64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
        let value = match flag % 8 {
            0..=4 => StoredValue::Blob(bytes.to_vec()),
            5 => StoredValue::Text(String::from_utf8_lossy(bytes).into_owned()),
            6 => StoredValue::Integer(i64::from(len)),
            _ => StoredValue::Null,
        };
        rows.push((id, value));
    }
    let distinct = rows.iter().map(|(id, _)| *id).collect::<HashSet<_>>().len() as u64;
    let counters = Counters::default();
    let result = read_back_rows(&rows, &counters);
    assert!(
        result.is_ok(),
        "SQLite failed on an in-memory database: {result:?}"
    );
    let Ok((records, left)) = result else { return };
    let unreadable = counters.get(Loss::StoreUnreadable);
    assert_eq!(
        records.len() as u64 + unreadable,
        distinct,
        "a row neither read nor counted"
    );
    assert_eq!(left, records.len() as u64, "an unreadable row was kept");
    assert!(
        records.iter().all(|(id, _)| *id > 0),
        "an id out of range read back"
    );
}

/// The bytes [`store_readback`] reads as `rows` (its seeds are made with this).
pub fn store_readback_input(rows: &[(i64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, bytes) in rows {
        let bytes = bytes.get(..usize::from(u16::MAX)).unwrap_or(bytes);
        out.push(0);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}
