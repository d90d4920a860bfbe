//! Rendering tests: the JSON contract, the table, completeness, hostile strings.

use std::time::Duration;

use serde_json::json;
use triage_agent_proto::v1 as pb;

use super::*;
use crate::codec;
use crate::evidence::fixtures::{refused, t};

fn sample() -> Evidence {
    refused()
        .pod_uid("shop", "web", "u-1")
        .process(42, "curl")
        .first_seen(0)
        .at(100)
        .count(7)
        .evidence()
}

fn answer(loss: Vec<PeerLoss>) -> AgentAnswer {
    AgentAnswer {
        agent: "127.0.0.1:9742".into(),
        node: "node-a".into(),
        dns_lookups: vec![],
        pod_losses: vec![],
        evidence: vec![],
        truncated: false,
        loss,
        evicted_in_window: 0,
        agent_started: Some(t(0)),
        losses_since: Some(t(0)),
    }
}

fn lost(name: &str, count: u64, last: Option<SystemTime>) -> PeerLoss {
    PeerLoss {
        name: name.into(),
        count,
        last,
    }
}

#[test]
fn json_matches_the_contract() {
    let v = query_json(
        &[sample()],
        &[],
        &[answer(vec![lost("ring_buffer_full", 0, None)])],
        &[],
    );
    let e = &v["evidence"][0];
    assert_eq!(e["kind"], "connection_refused");
    assert_eq!(e["node"], "node-a");
    assert_eq!(
        e["pod"],
        json!({"namespace": "shop", "name": "web", "uid": "u-1"})
    );
    assert_eq!(e["container"], "app");
    assert_eq!(e["process"], json!({"pid": 42, "comm": "curl"}));
    assert_eq!(e["first_seen"], "2023-11-14T22:13:20.000Z");
    assert_eq!(e["last_seen"], "2023-11-14T22:15:00.000Z");
    assert_eq!(e["count"], 7);
    assert_eq!(e["attribution"], "cgroup");
    assert_eq!(e["direction"], "outbound");
    assert_eq!(e["src"], "10.0.0.1:40000");
    assert_eq!(e["dst"], "10.0.0.2:8080");
    assert_eq!(e["protocol"], "tcp");
    assert!(e["reason"].is_null());
    assert!(e["peer"].is_null());
    assert_eq!(v["agents"][0]["loss"]["ring_buffer_full"], 0);
}

/// A pod's kernel losses are in its answer: a warning in the table, flat counts in JSON, summed
/// over the agents that answered.
#[test]
fn a_pods_kernel_losses_are_shown_in_table_and_json() {
    let web = crate::evidence::fixtures::pod_ref("shop", "web");
    let mut a = answer(vec![]);
    a.pod_losses = vec![(
        web.clone(),
        PodLosses {
            connects: 12,
            occurrences: 0,
            dns_packets: 3,
        },
        t(90),
    )];
    let mut b = answer(vec![]);
    b.pod_losses = vec![(
        web,
        PodLosses {
            connects: 1,
            ..Default::default()
        },
        t(95),
    )];
    let v = query_json(&[], &[], &[a.clone(), b.clone()], &[]);
    assert_eq!(
        v["pod_losses"],
        json!([{
            "pod": {"namespace": "shop", "name": "web", "uid": "uid-web"},
            "connects": 13,
            "occurrences": 0,
            "dns_packets": 3,
            "last_lost": "2023-11-14T22:14:55.000Z",
        }])
    );
    let text = query_table("web", "shop", None, &[], &[], &[a, b], &[]);
    assert!(
        text.contains(
            "WARNING (shop/web, since the agent started): the kernel lost 13 connect attempt(s) \
             not watched (no refusal or timeout of theirs can be seen), 3 DNS packet(s) not \
             copied (their lookups may be missing) of this pod's evidence, the last at \
             2023-11-14T22:14:55.000Z."
        ),
        "{text}"
    );
    let none = query_json(&[], &[], &[answer(vec![])], &[]);
    assert_eq!(none["pod_losses"], json!([]));
}

