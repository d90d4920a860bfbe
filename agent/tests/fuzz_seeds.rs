//! The fuzz targets' seeds (fuzz/seeds/<target>/).
//!
//! The binary ones are made here from the agent's own encoders, so they are real records of
//! today's formats: kernel ring records, DNS records as the kernel copies them (their own
//! ring), and gRPC answers. The test fails when a format changed and the checked-in seeds are
//! stale; `cargo test -p triage-agent --test fuzz_seeds -- --ignored write_fuzz_seeds` writes
//! them anew (a separate command: the check never rewrites what it checks).
//! (Text seeds, such as mountinfo and cgroup files, are copies of real files and are not
//! generated.)
//!
//! Every seed of every target is also replayed through the target's body
//! (`triage_agent::fuzzing`), the code the fuzz targets run, so `cargo test` checks each target
//! on its corpus without a sanitizer build; `cargo xtask fuzz` fuzzes them.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "seed builders with fixed, known-good inputs; a panic is a test failure"
)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use prost::Message as _;
use triage_agent::{
    codec,
    dns::packet::{self, Captured, Side},
    evidence::{
        Protocol,
        fixtures::{dropped, oom_killed, refused, throttled, timeout},
    },
    probes::decode::{self, encode},
};
use triage_agent_common::{
    AF_INET, AF_INET6, COMM_LEN, EventHeader, FlowEvent, FlowKey, FlowStats, OomEvent, flow_flags,
    kind,
};
use triage_agent_proto::v1 as pb;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn seeds_dir(target: &str) -> PathBuf {
    fuzz_dir().join("seeds").join(target)
}

fn comm(name: &[u8]) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    let n = name.len().min(COMM_LEN - 1);
    c[..n].copy_from_slice(&name[..n]);
    c
}

fn flow(kind: u32, family: u16, reason: u32, protocol: u8) -> FlowEvent {
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        daddr[..4].copy_from_slice(&[10, 0, 0, 3]);
    } else {
        saddr = "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
        daddr = "fd00::3".parse::<std::net::Ipv6Addr>().unwrap().octets();
    }
    FlowEvent {
        header: EventHeader {
            kind,
            len: size_of::<FlowEvent>() as u32,
            boot_ns: 1_000_000_000,
        },
        key: FlowKey {
            kind,
            reason,
            cgroup_id: 1234,
            family,
            protocol,
            tcp_flags: 0x02,
            sport: 0,
            dport: 5432,
            ingress_netns: 3,
            flags: flow_flags::HAS_PROCESS,
            saddr,
            daddr,
        },
        stats: FlowStats {
            count: 3,
            first_ns: 900_000_000,
            last_ns: 1_000_000_000,
            pid: 11,
            tgid: 10,
            comm: comm(b"psql"),
            extra: 0,
            last_sport: 40000,
            _pad0: 0,
        },
    }
}

