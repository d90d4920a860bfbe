//! Golden output: what an engineer reads on a terminal, byte for byte. The `query` table, its
//! `-o wide` form, `watch` lines and the `status` summary and table are rendered from fixed
//! evidence and compared with the files in agent/tests/golden/.
//!
//! A difference fails the test, shows the lines that differ, and leaves what was rendered in
//! `agent/tests/golden/<name>.new`. Nothing rewrites the expected files: a changed output is
//! accepted by moving the `.new` file over the old one, and the diff is reviewed in the commit.

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a test: a panic is a failure"
)]

use std::path::PathBuf;

use triage_agent::{
    cli::{
        client::AgentAnswer,
        render::{self, Answer, Style, Unanswered},
    },
    codec::PeerLoss,
    diagnose,
    evidence::{
        Cause, Direction, Evidence, OomSource,
        fixtures::{dropped, oom_killed, refused, t, throttled, timeout},
        line::watch_line,
    },
};
use triage_agent_proto::v1 as pb;

fn golden(name: &str, actual: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let path = dir.join(format!("{name}.txt"));
    let new = dir.join(format!("{name}.new"));
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        let _ = std::fs::remove_file(&new);
        return;
    }
    std::fs::write(&new, actual).expect("writing the rendered output");
    let mut diff = String::new();
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => diff.push_str(&format!(
                "line {}:\n  expected: {}\n  rendered: {}\n",
                i + 1,
                x.unwrap_or(&"<none>"),
                y.unwrap_or(&"<none>")
            )),
        }
    }
    panic!(
        "{} differs from what is rendered now (kept in {}):\n{diff}",
        path.display(),
        new.display()
    );
}

/// One record of every kind a pod can have, as a node agent would answer.
fn evidence() -> Vec<Evidence> {
    vec![
        refused()
            .pod_uid(
                "shop",
                "web-7c9f-abcde",
                "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b",
            )
            .process(4242, "curl")
            .dst("10.244.1.7:8080")
            .peer("shop", "cart-5d8b-xk2p9")
            .cause(Some(Cause::NoListener))
            .first_seen(10)
            .at(100)
            .count(12)
            .evidence(),
        timeout()
            .pod_uid(
                "shop",
                "web-7c9f-abcde",
                "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b",
            )
            .process(4242, "curl")
            .dst("10.96.0.20:443")
            .first_seen(20)
            .at(90)
            .count(3)
            .evidence(),
        dropped()
            .pod_uid(
                "shop",
                "web-7c9f-abcde",
                "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b",
            )
            .direction(Direction::Inbound)
            .src("10.244.2.9:51234")
            .dst("10.244.1.5:8080")
            .reason("NETFILTER_DROP")
            .first_seen(30)
            .at(95)
            .count(40)
            .evidence(),
        oom_killed()
            .pod_uid(
                "shop",
                "web-7c9f-abcde",
                "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b",
            )
            .process(4300, "worker")
            .main_process(Some(false))
            .oom_source(OomSource::Kernel)
            .at(80)
            .evidence(),
        throttled()
            .pod_uid(
                "shop",
                "web-7c9f-abcde",
                "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b",
            )
            .at(70)
            .evidence(),
    ]
}

fn answer(loss: Vec<PeerLoss>) -> AgentAnswer {
    AgentAnswer {
        agent: "triage-agent/triage-agent-x7k2p on node node-a".into(),
        node: "node-a".into(),
        dns_lookups: vec![],
        pod_losses: vec![],
        evidence: evidence(),
        truncated: false,
        loss,
        evicted_in_window: 0,
        agent_started: Some(t(0)),
        losses_since: Some(t(0)),
    }
}

fn query(style: &Style) -> String {
    let evidence = evidence();
    let findings = diagnose::diagnose(&evidence);
    let answers = [answer(vec![PeerLoss {
        name: "ring_buffer_full".into(),
        count: 5,
        last: Some(t(60)),
    }])];
    render::query_table_styled(
        &Answer {
            pod: "web-7c9f-abcde",
            namespace: "shop",
            since: Some(t(1)),
            now: t(160),
            pod_column: false,
            evidence: &evidence,
            findings: &findings,
            answers: &answers,
            notes: &[],
        },
        style,
    )
}

