//! The Markdown timeline against a snapshot (`snapshot.md`; a difference is written to `snapshot.md.new` for review
//! for review), and its safety rules.

use std::time::{Duration, SystemTime};

use super::*;
use crate::{
    diagnose::diagnose_cited,
    evidence::fixtures::{dropped, oom_killed, refused},
};

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
}

fn cluster() -> ClusterView {
    ClusterView {
        workload: Some("Deployment shop/web".into()),
        revisions: vec![
            Revision {
                revision: "6".into(),
                replica_set: "web-5c7d".into(),
                created: Some(t(0)),
                images: vec!["registry.example/web:1.4.1".into()],
            },
            Revision {
                revision: "7".into(),
                replica_set: "web-8f9a".into(),
                created: Some(t(600)),
                images: vec!["registry.example/web:1.5.0".into()],
            },
        ],
        events: vec![
            (
                t(610),
                "Normal".into(),
                "Scheduled".into(),
                "Successfully assigned shop/web to node-b".into(),
                1,
            ),
            (
                t(700),
                "Warning".into(),
                "Unhealthy".into(),
                "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
                4,
            ),
        ],
        unreadable: vec![],
    }
}

#[test]
fn markdown_matches_the_snapshot() {
    let at = |mut e: Evidence, first: u64, last: u64| {
        e.first_seen = t(first);
        e.last_seen = t(last);
        e
    };
    let evidence = vec![
        at(
            refused()
                .pod("shop", "web")
                .node("node-b")
                .count(12)
                .evidence(),
            650,
            720,
        ),
        at(
            oom_killed()
                .pod("shop", "web")
                .node("node-b")
                .process(311, "worker\u{1b}[2J")
                .evidence(),
            680,
            680,
        ),
    ];
    let findings = diagnose_cited(&evidence);
    let view = cluster();
    let text = markdown(&Inputs {
        namespace: "shop",
        pod: "web",
        since: t(0),
        evidence: &evidence,
        findings: &findings,
        nodes: &["node-b".to_owned()],
        unanswered: &[],
        cluster: &view,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/cli/timeline/snapshot.md");
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    // A difference is written beside the snapshot for review (`diff`, then `mv` to accept
    // it); the test never rewrites what it compares against.
    let new = format!("{path}.new");
    if text == expected {
        let _ = std::fs::remove_file(&new);
    } else {
        std::fs::write(&new, &text).unwrap_or_else(|e| panic!("{new}: {e}"));
    }
    assert!(
        text == expected,
        "timeline differs from {path}; the new text is in {new} (review it, then mv it over \
         the snapshot to accept):\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no raw escape reaches the document"
    );
}

#[test]
fn never_a_destructive_next_step() {
    for step in [
        "kubectl delete pod web",
        "run kubectl rollout restart deployment/web",
        "kubectl drain node-b",
    ] {
        let safe = safe_next_step(step);
        assert!(!DESTRUCTIVE.iter().any(|d| safe.contains(d)), "{safe}");
    }
    assert_eq!(
        safe_next_step("kubectl describe pod web"),
        "kubectl describe pod web"
    );
}

#[test]
fn an_empty_window_still_has_the_template() {
    let view = ClusterView::default();
    let text = markdown(&Inputs {
        namespace: "shop",
        pod: "web",
        since: t(0),
        evidence: &[],
        findings: &[],
        nodes: &[],
        unanswered: &[("node-c".into(), "unreachable".into())],
        cluster: &view,
    });
    for heading in [
        "# Incident: shop/web",
        "## Timeline",
        "## Evidence",
        "## Findings (ranked)",
        "## Root cause hypothesis",
        "## Confirmed root cause",
        "## Preventive actions",
        "**Incomplete:** 1 agent(s)",
    ] {
        assert!(text.contains(heading), "{heading} in {text}");
    }
}

/// Where a line's structure is decided: its heading marks, list marker or number, indent.
fn shape(line: &str) -> String {
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start();
    let marker: String = rest
        .chars()
        .take_while(|c| matches!(c, '#' | '-' | '*' | '+' | '>' | '|') || c.is_ascii_digit())
        .collect();
    format!("{indent}:{marker}")
}

/// The timeline of pod `pod` in `ns`, every cell from the cluster, the agents and the kernel
/// set to `name`.
fn rendered(ns: &str, pod: &str, name: &str) -> String {
    let evidence = vec![
        refused().pod(ns, pod).node(name).count(3).evidence(),
        oom_killed()
            .pod(ns, pod)
            .node(name)
            .process(7, name)
            .evidence(),
        dropped().pod(ns, pod).node(name).reason(name).evidence(),
    ];
    let findings = diagnose_cited(&evidence);
    let view = ClusterView {
        workload: Some(format!("Deployment {ns}/{name}")),
        revisions: vec![Revision {
            revision: name.into(),
            replica_set: name.into(),
            created: Some(t(10)),
            images: vec![name.into()],
        }],
        events: vec![(t(20), "Warning".into(), name.into(), name.into(), 2)],
        unreadable: vec![name.into()],
    };
    markdown(&Inputs {
        namespace: ns,
        pod,
        since: t(0),
        evidence: &evidence,
        findings: &findings,
        nodes: &[name.to_owned()],
        unanswered: &[(name.to_owned(), name.to_owned())],
        cluster: &view,
    })
}

#[test]
fn hostile_names_stay_literal_text_and_keep_the_documents_shape() {
    let hostile = "a|b*c_d`e<img src=x>[l](javascript:x)!~~s~~&amp;#\\\n- item\n# heading\r|";
    // The name as a reader must see it: control characters spelled out, every character
    // Markdown could read as markup backslash-escaped.
    let escaped = r"a\|b\*c\_d\`e\<img src=x\>\[l\](javascript:x)\!\~\~s\~\~\&amp;\#\\\\u{a}- item\\u{a}\# heading\\u{d}\|";
    // In a code span, where backslashes are literal, only control characters are spelled out.
    let in_code =
        r"a|b*c_d`e<img src=x>[l](javascript:x)!~~s~~&amp;#\\u{a}- item\u{a}# heading\u{d}|";
    let plain = rendered("plain", "plain", "plain");
    let text = rendered(hostile, hostile, hostile);
    let shapes = |t: &str| t.lines().map(shape).collect::<Vec<_>>();
    assert_eq!(
        shapes(&text),
        shapes(&plain),
        "a name changed the document's structure:\n{text}"
    );
    // Everything else is the same document: every occurrence of the name is escaped as a
    // whole, and the code spans' fence outgrows the backtick in the name.
    for (line, plain_line) in text.lines().zip(plain.lines()) {
        let back = if line.starts_with("- `") {
            line.replace(in_code, "plain").replace("``", "`")
        } else {
            line.replace(escaped, "plain")
        };
        assert_eq!(back, plain_line, "{line:?}");
    }
}

/// docs/examples/timeline.md shows the snapshot, unchanged.
#[test]
fn the_documented_example_is_the_snapshot() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap_or_default();
    let (doc, snapshot) = (
        read("docs/examples/timeline.md"),
        read("agent/src/cli/timeline/snapshot.md"),
    );
    let (begin, end) = ("<!-- example:timeline -->\n", "<!-- /example:timeline -->");
    let shown = doc
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(shown, _)| shown);
    assert_eq!(
        shown,
        Some(snapshot.as_str()),
        "docs/examples/timeline.md is not the snapshot: copy it between the markers"
    );
}