/// A DNS message: header, one question (`name`, type A, class IN), no records.
fn dns_message(id: u16, flags: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

fn dns_record(side: Side, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = match side {
        Side::Egress => ("10.0.0.2:40000", "10.96.0.10:53"),
        Side::Ingress => ("10.96.0.10:53", "10.0.0.2:40000"),
    };
    packet::encode(&Captured {
        boot_ns: 5_000_000_000,
        cgroup_id: 1234,
        side,
        protocol: Protocol::Udp,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        wire_len: payload.len() as u32,
        payload,
        server: None,
    })
}

fn query_response() -> pb::QueryResponse {
    let evidence = [
        refused().pod("shop", "web").process(11, "curl").evidence(),
        timeout().pod("shop", "web").evidence(),
        dropped()
            .pod("shop", "web")
            .peer("data", "db")
            .reason("NETFILTER_DROP")
            .evidence(),
        oom_killed().pod("shop", "web").evidence(),
        throttled().pod("shop", "web").evidence(),
    ];
    pb::QueryResponse {
        evidence: evidence.iter().map(codec::evidence_to_pb).collect(),
        ..pb::QueryResponse::default()
    }
}

fn status_response() -> pb::StatusResponse {
    pb::StatusResponse {
        node: "node-a".into(),
        kernel: "6.18.0".into(),
        version: "0.1.0".into(),
        started: Some(codec::time_to_pb(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )),
        probes: vec![pb::Probe {
            name: "kfree_skb".into(),
            hook: "tracepoint/skb/kfree_skb".into(),
            attached: false,
            error: "tracepoint missing".into(),
            ..pb::Probe::default()
        }],
        store_records: 5,
        store_capacity: 100_000,
        ..pb::StatusResponse::default()
    }
}

/// Every generated seed: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut oom = OomEvent {
        header: EventHeader {
            kind: kind::OOM_VICTIM,
            len: size_of::<OomEvent>() as u32,
            boot_ns: 7_000_000_000,
        },
        cgroup_id: 1234,
        parent_cgroup_id: 1234,
        memcg_usage_pages: 16_384,
        memcg_limit_pages: 16_384,
        rss_pages: 15_000,
        pid: 42,
        tgid: 42,
        uid: 1000,
        oom_score_adj: 985,
        oom_group: 0,
        _pad0: 0,
        comm: comm(b"worker"),
    };
    let oom_main = encode(&oom);
    oom.parent_cgroup_id = 99;
    let oom_child = encode(&oom);
    let query = dns_message(0x1234, 0x0100, "db.data.svc.cluster.local");
    let nxdomain = dns_message(0x1234, 0x8183, "db.data.svc.cluster.local");
    let mut seeds = vec![
        (
            "ring_record",
            "refused_v4",
            encode(&flow(kind::CONNECT_REFUSED, AF_INET, 0, 6)),
        ),
        (
            "ring_record",
            "drop_v6",
            encode(&flow(kind::PACKET_DROP, AF_INET6, 6, 17)),
        ),
        ("ring_record", "oom_main", oom_main),
        ("ring_record", "oom_child", oom_child),
        (
            "dns_packet",
            "record_query",
            dns_record(Side::Egress, &query),
        ),
        ("dns_packet", "query", query.clone()),
        ("dns_packet", "nxdomain", nxdomain.clone()),
        (
            "dns_packet",
            "record_answer",
            dns_record(Side::Ingress, &nxdomain),
        ),
        (
            "grpc_evidence",
            "query_response",
            query_response().encode_to_vec(),
        ),
        (
            "render_answer",
            "query_response",
            query_response().encode_to_vec(),
        ),
        (
            "render_answer",
            "status_response",
            status_response().encode_to_vec(),
        ),
    ];
    seeds.extend(dns_sequences());
    seeds.extend(otlp_environments());
    seeds.extend(store_rows());
    seeds.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    seeds
}

/// One step of `dns_sequence`: op bits (1 answer, 2 seen at the server, 4 TCP, 8 truncated,
/// 16 AAAA, 32 with the server's notes, 64 a tick, 128 time backwards), time (50 ms units),
/// client, id and name (id & 3, name index id >> 2), rcode; a well-formed message (no payload).
fn step(op: u8, time: u8, who: u8, id: u8, rcode: u8) -> [u8; 6] {
    [op, time, who, id, rcode, 0]
}

fn dns_sequences() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let answered = [step(0, 0, 0, 0, 0), step(1, 1, 0, 0, 0)].concat();
    // A search walk: NXDOMAIN for two expansions, then the name that exists.
    let walk = [
        step(0, 0, 1, 1, 0),
        step(1, 1, 1, 1, 3),
        step(0, 0, 1, 5, 0),
        step(1, 1, 1, 5, 3),
        step(0, 0, 1, 13, 0),
        step(1, 1, 1, 13, 0),
        step(64, 40, 0, 0, 0),
    ]
    .concat();
    // More queries than the bounds hold, unanswered, then a timeout; a resend; a truncated
    // UDP answer; one seen at a server on the node; TCP; time going backwards.
    let mut flood = Vec::new();
    for who in 0..9u8 {
        flood.extend(step(0, 1, who, who % 4, 0));
    }
    flood.extend(step(0, 0, 0, 0, 0));
    flood.extend(step(2 | 32, 0, 0, 0, 0xc0));
    flood.extend(step(1 | 8, 1, 0, 0, 0));
    flood.extend(step(4, 1, 2, 2, 0));
    flood.extend(step(4 | 1, 1, 2, 2, 2));
    flood.extend(step(128, 30, 1, 1, 0));
    flood.extend(step(64, 200, 0, 0, 0));
    // An arbitrary payload as the answer.
    let mut raw = step(0, 0, 0, 0, 0).to_vec();
    let garbage = b"\x00\x00\x81\x80\x00\x01\xff\xff";
    raw.extend([1, 1, 0, 0, 0, garbage.len() as u8]);
    raw.extend_from_slice(garbage);
    vec![
        ("dns_sequence", "answered", answered),
        ("dns_sequence", "search_walk", walk),
        ("dns_sequence", "flood_and_timeouts", flood),
        ("dns_sequence", "raw_answer", raw),
    ]
}