#[test]
fn table_shows_rows_diagnosis_and_completeness() {
    let findings = crate::diagnose::diagnose(&[sample()]);
    let text = query_table(
        "web",
        "shop",
        Some(t(1)),
        &[sample()],
        &findings,
        &[answer(vec![])],
        &[],
    );
    assert!(text.starts_with("Pod shop/web: 1 record(s) from 1 agent(s) (node-a)"));
    assert!(
        text.contains("KIND                COUNT  LAST SEEN  PEER"),
        "{text}"
    );
    assert!(text.contains("connection_refused  7      "), "{text}");
    assert!(text.contains("Diagnosis\n  [connection]"));
    assert!(text.contains("Completeness: node node-a lost no events in this window."));
}

#[test]
fn completeness_counts_only_losses_inside_the_window() {
    let window = Some(t(100));
    let old = answer(vec![
        lost("ring_buffer_full", 3, Some(t(50))),
        lost("watch_lagged", 9, Some(t(150))),
    ]);
    let text = query_table("web", "shop", window, &[], &[], &[old], &[]);
    assert!(text.contains("No silent failures recorded"));
    assert!(text.contains("lost no events in this window"), "{text}");

    let recent = answer(vec![
        lost("ring_buffer_full", 3, Some(t(150))),
        lost("attribution_expired", 2, Some(t(150))),
        lost("some_future_counter", 1, None),
    ]);
    let text = query_table("web", "shop", window, &[], &[], &[recent], &[]);
    assert!(
        text.contains(
            "WARNING: node node-a lost events (3 ring buffer full, 2 stored unattributed \
             (pod metadata missing), 1 some_future_counter)"
        ),
        "{text}"
    );
    assert!(!text.contains("lost no events"));
}

#[test]
fn completeness_after_a_restart_with_the_store_on_disk() {
    // Counting since t(50) (first start), restarted at t(200); the window starts at t(100).
    let mut a = answer(vec![]);
    a.losses_since = Some(t(50));
    a.agent_started = Some(t(200));
    let text = query_table("web", "shop", Some(t(100)), &[], &[], &[a.clone()], &[]);
    assert!(
        text.contains(
            "Completeness: node node-a counted no lost events since 2023-11-14T22:14:10.000Z \
             (its store on disk outlives restarts), but its agent restarted at \
             2023-11-14T22:16:40.000Z inside this window: what happened while no agent ran \
             was not seen."
        ),
        "{text}"
    );
    assert!(!text.contains("not in its store"), "{text}");

    // A loss before the restart, inside the window, is still reported.
    a.loss = vec![lost("ring_buffer_full", 3, Some(t(150)))];
    a.evicted_in_window = 2;
    let text = query_table("web", "shop", Some(t(100)), &[], &[], &[a.clone()], &[]);
    assert!(text.contains("lost events (3 ring buffer full)"), "{text}");
    assert!(text.contains("evicted 2 record(s)"), "{text}");
    assert!(
        text.contains(
            "restarted at 2023-11-14T22:16:40.000Z inside this window: what happened while no \
             agent ran was not seen (its records and loss counters are kept on disk since \
             2023-11-14T22:14:10.000Z)."
        ),
        "{text}"
    );

    // The restart before the window: nothing to say about it.
    let mut old = answer(vec![]);
    old.losses_since = Some(t(50));
    old.agent_started = Some(t(60));
    let text = query_table("web", "shop", Some(t(100)), &[], &[], &[old], &[]);
    assert!(text.contains("lost no events in this window"), "{text}");

    // The store itself began inside the window, the agent restarted since.
    let mut young = answer(vec![]);
    young.losses_since = Some(t(150));
    young.agent_started = Some(t(200));
    let text = query_table("web", "shop", Some(t(100)), &[], &[], &[young], &[]);
    assert!(
        text.contains(
            "lost no events since its evidence store began at 2023-11-14T22:15:50.000Z, inside \
             this window: evidence from before then is not in its store."
        ),
        "{text}"
    );

    // An agent that does not say since when it counts: since its start, as before.
    let mut older_agent = answer(vec![]);
    older_agent.losses_since = None;
    older_agent.agent_started = Some(t(200));
    let text = query_table("web", "shop", Some(t(100)), &[], &[], &[older_agent], &[]);
    assert!(
        text.contains("lost no events since its agent started at"),
        "{text}"
    );
}