#[test]
fn query_table() {
    let text = query(&Style::default());
    golden("query", &text);
    // The table fits a 120-column terminal; the prose under it wraps as prose does.
    let table = text.split("\n\n").nth(1).expect("a table after the header");
    for line in table.lines() {
        assert!(
            line.chars().count() <= 120,
            "wider than 120 columns: {line}"
        );
    }
}

/// A workload's answer names each row's pod.
#[test]
fn query_table_of_a_workload() {
    let evidence = evidence();
    let answers = [answer(vec![])];
    golden(
        "query-workload",
        &render::query_table_styled(
            &Answer {
                pod: "deploy/web",
                namespace: "shop",
                since: Some(t(1)),
                now: t(160),
                pod_column: true,
                evidence: &evidence,
                findings: &[],
                answers: &answers,
                notes: &[],
            },
            &Style::default(),
        ),
    );
}

/// The README's example answer is this renderer's: its `query` block is the golden table.
#[test]
fn the_readme_shows_the_golden_query_table() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let golden = std::fs::read_to_string(root.join("agent/tests/golden/query.txt"))
        .expect("the golden table");
    let (begin, end) = (
        "<!-- example:query -->\n```\n",
        "```\n<!-- /example:query -->",
    );
    let start = readme.find(begin).expect("the README's query example") + begin.len();
    let stop = readme[start..].find(end).expect("its end") + start;
    assert_eq!(
        &readme[start..stop],
        golden,
        "README.md's query example is not agent/tests/golden/query.txt: copy it over"
    );
}

#[test]
fn query_wide() {
    golden(
        "query-wide",
        &query(&Style {
            wide: true,
            ..Style::default()
        }),
    );
}

#[test]
fn watch_lines() {
    let lines: Vec<String> = evidence().iter().map(watch_line).collect();
    golden("watch", &(lines.join("\n") + "\n"));
}

fn statuses() -> Vec<(String, pb::StatusResponse)> {
    let healthy = |node: &str| pb::StatusResponse {
        node: node.into(),
        kernel: "6.18.0-1-amd64".into(),
        version: "0.1.0".into(),
        probes: vec![
            pb::Probe {
                name: "kfree_skb".into(),
                hook: "raw_tracepoint/kfree_skb".into(),
                attached: true,
                ..Default::default()
            },
            pb::Probe {
                name: "dns_egress".into(),
                hook: "cgroup_skb/egress on /sys/fs/cgroup/kubepods.slice".into(),
                attached: true,
                ..Default::default()
            },
        ],
        metadata: Some(pb::MetadataStatus {
            synced: true,
            pods: 12,
            ..Default::default()
        }),
        store_capacity: 100_000,
        store_records: 42,
        ..Default::default()
    };
    let mut broken = healthy("node-b");
    if let Some(p) = broken.probes.first_mut() {
        p.attached = false;
        p.error = "kernel lacks BTF".into();
    }
    vec![
        (
            "triage-agent/triage-agent-a1b2c on node node-a".to_owned(),
            healthy("node-a"),
        ),
        (
            "triage-agent/triage-agent-d3e4f on node node-b".to_owned(),
            broken,
        ),
    ]
}

#[test]
fn status_summary_and_table() {
    let unanswered = [Unanswered {
        agent: "triage-agent/triage-agent-g5h6i on node node-c".into(),
        node: Some("node-c".into()),
        error: "agent triage-agent/triage-agent-g5h6i on node node-c unreachable: connection \
                refused"
            .into(),
    }];
    let statuses = statuses();
    let mut text = render::status_summary(&statuses, &unanswered, &Style::default());
    text.push('\n');
    text.push_str(&render::status_table(&statuses));
    golden("status", &text);
}

/// The check itself: a difference fails, names the line and keeps the rendering.
#[test]
fn a_difference_fails_and_keeps_the_rendering() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let outcome = std::panic::catch_unwind(|| golden("self-check", "one\ntwo, changed\n"));
    let message = outcome
        .expect_err("a difference must fail")
        .downcast::<String>()
        .expect("a message");
    assert!(message.contains("line 2:"), "{message}");
    let new = dir.join("self-check.new");
    assert_eq!(
        std::fs::read_to_string(&new).expect("the rendering is kept"),
        "one\ntwo, changed\n"
    );
    std::fs::remove_file(new).expect("removing the kept rendering");
}
