//! The CLI as a user runs it: errors are one line on stderr with a non-zero exit, and a query
//! against an agent that answers exits 0 even without evidence. The agent side here is the real
//! gRPC service over a real socket, fed by the real store task (no kernel needed).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios panic with context; helpers are not #[test] fns"
)]

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use triage_agent::{
    api::{AgentApi, AgentInfo, KernelLoss},
    attribute::{AttributorStats, MetaHealth},
    counters::Counters,
    evidence::{Attribution, Direction, Kind, Occurrence, PodRef, Process, Protocol},
    store::{self, Store, StoreHandle},
};
use triage_agent_proto::v1::agent_service_server::AgentServiceServer;

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
    assert!(!out.status.success());
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

struct NoKernel;
impl KernelLoss for NoKernel {
    fn read(&self) -> (u64, u64) {
        (0, 7)
    }
}

fn occurrence(name: &str) -> Occurrence {
    Occurrence {
        kind: Kind::ConnectionRefused,
        at: SystemTime::now(),
        pod: Some(PodRef {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }),
        container: Some("app".into()),
        process: Some(Process {
            pid: 5,
            comm: "curl".into(),
        }),
        attribution: Attribution::Cgroup,
        direction: Direction::Outbound,
        src: "10.0.0.1:40000".parse().unwrap(),
        dst: "10.0.0.2:5432".parse().unwrap(),
        protocol: Protocol::Tcp,
        reason: None,
        peer: None,
    }
}

/// Serves the real service on 127.0.0.1 and runs the real CLI against it.
#[test]
fn query_and_status_over_grpc() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, occ_tx, cancel) = rt.block_on(async {
        let cancel = CancellationToken::new();
        let (occ_tx, occ_rx) = mpsc::channel(16);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        tokio::spawn(store::run(
            Store::new("node-a".into(), 100, Duration::from_secs(3600)),
            occ_rx,
            cmd_rx,
            cancel.clone(),
        ));
        let api = AgentApi {
            info: AgentInfo {
                node: "node-a".into(),
                kernel: "6.18".into(),
                started: SystemTime::now(),
            },
            store: StoreHandle::new(cmd_tx),
            counters: Arc::new(Counters::default()),
            probes: Arc::new(vec![]),
            kernel_loss: Arc::new(NoKernel),
            meta: watch::channel(MetaHealth {
                synced: true,
                ..MetaHealth::default()
            })
            .1,
            attribution: watch::channel(AttributorStats::default()).1,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = cancel.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(api))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move { shutdown.cancelled().await },
                ),
        );
        (addr, occ_tx, cancel)
    });
    let agent = addr.to_string();

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
        occ_tx.send(occurrence("web")).await.unwrap();
        occ_tx.send(occurrence("web")).await.unwrap();
        occ_tx.send(occurrence("other")).await.unwrap();
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

    let out = cli(&["status", "--agent", &agent]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Node node-a")
            && text.contains("metadata: in sync")
            && text.contains("7 connect table full"),
        "{text}"
    );

    // Fan-out to two agents, one of them down: the whole query fails, naming the bad one.
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
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1 unreachable"));
    cancel.cancel();
}