#[test]
fn completeness_says_what_was_evicted_and_when_the_agent_restarted() {
    let mut a = answer(vec![]);
    a.evicted_in_window = 12;
    a.agent_started = Some(t(200));
    a.losses_since = Some(t(200));
    a.truncated = true;
    let text = query_table("web", "shop", Some(t(100)), &[], &[], &[a], &[]);
    assert!(text.contains("evicted 12 record(s) of this pod"), "{text}");
    assert!(
        text.contains("started at 2023-11-14T22:16:40.000Z inside this window"),
        "{text}"
    );
    assert!(text.contains("answer truncated"));
    assert!(!text.contains("lost no events"));

    let mut fresh = answer(vec![]);
    fresh.agent_started = Some(t(200));
    fresh.losses_since = Some(t(200));
    let text = query_table("web", "shop", Some(t(100)), &[], &[], &[fresh], &[]);
    assert!(
        text.contains(
            "Completeness: node node-a lost no events since its agent started at \
             2023-11-14T22:16:40.000Z, inside this window"
        ),
        "{text}"
    );
}

#[test]
fn hostile_names_cannot_forge_or_hide_output() {
    // A process named with escape sequences, carriage returns and a bidi override.
    let hostile = "x\u{1b}[2J\r\nFAKE\u{202e}\u{9b}";
    let e = refused()
        .pod("shop", hostile)
        .process(1, hostile)
        .container(Some(hostile))
        .peer("shop", hostile)
        .evidence();
    let findings = crate::diagnose::diagnose(std::slice::from_ref(&e));
    let mut a = answer(vec![lost("ring_buffer_full", 1, None)]);
    a.node = hostile.into();
    let text = query_table(
        hostile,
        "shop",
        None,
        std::slice::from_ref(&e),
        &findings,
        &[a],
        &[],
    );
    let line = crate::evidence::line::watch_line(&e);
    for out in [&text, &line] {
        assert!(
            !out.chars()
                .any(|c| c != '\n' && (c.is_control() || c == '\u{202e}')),
            "{out:?}"
        );
    }
    assert!(text.contains("x\\u{1b}[2J\\u{d}\\u{a}FAKE\\u{202e}\\u{9b}"));
    assert!(
        text.contains("WARNING: node x\\u{1b}"),
        "the warning survives"
    );
    let status = pb::StatusResponse {
        node: hostile.into(),
        kernel: hostile.into(),
        probes: vec![pb::Probe {
            name: hostile.into(),
            hook: hostile.into(),
            attached: true,
            error: hostile.into(),
            fallback: hostile.into(),
            degraded: hostile.into(),
        }],
        signals: vec![pb::SignalState {
            signal: hostile.into(),
            mode: pb::SignalMode::Degraded as i32,
            detail: hostile.into(),
        }],
        ..Default::default()
    };
    let text = status_table(&[(hostile.into(), status)]);
    assert!(
        !text.chars().any(|c| c != '\n' && c.is_control()),
        "{text:?}"
    );
}

#[test]
fn far_future_times_never_panic() {
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
    assert!(rfc3339(far).starts_with('@'));
    assert_eq!(
        rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(codec::MAX_TIMESTAMP_SECS)),
        "9999-12-31T23:59:59.000Z"
    );
}

#[test]
fn clean_leaves_ordinary_text_alone() {
    assert!(matches!(clean("web-7d9f/ä 日本"), Cow::Borrowed(_)));
    assert_eq!(clean("a\tb"), "a\\u{9}b");
}

