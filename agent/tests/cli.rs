//! The CLI as a user runs it: errors are one line on stderr with a non-zero exit, and a query
//! against an agent that answers exits 0 even without evidence. The agent side here is the real
//! gRPC service over a real socket, fed by the real store task (no kernel needed).
#![expect(
    clippy::expect_used,
    reason = "test scenarios panic with context; helpers are not #[test] fns"
)]

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, SystemTime},
};

use triage_agent::{
    attribute::Attributed,
    evidence::{Occurrence, fixtures::refused},
    loss::{Counters, Loss},
};

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_triage-agent"))
        .args(args)
        .env_remove("TRIAGE_AGENTS")
        .output()
        .expect("run triage-agent")
}

#[test]
fn unreachable_agent_is_a_one_line_error() {
    // Port 1 on loopback: nothing listens there.
    let out = cli(&[
        "query",
        "--pod",
        "p",
        "-n",
        "ns",
        "--agent",
        "127.0.0.1:1",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(4), "no agent answered: exit 4");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: agent 127.0.0.1:1 unreachable"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no partial answer on stdout");
}

#[test]
fn bad_flags_fail_clearly() {
    let out = cli(&["query", "--agent", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pod"));
    let out = cli(&["query", "--pod", "p", "--agent", "host:notaport"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad port"));
    let out = cli(&[
        "query",
        "--pod",
        "p",
        "--agent",
        "a:1",
        "--since",
        "yesterday",
    ]);
    assert!(!out.status.success());
}

#[test]
fn help_documents_every_command() {
    let out = cli(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["query", "watch", "status"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = cli(&["query", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--pod",
        "--namespace",
        "--since",
        "--agent",
        "--output",
        "--kind",
    ] {
        assert!(text.contains(flag), "{flag} in {text}");
    }
}

/// The real store task and the real gRPC service on 127.0.0.1, with one kernel-side loss
/// already counted.
use triage_agent::api::fixtures::LocalAgent as Agent;

fn start_agent(rt: &tokio::runtime::Runtime) -> Agent {
    start_agent_at(rt, "127.0.0.1:0")
}

/// [`start_agent`] on a chosen address (to restart an agent where it was).
fn start_agent_at(rt: &tokio::runtime::Runtime, addr: &str) -> Agent {
    let counters = Arc::new(Counters::default());
    counters.add(Loss::ConnectTableFull, 7);
    // How far the periodic reads have come: 4 flow table drains, 2 DNS drains, 1 sweep.
    for _ in 0..4 {
        counters.flow_table_drained();
    }
    counters.dns_table_drained();
    counters.dns_table_drained();
    counters.cgroup_swept();
    rt.block_on(triage_agent::api::fixtures::serve_local(
        "node-a", addr, counters,
    ))
}

fn occurrence(name: &str) -> Occurrence {
    refused()
        .pod("shop", name)
        .dst("10.0.0.2:5432")
        .at_time(SystemTime::now())
        .occurrence()
}

/// Serves the real service on 127.0.0.1 and runs the real CLI against it.
#[test]
fn query_and_status_over_grpc() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Agent {
        addr: agent,
        occurrences: occ_tx,
        cancel,
    } = start_agent(&rt);

    // No evidence yet: exit 0, empty list.
    let out = cli(&[
        "query", "--pod", "web", "-n", "shop", "--agent", &agent, "-o", "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["evidence"], serde_json::json!([]));
    assert_eq!(
        v["agents"][0]["loss"]["connect_table_full"], 7,
        "kernel losses are reported"
    );

    rt.block_on(async {
        occ_tx
            .send(Attributed::Occurrence(occurrence("web")))
            .await
            .unwrap();
        occ_tx
            .send(Attributed::Occurrence(occurrence("web")))
            .await
            .unwrap();
        occ_tx
            .send(Attributed::Occurrence(occurrence("other")))
            .await
            .unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let v = loop {
        let out = cli(&[
            "query", "--pod", "web", "-n", "shop", "--agent", &agent, "-o", "json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["evidence"][0]["count"] == 2 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        v["evidence"].as_array().unwrap().len(),
        1,
        "only the asked pod: {v}"
    );
    assert_eq!(v["evidence"][0]["count"], 2);
    assert_eq!(v["evidence"][0]["node"], "node-a");
    assert_eq!(v["diagnosis"][0]["layer"], "connection");

    let out = cli(&["status", "--agent", &agent, "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["flow_table_drains"], 4, "{v}");
    assert_eq!(v[0]["dns_table_drains"], 2, "{v}");
    assert_eq!(v[0]["cgroup_sweeps"], 1, "{v}");

    let out = cli(&["status", "--agent", &agent, "-o", "wide"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Node node-a")
            && text.contains("metadata: in sync")
            && text.contains("7 connect table full"),
        "{text}"
    );

    // Fan-out to two agents, one of them down: the answer of the other, marked incomplete,
    // naming the missing one; exit 3.
    let out = cli(&[
        "query",
        "--pod",
        "web",
        "-n",
        "shop",
        "--agent",
        &agent,
        "--agent",
        "127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(3), "partial answer: exit 3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "warning: the answer is incomplete: 1 of 2 agents did not answer (127.0.0.1:1)"
        ),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Pod shop/web:"), "{text}");
    assert!(
        text.contains("INCOMPLETE: 1 agent(s) did not answer")
            && text.contains("127.0.0.1:1: agent 127.0.0.1:1 unreachable"),
        "{text}"
    );
    let out = cli(&[
        "query",
        "--pod",
        "web",
        "-n",
        "shop",
        "--agent",
        &agent,
        "--agent",
        "127.0.0.1:1",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["complete"], false);
    assert_eq!(v["unanswered"][0]["agent"], "127.0.0.1:1");
    assert_eq!(v["agents"].as_array().map(Vec::len), Some(1));
    cancel.cancel();
}

/// `triage-agent watch` against the real Watch RPC: updates arrive as they are recorded, loss
/// growth between updates is announced, and the stream ends with an error when the agent goes.
#[test]
fn watch_streams_updates_end_to_end() {
    use std::io::{BufRead as _, BufReader};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = start_agent(&rt);
    let mut child = Command::new(env!("CARGO_BIN_EXE_triage-agent"))
        .args(["watch", "-n", "shop", "--agent", &agent.addr, "-o", "json"])
        // Given up at the first loss: this test is about the stream ending, not reconnecting.
        .args(["--give-up-after", "0s"])
        .env_remove("TRIAGE_AGENTS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start watch");
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // The watch is in place once an occurrence sent now shows up; resend until one does, so
    // the test does not depend on how fast the CLI connects.
    let first = (0..50)
        .find_map(|_| {
            rt.block_on(
                agent
                    .occurrences
                    .send(Attributed::Occurrence(occurrence("web"))),
            )
            .unwrap();
            lines.recv_timeout(Duration::from_millis(200)).ok()
        })
        .expect("a watch update within 10 s");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["kind"], "connection_refused");
    assert_eq!(v["pod"]["name"], "web");
    assert_eq!(v["dst"], "10.0.0.2:5432");

    // Another pod's update arrives too (namespace filter), a different namespace's does not.
    rt.block_on(async {
        agent
            .occurrences
            .send(
                refused()
                    .pod("elsewhere", "x")
                    .at_time(SystemTime::now())
                    .occurrence()
                    .into(),
            )
            .await
            .unwrap();
        agent
            .occurrences
            .send(Attributed::Occurrence(occurrence("db")))
            .await
            .unwrap();
    });
    let v = loop {
        let v: serde_json::Value =
            serde_json::from_str(&lines.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
        // Resends of the first occurrence may still be in flight.
        if v["pod"]["name"] != "web" {
            break v;
        }
    };
    assert_eq!(v["pod"]["name"], "db", "{v}");
    assert!(v.get("lost_since_previous").is_none());

    // The agent goes away: the CLI says so and exits non-zero.
    agent.cancel.cancel();
    drop(rt);
    let status = child.wait().unwrap();
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.starts_with("error: agent 127.0.0.1:"), "{err}");
}

/// Completion scripts generate for each shell and know the commands.
#[test]
fn completions_generate() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cli(&["completion", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("triage-agent") && text.contains("query") && text.contains("namespace"),
            "{shell}: {text}"
        );
    }
    assert!(!cli(&["completion", "tcsh"]).status.success());
}

/// Installed as `kubectl-triage_agent`, it is the kubectl plugin `kubectl triage-agent`;
/// installed as `kubectl_complete-triage_agent` it answers kubectl's completion requests
/// (subcommands, flags and fixed flag values here; the cluster's pods and workloads in
/// tests/tests/subjects.rs).
#[test]
fn runs_as_a_kubectl_plugin_with_its_completion_helper() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-triage_agent");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_triage-agent"), &plugin).unwrap();
    let out = Command::new(&plugin)
        .args(["query", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage: kubectl triage-agent query"), "{text}");

    let helper = dir.path().join("kubectl_complete-triage_agent");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_triage-agent"), &helper).unwrap();
    let complete = |words: &[&str]| -> Vec<String> {
        let out = Command::new(&helper)
            .args(words)
            // No cluster: lookups complete nothing, quickly.
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .collect()
    };
    let subs = complete(&["q"]);
    assert_eq!(subs, ["query", ":4"]);
    let flags = complete(&["query", "--na"]);
    assert_eq!(flags, ["--namespace", ":4"]);
    let kinds = complete(&["query", "web", "--kind", "conn"]);
    assert_eq!(kinds, ["connection_refused", "connection_timeout", ":4"]);
    let formats = complete(&["query", "-o", "j"]);
    assert_eq!(
        formats,
        ["json", "jsonpath=", ":6"],
        "no space after jsonpath="
    );
    let formats = complete(&["query", "--output=y"]);
    assert_eq!(formats, ["--output=yaml", ":4"]);
    let types = complete(&["query", "de"]);
    assert_eq!(types, ["deploy/", ":6"]);
    let shells = complete(&["completion", "b"]);
    assert_eq!(shells, ["bash", ":4"]);
    // The same engine as `triage-agent __complete`.
    let out = Command::new(env!("CARGO_BIN_EXE_triage-agent"))
        .args(["__complete", "sta"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| l.split('\t').next()),
        Some(Some("status"))
    );
}

/// A process that names itself with terminal escapes cannot reach the terminal raw, in any
/// table or line; JSON escapes them by its own rules. No colour when stdout is not a terminal.
#[test]
fn hostile_names_are_rendered_safely() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = start_agent(&rt);
    let evil = "\u{1b}[2J\u{1b}]0;pwned\u{7}\u{202e}gnp.exe";
    rt.block_on(async {
        agent
            .occurrences
            .send(
                refused()
                    .pod("shop", "web")
                    .process(4242, evil)
                    .at_time(SystemTime::now())
                    .occurrence()
                    .into(),
            )
            .await
            .unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let out = cli(&[
            "query",
            "--pod",
            "web",
            "-n",
            "shop",
            "--agent",
            &agent.addr,
            "-o",
            "wide",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("4242") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("\\u{1b}[2J"), "{text}");
    assert!(text.contains("\\u{202e}"), "{text}");
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
        "{text:?}"
    );
    let out = cli(&[
        "query",
        "--pod",
        "web",
        "-n",
        "shop",
        "--agent",
        &agent.addr,
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["evidence"][0]["process"]["comm"], evil);
    let out = cli(&["status", "--agent", &agent.addr, "--no-headers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("NODE") && text.contains("node-a"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour off a terminal: {text:?}"
    );
    agent.cancel.cancel();
}

/// `watch` survives an agent restart: the stream is reconnected with backoff and updates
/// flow again.
#[test]
fn watch_reconnects_after_an_agent_restart() {
    use std::io::{BufRead as _, BufReader};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = start_agent(&rt);
    let addr = agent.addr.clone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_triage-agent"))
        .args(["watch", "-n", "shop", "--agent", &addr, "-o", "json"])
        .env_remove("TRIAGE_AGENTS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start watch");
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let seen = |agent: &Agent, name: &str| {
        (0..100).any(|_| {
            rt.block_on(
                agent
                    .occurrences
                    .send(Attributed::Occurrence(occurrence(name))),
            )
            .unwrap();
            std::iter::from_fn(|| lines.recv_timeout(Duration::from_millis(100)).ok())
                .any(|l| l.contains(&format!("\"name\":\"{name}\"")))
        })
    };
    assert!(seen(&agent, "before"), "an update before the restart");
    agent.cancel.cancel();
    // Let the old server go, then start again on the same address.
    std::thread::sleep(Duration::from_millis(300));
    let agent = start_agent_at(&rt, &addr);
    assert!(seen(&agent, "after"), "an update after the restart");
    assert!(child.try_wait().unwrap().is_none(), "watch still runs");
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("reconnecting") && err.contains("is back"),
        "{err}"
    );
    agent.cancel.cancel();
}

/// Without `-n`, a pod is looked for in the kubeconfig context's namespace, as kubectl does
/// (after `kubens shop`, `query --pod web` is shop/web), and `--context` picks another
/// context's; with no kubeconfig at all, "default".
#[test]
fn without_n_the_kubeconfig_contexts_namespace_is_used() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Agent {
        addr: agent,
        occurrences: occ_tx,
        cancel,
    } = start_agent(&rt);
    rt.block_on(async {
        occ_tx
            .send(Attributed::Occurrence(occurrence("web")))
            .await
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    // The server is never asked: the agent is named with --agent.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: shop\n\
         clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\n\
         users:\n- name: u\n  user:\n    token: t\n\
         contexts:\n- name: shop\n  context:\n    cluster: c\n    user: u\n    namespace: shop\n\
         - name: other\n  context:\n    cluster: c\n    user: u\n",
    )
    .unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let ask = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["query", "--pod", "web", "--agent", &agent, "-o", "json"];
        args.extend_from_slice(extra);
        let out = cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The record is stored: shop/web has it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ask(&["-n", "shop"])["evidence"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "never stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = ask(&["--kubeconfig", kubeconfig]);
    assert_eq!(v["evidence"][0]["pod"]["namespace"], "shop", "{v}");
    let v = ask(&["--kubeconfig", kubeconfig, "--context", "other"]);
    assert_eq!(
        v["evidence"],
        serde_json::json!([]),
        "default/web has none: {v}"
    );
    let v = ask(&[
        "--kubeconfig",
        kubeconfig,
        "-n",
        "shop",
        "--context",
        "other",
    ]);
    assert_eq!(v["evidence"][0]["pod"]["name"], "web", "{v}");
    cancel.cancel();
}

/// `-o jsonpath=` and `custom-columns=` over the JSON of `-o json`, the filters on the records'
/// fields, `--until`, and `query -w`; each bad one is one line, exit 1.
#[test]
fn templates_filters_and_the_window_end() {
    use triage_agent::evidence::{Direction, fixtures::dropped};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Agent {
        addr: agent,
        occurrences: occ_tx,
        cancel,
    } = start_agent(&rt);
    let drop = dropped()
        .pod("shop", "web")
        .direction(Direction::Inbound)
        .src("10.244.2.9:51234")
        .dst("10.244.1.5:8080")
        .reason("NETFILTER_DROP")
        .at_time(SystemTime::now())
        .occurrence();
    rt.block_on(async {
        occ_tx
            .send(Attributed::Occurrence(occurrence("web")))
            .await
            .unwrap();
        occ_tx.send(Attributed::Occurrence(drop)).await.unwrap();
    });
    let query = |extra: &[&str]| {
        let mut args = vec!["query", "web", "-n", "shop", "--agent", &agent];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let text = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while text(&query(&["-o", "jsonpath={.evidence[*].kind}"]))
        .split(' ')
        .count()
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "never stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kinds = |extra: &[&str]| {
        let mut args = vec!["-o", "jsonpath={range .evidence[*]}{.kind}{\"\\n\"}{end}"];
        args.extend_from_slice(extra);
        let mut k: Vec<String> = text(&query(&args)).lines().map(str::to_owned).collect();
        k.sort();
        k
    };
    assert_eq!(kinds(&[]), ["connection_refused", "packet_drop"]);
    assert_eq!(kinds(&["--reason", "netfilter_drop"]), ["packet_drop"]);
    assert_eq!(kinds(&["--direction", "outbound"]), ["connection_refused"]);
    assert_eq!(kinds(&["--port", "5432"]), ["connection_refused"]);
    assert_eq!(kinds(&["--peer", "10.244.2.9"]), ["packet_drop"]);
    assert!(kinds(&["--outcome", "nxdomain"]).is_empty());
    // The window's end: both were first seen just now, so not before 1h ago.
    assert!(kinds(&["--until", "1h"]).is_empty());
    assert_eq!(kinds(&["--until", "2999-01-01T00:00:00Z"]).len(), 2);
    let columns = text(&query(&[
        "-o",
        "custom-columns=KIND:.kind,PORT:.dst,REASON:.reason",
        "--kind",
        "packet_drop",
    ]));
    assert_eq!(
        columns,
        "KIND         PORT             REASON\npacket_drop  10.244.1.5:8080  NETFILTER_DROP\n"
    );

    // query -w is watch: it streams what is recorded from now on.
    let mut child = Command::new(env!("CARGO_BIN_EXE_triage-agent"))
        .args([
            "query", "web", "-n", "shop", "--agent", &agent, "-w", "-o", "json",
        ])
        .env_remove("TRIAGE_AGENTS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "query -w streamed nothing"
        );
        rt.block_on(occ_tx.send(Attributed::Occurrence(occurrence("web"))))
            .unwrap();
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            break line;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["kind"], "connection_refused", "{v}");

    // Bad input: one line, exit 1, nothing asked or printed.
    for (args, needle) in [
        (&["-o", "jsonpath={.evidence"][..], "'{' without its '}'"),
        (
            &["-o", "jsonpath={range .evidence[*]}"],
            "{range} without {end}",
        ),
        (&["-o", "custom-columns=KIND"], "expected NAME:PATH"),
        (&["--since", "yesterday"], "neither a duration"),
        (
            &["--since", "5m", "--until", "1h"],
            "--until is before --since",
        ),
    ] {
        let out = query(args);
        let err = String::from_utf8_lossy(&out.stderr);
        let code = if args[0] == "--since" && args.len() == 2 {
            2
        } else {
            1
        };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        if code == 1 {
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        }
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    cancel.cancel();
}

/// `--log-format json`: one object per line, the message at the top level (as log pipelines
/// expect), never nested under `fields`.
#[test]
fn json_logs_put_the_message_at_the_top_level() {
    // A warning the CLI logs: an agent that cannot be reached is reported, then logged at warn.
    let out = Command::new(env!("CARGO_BIN_EXE_triage-agent"))
        .args([
            "--log-format",
            "json",
            "--log",
            "debug",
            "query",
            "web",
            "-n",
            "shop",
            "--agent",
            "127.0.0.1:1",
        ])
        .env_remove("TRIAGE_AGENTS")
        .output()
        .expect("run triage-agent");
    let logs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!logs.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    for l in &logs {
        assert!(l["message"].is_string() && l.get("fields").is_none(), "{l}");
        assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
    }
}
