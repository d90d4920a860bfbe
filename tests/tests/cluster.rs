//! Privileged end to end: the CLI with only a kubeconfig. One machine plays three nodes (an
//! agent per node name against one stand-in API server, each published as a DaemonSet pod and
//! reached through the API server's pods/portforward); real processes in simulated pods
//! provoke real refusals. Plus the one-line errors and exit codes of cluster access, which need
//! only the stand-in API server.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test scenarios panic with context; helpers shared by tests are not #[test] fns"
)]

use std::time::{Duration, Instant};

use serde_json::Value;
use triage_agent_tests::{
    agent::{AgentProcess, cli_lines_with_kubeconfig, cli_with_kubeconfig},
    apiserver::{
        ApiServer, PodFixture, deployment_objects, owned_by_replica_set, pod_event_object,
        pod_object,
    },
    fixture::NodeFixture,
    simnode::CgroupDriver,
};

const WAIT: Duration = Duration::from_secs(20);

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn nodes_answered(v: &Value) -> Vec<String> {
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap().to_owned())
        .collect()
}

/// Queries through discovery until the answer has a refusal, failing with the last one.
fn query_until_refused(kubeconfig: &std::path::Path, ns: &str, pod: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = cli_with_kubeconfig(kubeconfig, &["query", "--pod", pod, "-n", ns, "-o", "json"])
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = json(&out);
        let refused = v["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "connection_refused" && e["direction"] == "outbound");
        if refused {
            return v;
        }
        assert!(Instant::now() < deadline, "no refusal for {ns}/{pod}: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_kubeconfig_is_all_it_takes() {
    let (mut node, []) = NodeFixture::new()
        .driver(CgroupDriver::Systemd)
        .node()
        .unwrap();
    let (node_a, node_b, node_c) = (
        node.name.clone(),
        format!("{}-b", node.name),
        format!("{}-c", node.name),
    );
    let db = node.add_pod("shop", "db").unwrap();
    let web = node.add_pod("shop", "web").unwrap();
    let api = node.add_pod_on(&node_b, "shop", "api").unwrap();
    let cache = node.add_pod_on(&node_b, "shop", "cache").unwrap();
    let (db_ip, cache_ip, api_ip) = (node.pod(db).ip, node.pod(cache).ip, node.pod(api).ip);
    // An agent per node name, each published as the DaemonSet's pod on its node.
    let mut agents = Vec::new();
    for (i, name) in [&node_a, &node_b, &node_c].into_iter().enumerate() {
        let mut agent = AgentProcess::start_as(&node, name, &[]).unwrap();
        agent.wait_ready(true, WAIT).unwrap();
        agent.publish(&node.api, &format!("triage-agent-{i}"), name);
        agents.push(agent);
    }
    let kubeconfig = node.kubeconfig();

    // Refusals inside node A and inside node B (nothing listens on 5433): each node saw the
    // destination's stack refuse, so each answer is complete on its own node.
    for (pod, ip) in [(web, db_ip), (api, cache_ip)] {
        node.run(pod, &["connect", &format!("{ip}:5433"), "2", "20"])
            .unwrap();
    }

    // Only the pod's node is asked, through the API server.
    let v = query_until_refused(&kubeconfig, "shop", "api");
    assert_eq!(nodes_answered(&v), vec![node_b.clone()], "{v}");
    assert_eq!(v["complete"], true);
    assert!(
        v["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["node"] == node_b.as_str() && e["pod"]["name"] == "api"),
        "{v}"
    );
    let v = query_until_refused(&kubeconfig, "shop", "web");
    assert_eq!(nodes_answered(&v), vec![node_a.clone()], "{v}");

    // The table too, as a user runs it.
    let out = cli_with_kubeconfig(&kubeconfig, &["query", "--pod", "api", "-n", "shop"]).unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("api") && text.contains(&node_b), "{text}");

    // -n fans out to every agent; -l keeps the pods a label selector picks.
    let pods_of = |v: &Value| {
        let mut pods: Vec<String> = v["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["pod"]["name"].as_str().map(str::to_owned))
            .collect();
        pods.sort();
        pods.dedup();
        pods
    };
    let out = cli_with_kubeconfig(&kubeconfig, &["query", "-n", "shop", "-o", "json"]).unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(nodes_answered(&v).len(), 3, "{v}");
    let pods = pods_of(&v);
    assert!(
        pods.contains(&"web".to_owned()) && pods.contains(&"api".to_owned()),
        "{v}"
    );
    let out = cli_with_kubeconfig(
        &kubeconfig,
        &["query", "-n", "shop", "-l", "app=api", "-o", "json"],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(pods_of(&json(&out)), vec!["api".to_owned()]);

    // A pod that moved: with --since, the node its earlier incarnation was scheduled to (the
    // scheduler's event) is asked too.
    node.api.apply_event(pod_event_object(
        "shop",
        "api",
        "api.0",
        "Normal",
        "Scheduled",
        &format!("Successfully assigned shop/api to {node_c}"),
    ));
    let out = cli_with_kubeconfig(
        &kubeconfig,
        &[
            "query", "--pod", "api", "-n", "shop", "--since", "1h", "-o", "json",
        ],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let mut answered = nodes_answered(&json(&out));
    answered.sort();
    let mut expected = vec![node_b.clone(), node_c.clone()];
    expected.sort();
    assert_eq!(answered, expected);

    // The incident timeline: the evidence, the pod's events and its Deployment's rollout
    // history, as Markdown.
    let (deployment, replica_sets) = deployment_objects(
        "shop",
        "api",
        &[
            (1, "api-5c7d", "registry.example/api:1.0"),
            (2, "api-8f9a", "registry.example/api:1.1"),
        ],
    );
    node.api.apply_deployment(deployment);
    for rs in replica_sets {
        node.api.apply_replica_set(rs);
    }
    let p = node.pod(api);
    node.api.apply_pod(owned_by_replica_set(
        pod_object(&PodFixture {
            namespace: "shop",
            name: "api",
            uid: &p.uid,
            node: &node_b,
            pod_ip: Some(p.ip.into()),
            host_ip: Some(node.node_ip().into()),
            host_network: false,
            qos_class: "BestEffort",
            containers: &[(&p.container, &p.container_id)],
        }),
        "shop",
        "api-8f9a",
    ));
    node.api.apply_event(pod_event_object(
        "shop",
        "api",
        "api.1",
        "Warning",
        "Unhealthy",
        "Readiness probe failed: connection refused",
    ));
    let out = cli_with_kubeconfig(
        &kubeconfig,
        &["timeline", "--pod", "api", "-n", "shop", "-o", "markdown"],
    )
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "# Incident: shop/api",
        "- **Workload:** Deployment shop/api",
        "Rollout: revision 2 (ReplicaSet api-8f9a, image registry.example/api:1.1)",
        "kubectl rollout history: revision 1 = api-5c7d, revision 2 = api-8f9a",
        "`kubectl rollout history deployment/api -n shop`",
        "## Timeline",
        "Pod event Warning Unhealthy: Readiness probe failed",
        "first connection_refused on node",
        "## Findings (ranked)",
        "(evidence: E1)",
        "## Preventive actions",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }

    // watch -A merges the agents' streams.
    let (mut watch, lines) =
        cli_lines_with_kubeconfig(&kubeconfig, &["watch", "-A", "-o", "json"]).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "watch saw only {seen:?}");
        // New flows (new destination ports) so each is a new record, streamed at once.
        for (pod, ip, port) in [(web, db_ip, 6000), (api, cache_ip, 6001)] {
            node.run(pod, &["connect", &format!("{ip}:{port}"), "1", "0"])
                .unwrap();
        }
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["kind"] == "connection_refused" && v["pod"]["name"].is_string() {
                seen.insert(v["node"].as_str().unwrap().to_owned());
            }
        }
    }
    assert!(seen.contains(&node_a) && seen.contains(&node_b), "{seen:?}");
    let _ = watch.kill();
    let _ = watch.wait();

    // A refusal from another node (api on B to db on A): B cannot tell who refused, so db's
    // node is asked for its side of api's flows, and answers that db's stack refused them.
    node.run(api, &["connect", &format!("{db_ip}:5434"), "2", "20"])
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let v = loop {
        let out = cli_with_kubeconfig(
            &kubeconfig,
            &["query", "--pod", "api", "-n", "shop", "-o", "json"],
        )
        .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = json(&out);
        let other_side = v["evidence"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "connection_refused"
                && e["direction"] == "inbound"
                && e["pod"]["name"] == "db"
                && e["node"] == node_a.as_str()
                && e["src"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{api_ip}:"))
        });
        if other_side {
            break v;
        }
        assert!(Instant::now() < deadline, "db's side never came: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut answered = nodes_answered(&v);
    answered.sort();
    let mut expected = vec![node_a.clone(), node_b.clone()];
    expected.sort();
    assert_eq!(answered, expected, "{v}");
    assert!(
        v["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["pod"]["name"] == "api"
                || e["src"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{api_ip}:"))),
        "only api's flows from db's side: {v}"
    );

    // Node B's agent stops: asking every node is a partial answer naming it (exit 3) ...
    agents[1].stop().unwrap();
    let out = cli_with_kubeconfig(
        &kubeconfig,
        &[
            "query",
            "--pod",
            "web",
            "-n",
            "shop",
            "--all-nodes",
            "-o",
            "json",
        ],
    )
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["complete"], false);
    assert_eq!(v["unanswered"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["unanswered"][0]["node"], node_b.as_str(), "{v}");
    let mut answered = nodes_answered(&v);
    answered.sort();
    let mut expected = vec![node_a.clone(), node_c.clone()];
    expected.sort();
    assert_eq!(answered, expected);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("warning: the answer is incomplete") && err.contains(&node_b),
        "{err}"
    );
    // ... status lists it first, as a problem (exit 3) ...
    let out = cli_with_kubeconfig(&kubeconfig, &["status"]).unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("NODE"), "{text}");
    assert!(
        rows[1].starts_with(node_b.as_str()) && rows[1].contains("NO ANSWER"),
        "{text}"
    );
    assert_eq!(
        rows.iter().filter(|r| r.contains(" OK ")).count(),
        2,
        "{text}"
    );
    // ... and asking only its node is no answer at all (exit 4), one line naming it.
    let out = cli_with_kubeconfig(&kubeconfig, &["query", "--pod", "api", "-n", "shop"]).unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: agent ") && err.contains(&node_b),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// Errors of cluster access: one line on stderr each, nothing on stdout, the documented code.
#[test]
fn cluster_errors_are_one_line_with_their_exit_code() {
    let api = ApiServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.apply_pod(pod_object(&PodFixture {
        namespace: "shop",
        name: "web",
        uid: "uid-web",
        node: "node-1",
        pod_ip: None,
        host_ip: None,
        host_network: false,
        qos_class: "BestEffort",
        containers: &[("app", "c1")],
    }));
    let check = |args: &[&str], code: i32, needle: &str| {
        let out = cli_with_kubeconfig(&kubeconfig, args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    };
    let query = ["query", "--pod", "web", "-n", "shop"];
    check(
        &[&query[..], &["--kubeconfig", "/nonexistent/kubeconfig"]].concat(),
        5,
        "/nonexistent/kubeconfig",
    );
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "clusters: [unterminated").unwrap();
    check(
        &[&query[..], &["--kubeconfig", garbage.to_str().unwrap()]].concat(),
        5,
        "kubeconfig",
    );
    check(
        &[&query[..], &["--context", "nope"]].concat(),
        5,
        "context \"nope\" not found",
    );
    check(
        &["query", "--pod", "nope", "-n", "shop"],
        6,
        "pod shop/nope not found",
    );
    // The pod exists but no agent runs on its node.
    check(&query, 4, "no agent pod on node node-1");
    // RBAC: reading pods is denied.
    api.forbid("pods");
    check(&query, 5, "forbidden");
    // kubectl's connection flags: --as and --as-group impersonate (RBAC then names that
    // user), --cluster and --user pick the kubeconfig's entries, --request-timeout bounds a
    // request.
    check(
        &[
            &query[..],
            &["--as", "alice", "--as-group", "ops", "--as-group", "dev"],
        ]
        .concat(),
        5,
        "User \"alice\" cannot get resource \"pods\"",
    );
    assert!(
        api.impersonations()
            .contains(&("alice".to_owned(), vec!["ops".to_owned(), "dev".to_owned()])),
        "{:?}",
        api.impersonations()
    );
    api.allow("pods");
    check(
        &[&query[..], &["--cluster", "nope"]].concat(),
        5,
        "cluster \"nope\" not found in the kubeconfig (clusters: sim)",
    );
    check(
        &[&query[..], &["--user", "nope"]].concat(),
        5,
        "user \"nope\" not found in the kubeconfig",
    );
    check(
        &[&query[..], &["--cluster", "sim", "--user", "sim"]].concat(),
        4,
        "no agent pod on node node-1",
    );
    api.set_latency(Duration::from_secs(3));
    check(
        &[&query[..], &["--request-timeout", "1s"]].concat(),
        5,
        "no answer within 1s (--request-timeout)",
    );
    api.set_latency(Duration::ZERO);
    // RBAC: port-forwarding to the agent is denied.
    api.apply_pod(triage_agent_tests::apiserver::agent_pod_object(
        "triage-agent-0",
        "node-1",
    ));
    api.forward_port(
        "triage-agent",
        "triage-agent-0",
        9742,
        "127.0.0.1:1".parse().unwrap(),
    );
    api.forbid("pods/portforward");
    check(&query, 4, "cannot create resource \"pods/portforward\"");
    api.allow("pods/portforward");
    // Nothing listens on the agent's port: the forward's own error.
    check(&query, 4, "error forwarding port 9742");
    // The API server is down.
    drop(api);
    check(&query, 5, "cannot reach the API server");
}