/// A deterministic stand-in for the render_answer fuzz target (which needs cargo-fuzz): many
/// arbitrary answers with hostile strings, huge and negative timestamps, unknown enum values.
#[test]
fn arbitrary_answers_never_panic_and_tables_stay_clean() {
    let mut seed = 0x2545_f491_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pick = |n: u64, items: &[&str]| items[(n as usize) % items.len()].to_owned();
    let strings = [
        "web",
        "",
        "\u{1b}[31mred",
        "a\rb",
        "\u{202e}evil",
        "x\u{0}y",
        "10.0.0.1:80",
        "[fd00::1]:53",
        "garbage",
    ];
    for _ in 0..2_000 {
        let ts = |n: u64| prost_types::Timestamp {
            seconds: match n % 4 {
                0 => i64::MAX,
                1 => -1,
                2 => 1_700_000_000,
                _ => (n >> 3) as i64,
            },
            nanos: (n % 3) as i32 * 999_999_999,
        };
        let ev = pb::Evidence {
            kind: (next() % 8) as i32,
            node: pick(next(), &strings),
            pod: Some(pb::PodRef {
                namespace: pick(next(), &strings),
                name: pick(next(), &strings),
                uid: pick(next(), &strings),
            }),
            container: pick(next(), &strings),
            process: Some(pb::Process {
                pid: next() as u32,
                comm: pick(next(), &strings),
            }),
            first_seen: Some(ts(next())),
            last_seen: Some(ts(next())),
            count: next(),
            attribution: (next() % 6) as i32,
            direction: (next() % 4) as i32,
            src: pick(next(), &strings),
            dst: pick(next(), &strings),
            protocol: (next() % 4) as i32,
            reason: pick(next(), &strings),
            peer: None,
            detail: None,
            folded: (next() % 2 == 0).then(|| pb::Folded {
                senders: vec![pb::SenderCount {
                    ip: pick(next(), &strings),
                    count: next(),
                }],
                other_senders_count: next(),
                ports: vec![next() as u32],
                ports_more: next() % 2 == 0,
                port_min: next() as u32,
                port_max: next() as u32,
            }),
        };
        let response = pb::QueryResponse {
            evidence: vec![ev],
            dns_lookups: vec![],
            pod_losses: vec![],
            node: pick(next(), &strings),
            truncated: next() % 2 == 0,
            loss: Some(pb::LossCounters {
                counts: vec![pb::LossCount {
                    name: pick(next(), &strings),
                    count: next(),
                    last: Some(ts(next())),
                }],
                ..Default::default()
            }),
            evicted_in_window: next() % 3,
            agent_started: Some(ts(next())),
        };
        let Ok(a) = crate::cli::client::answer_from_pb("http://x:1", response) else {
            continue;
        };
        let findings = crate::diagnose::diagnose(&a.evidence);
        let evidence = a.evidence.clone();
        let answers = [a];
        let text = query_table("p", "ns", Some(t(0)), &evidence, &findings, &answers, &[]);
        assert!(
            !text.chars().any(|c| c != '\n' && c.is_control()),
            "{text:?}"
        );
        let _ = query_json(&evidence, &findings, &answers, &[]).to_string();
    }
}

#[test]
fn explanations_are_flat_in_json_and_listed_in_the_table() {
    let e = crate::evidence::fixtures::dropped().evidence();
    let note = Note {
        index: 0,
        verdict: "denied",
        policies: vec!["data/db-ingress".into()],
        text: "ingress to data/db tcp/5432 from shop/web is denied".into(),
        fix: Some("kind: NetworkPolicy\n".into()),
    };
    let v = query_json(
        std::slice::from_ref(&e),
        &[],
        &[],
        std::slice::from_ref(&note),
    );
    let x = &v["evidence"][0]["explanation"];
    assert_eq!(x["verdict"], "denied");
    assert_eq!(x["policies"][0], "data/db-ingress");
    assert_eq!(x["fix"], "kind: NetworkPolicy\n");
    let text = query_table(
        "web",
        "shop",
        None,
        &[e],
        &[],
        &[],
        std::slice::from_ref(&note),
    );
    assert!(
        text.contains("NetworkPolicy\n  [denied] ingress to data/db"),
        "{text}"
    );
    assert!(
        !text.contains("kind: NetworkPolicy"),
        "fixes only with explain"
    );
    assert!(notes_text(&[note], true).contains("      kind: NetworkPolicy"));
}

