//! The agent's modules in the order data flows, checked on the source: producers (probes,
//! samplers, the DNS matcher) hand events to attribution, attribution to the store, the store to
//! the API; the CLI and the OpenTelemetry export consume the model and never each other. A
//! module may import only modules of an earlier stage, and no two files may import each other.
//! A new top-level module fails this test until it is given its stage in [`STAGES`].

#![expect(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a test of the source tree: a panic is a failure"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Top-level modules by stage, earliest first. A module imports only modules of earlier
/// stages; modules of one stage are peers and import none of each other.
const STAGES: &[&[&str]] = &[
    // Leaves: what the kernel says about itself; text for people (times, sizes, escaped names).
    &["kernel", "text"],
    // The model: one occurrence shape, a detail per kind, their names; each kind's module holds
    // all it means (key, merge, JSON, text cells, diagnosis, severity, wire codec), one line a
    // record.
    &["evidence"],
    // Loss counters by name.
    &["loss"],
    // cgroups; the wire codec beside the model; the diagnosis of evidence.
    &["cgroup", "codec", "diagnose"],
    // The events producers hand to attribution.
    &["event"],
    // Producers: kernel programs and their readers; cgroupfs samplers.
    &["probes", "samplers"],
    // The DNS matcher (reads the probes' DNS ring); each signal's mode (from probes and samplers).
    &["dns", "signals"],
    &["attribute"],
    // The store; NetworkPolicy evaluation (cluster objects, no agent state).
    &["store", "policy"],
    // Consumers of the store: the gRPC API, the OpenTelemetry export.
    &["api", "otlp"],
    // The client commands; the Prometheus endpoint (reads the API's state and the export's).
    &["cli", "metrics"],
    // Wiring: node checks, task supervision, the node agent, the binary's command line; the
    // fuzz targets' bodies (they drive every stage).
    &["doctor", "supervisor"],
    &["node"],
    &["app", "fuzzing"],
];

fn stage(module: &str) -> Option<usize> {
    STAGES.iter().position(|s| s.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file under src/, with its module path ("cli/render" for src/cli/render.rs and
/// src/cli/render/mod.rs; "" for lib.rs and main.rs).
fn files(dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("reading src/").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src()).expect("under src/");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.push((parts.join("/"), path));
        }
    }
}

/// Source without comments (line and block) and string literals, so paths in docs or strings
/// do not count as imports.
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' && !(i > 0 && b[i - 1] == b'\'') {
            // A string (raw strings in this crate hold no quotes that matter here).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    out
}

/// The paths a use tree or an expression names after `prefix::`: `{a, b::{c, d}}` gives
/// [a], [b, c], [b, d].
fn paths(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' | ',' if depth == 1 => {
                    paths(&inner[start..i], prefix, out);
                    start = i + 1;
                    if c == '}' {
                        return;
                    }
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        return;
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    if end == 0 {
        out.push(prefix.to_vec());
        return;
    }
    let mut next = prefix.to_vec();
    next.push(s[..end].to_owned());
    match s[end..].strip_prefix("::") {
        Some(rest) => paths(rest, &next, out),
        None => out.push(next),
    }
}

/// The modules each file imports (by `crate::` and `super::` paths), resolved to the longest
/// module path that is a file.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let modules: BTreeSet<String> = all.iter().map(|(m, _)| m.clone()).collect();
    let mut edges = BTreeMap::new();
    for (module, path) in &all {
        let text = code(&std::fs::read_to_string(path).expect("reading a source file"));
        let mut named = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            paths(&text[at + "crate::".len()..], &[], &mut named);
        }
        // `super::` is the parent of the file's module (for cli/render.rs and
        // cli/render/mod.rs alike, `cli`).
        let mut parent: Vec<String> = module
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        parent.pop();
        for (at, _) in text.match_indices("super::") {
            if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            paths(&text[at + "super::".len()..], &parent, &mut named);
        }
        let mut to = BTreeSet::new();
        for p in named {
            let found = (1..=p.len())
                .rev()
                .map(|n| p[..n].join("/"))
                .find(|cand| modules.contains(cand));
            if let Some(target) = found
                && target != *module
                && !module.starts_with(&format!("{target}/"))
            {
                to.insert(target);
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

fn top(module: &str) -> &str {
    module.split('/').next().unwrap_or(module)
}

#[test]
fn every_module_imports_only_earlier_stages() {
    let edges = imports();
    let mut unstaged = BTreeSet::new();
    let mut against = Vec::new();
    for (from, tos) in &edges {
        if from.is_empty() {
            continue;
        }
        let Some(from_stage) = stage(top(from)) else {
            unstaged.insert(top(from).to_owned());
            continue;
        };
        for to in tos {
            if top(to) == top(from) || to.is_empty() {
                continue;
            }
            match stage(top(to)) {
                Some(s) if s < from_stage => {}
                _ => against.push(format!("{from} -> {to}")),
            }
        }
    }
    assert!(
        unstaged.is_empty(),
        "modules without a stage in STAGES: {unstaged:?}"
    );
    assert!(
        against.is_empty(),
        "imports against the data flow (or between peers):\n{}",
        against.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other() {
    let edges = imports();
    let mut loops = Vec::new();
    for (a, tos) in &edges {
        for b in tos {
            if a < b && edges.get(b).is_some_and(|t| t.contains(a)) {
                loops.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(loops.is_empty(), "files importing each other: {loops:?}");
}

/// The checker itself: it sees imports through use trees, nested groups and `super::`, and
/// not in comments or strings.
#[test]
fn the_checker_reads_use_trees() {
    let mut out = Vec::new();
    paths("{a, b::{c, d::e}, f}", &[], &mut out);
    assert_eq!(
        out,
        vec![
            vec!["a".to_owned()],
            vec!["b".to_owned(), "c".to_owned()],
            vec!["b".to_owned(), "d".to_owned(), "e".to_owned()],
            vec!["f".to_owned()],
        ]
    );
    let text = code("use x; // crate::cli\n/* crate::otlp */ let s = \"crate::api\"; crate::store");
    assert!(!text.contains("cli") && !text.contains("otlp") && !text.contains("api"));
    assert!(text.contains("crate::store"));
    let edges = imports();
    assert!(
        edges["attribute"].contains("event"),
        "attribution's import of the events is seen: {:?}",
        edges["attribute"]
    );
    assert!(
        edges["cli/commands"].contains("cli/targets"),
        "a super:: import is seen: {:?}",
        edges["cli/commands"]
    );
}