/// `otlp_env` input: one line per variable of its list, then the secret's prefix and suffix.
fn otlp_environments() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let env = |values: &[&str]| values.join("\n").into_bytes();
    vec![
        (
            "otlp_env",
            "valid",
            env(&[
                "https://collector.example:4317",
                "",
                "x-tenant=shop,x-api-key=abc%20def",
                "",
                "grpc",
                "",
                "gzip",
                "",
                "5000",
                "",
                "deployment.environment=prod,k8s.cluster.name=c1",
                "triage-agent",
                "false",
                "256",
                "500",
                "4096",
                "30000",
                "Bearer ",
                "",
            ]),
        ),
        (
            "otlp_env",
            "bad_header",
            env(&[
                "http://127.0.0.1:4317",
                "",
                "no-equals-sign,x-ok=1",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "bad value \u{7f} ",
                "",
            ]),
        ),
        (
            "otlp_env",
            "bad_endpoint",
            // The first byte is odd: credentials go into the endpoint.
            env(&["grpc://host name:99999/x?y#z", "", "", "", "http/protobuf"]),
        ),
    ]
}

/// `store_readback` input: records as the store writes them, and rows a damaged file holds.
fn store_rows() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let record = |e: &triage_agent::evidence::Evidence| codec::evidence_to_pb(e).encode_to_vec();
    let refused = record(&refused().pod("shop", "web").process(11, "curl").evidence());
    let oom = record(&oom_killed().pod("shop", "web").evidence());
    let rows = |r: &[(i64, &[u8])]| triage_agent::fuzzing::store_readback_input(r);
    vec![
        (
            "store_readback",
            "records",
            rows(&[(1, &refused), (2, &oom)]),
        ),
        (
            "store_readback",
            "damaged",
            rows(&[
                (1, &refused),
                (0, &oom),
                (-5, &oom),
                (7, b"\xff\xff\xff\xff\x01\x02"),
                (8, &refused[..refused.len() / 2]),
                (1, &oom),
            ]),
        ),
    ]
}

#[test]
fn generated_fuzz_seeds_are_current_and_decode() {
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds() {
        if target == "ring_record" {
            assert!(decode::decode(&bytes).is_ok(), "{name} does not decode");
        }
        let path = seeds_dir(target).join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(format!("{target}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "fuzz seeds are stale or missing: {stale:?}; write them with \
         cargo test -p triage-agent --test fuzz_seeds -- --ignored write_fuzz_seeds"
    );
}

/// Writes the generated seeds (a command, not a check: ignored unless asked for by name).
#[test]
#[ignore = "writes the seed files; run by name to regenerate them"]
fn write_fuzz_seeds() {
    for (target, name, bytes) in seeds() {
        let dir = seeds_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), &bytes).unwrap();
    }
}

/// The fuzz crate builds the agent with `cluster` (policy_eval needs it), so the targets are
/// all there only with it.
#[cfg(feature = "cluster")]
#[test]
fn every_fuzz_target_takes_every_seed() {
    use std::collections::BTreeSet;

    /// The names of the entries of `dir` (file stems when `ext` is given: only files with it).
    fn names_in(dir: &Path, ext: Option<&str>) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter_map(|path| match ext {
                Some(ext) => (path.extension()? == ext)
                    .then(|| path.file_stem()?.to_str().map(str::to_owned))
                    .flatten(),
                None => path.file_name()?.to_str().map(str::to_owned),
            })
            .collect()
    }

    let targets: BTreeSet<String> = triage_agent::fuzzing::TARGETS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let files = names_in(&fuzz_dir().join("fuzz_targets"), Some("rs"));
    assert_eq!(
        files, targets,
        "fuzz/fuzz_targets/*.rs and triage_agent::fuzzing::TARGETS name other targets"
    );
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for target in &targets {
        let source =
            std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{target}.rs"))).unwrap();
        assert!(
            source.contains(&format!("triage_agent::fuzzing::{target}(data)")),
            "fuzz/fuzz_targets/{target}.rs does not call triage_agent::fuzzing::{target}"
        );
        assert!(
            manifest.contains(&format!(
                "name = \"{target}\"\npath = \"fuzz_targets/{target}.rs\""
            )),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
    }
    let seed_dirs = names_in(&fuzz_dir().join("seeds"), None);
    assert_eq!(
        seed_dirs, targets,
        "fuzz/seeds/<dir> without a fuzz target, or a fuzz target without seeds"
    );
    let mut replayed = 0;
    for (target, body) in triage_agent::fuzzing::TARGETS {
        let seeds = names_in(&seeds_dir(target), None);
        assert!(!seeds.is_empty(), "fuzz/seeds/{target} is empty");
        for seed in seeds {
            let path = seeds_dir(target).join(&seed);
            let bytes = std::fs::read(&path).unwrap();
            // A panic names the target and the seed; replay it with
            // `cargo +nightly fuzz run <target> <path>`.
            eprintln!("replaying fuzz/seeds/{target}/{seed}");
            body(&bytes);
            replayed += 1;
        }
    }
    eprintln!(
        "{replayed} seeds replayed through {} targets",
        targets.len()
    );
}