/// `status` across agents: those that did not answer first, then those with problems (with
/// their reasons below), then the healthy ones; colours only when asked for.
#[test]
fn status_summary_puts_problems_first() {
    let healthy = |node: &str| pb::StatusResponse {
        node: node.into(),
        version: "0.1.0".into(),
        probes: vec![pb::Probe {
            name: "kfree_skb".into(),
            hook: "raw_tracepoint/kfree_skb".into(),
            attached: true,
            error: String::new(),
            ..Default::default()
        }],
        metadata: Some(pb::MetadataStatus {
            synced: true,
            ..Default::default()
        }),
        store_capacity: 100,
        ..Default::default()
    };
    let mut broken = healthy("node-a");
    broken.probes[0].attached = false;
    broken.probes[0].error = "kernel lacks BTF".into();
    let statuses = vec![
        ("ns/agent-z on node node-z".to_owned(), healthy("node-z")),
        ("ns/agent-a on node node-a".to_owned(), broken),
    ];
    let unanswered = [Unanswered {
        agent: "ns/agent-m on node node-m".into(),
        node: Some("node-m".into()),
        error: "agent ns/agent-m on node node-m unreachable: connection refused".into(),
    }];
    let text = status_summary(&statuses, &unanswered, &Style::default());
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("NODE"), "{text}");
    assert!(
        rows[1].starts_with("node-m") && rows[1].contains("NO ANSWER"),
        "{text}"
    );
    assert!(
        rows[2].starts_with("node-a") && rows[2].contains("1 PROBLEM(S)"),
        "{text}"
    );
    assert!(
        rows[3].starts_with("node-z") && rows[3].contains("OK"),
        "{text}"
    );
    assert!(
        rows[3].contains("ns/agent-z") && !rows[3].contains("on node"),
        "{text}"
    );
    assert!(
        text.contains("node-a: probe kfree_skb not attached: kernel lacks BTF"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "no colour unless asked");
    let headless = status_summary(
        &statuses,
        &[],
        &Style {
            no_headers: true,
            color: true,
            ..Style::default()
        },
    );
    assert!(
        !headless.contains("NODE ") && headless.contains("\u{1b}[1;31m"),
        "{headless}"
    );
}

#[test]
fn records_whose_other_side_is_not_shown_are_said_in_table_and_json() {
    use crate::cli::peers::NotShown;
    let not_shown = [
        NotShown {
            ip: "10.0.3.3".parse().unwrap(),
            holder: ("data".into(), "db-7".into()),
            started: Some(t(100)),
            records: 2,
        },
        NotShown {
            ip: "10.0.4.4".parse().unwrap(),
            holder: ("data".into(), "cache\u{1b}[2J".into()),
            started: None,
            records: 1,
        },
    ];
    let text = not_shown_text(&not_shown);
    assert!(
        text.contains(
            "2 record(s) to 10.0.3.3 are from before data/db-7 held it (it started at \
             2023-11-14T22:15:00.000Z): not shown as its own"
        ),
        "{text}"
    );
    assert!(
        text.contains("1 record(s) to 10.0.4.4 are not shown as data/cache\\u{1b}[2J's"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "names are cleaned: {text}");
    assert_eq!(not_shown_text(&[]), "", "nothing to say: no section");
    let v = not_shown_json(&not_shown);
    assert_eq!(
        v[0],
        json!({
            "ip": "10.0.3.3",
            "holder": {"namespace": "data", "name": "db-7"},
            "holder_started": "2023-11-14T22:15:00.000Z",
            "records": 2,
        })
    );
    assert!(v[1]["holder_started"].is_null());
}

/// The skew policy: the same minor version is fine; a minor apart or more, or a version that
/// cannot be read, is a problem `status` names.
#[test]
fn versions_a_minor_apart_are_a_problem() {
    assert_eq!(version_skew("0.1.0", "0.1.7"), None);
    assert_eq!(version_skew("v0.1.2-rc1", "0.1.0"), None);
    for (agent, cli) in [("0.2.0", "0.1.0"), ("0.1.0", "0.3.1"), ("1.1.0", "0.1.0")] {
        let p = version_skew(agent, cli).unwrap_or_default();
        assert!(
            p.contains("by a minor version or more"),
            "{agent} {cli}: {p}"
        );
    }
    assert!(
        version_skew("", "0.1.0")
            .unwrap_or_default()
            .contains("not a version")
    );
    let mut s = pb::StatusResponse {
        version: "0.0.1".into(),
        ..pb::StatusResponse::default()
    };
    assert!(problems(&s).iter().any(|p| p.contains("0.0.1")));
    s.version = env!("CARGO_PKG_VERSION").into();
    assert!(!problems(&s).iter().any(|p| p.contains("version")));
}
