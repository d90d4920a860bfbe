use std::net::{IpAddr, Ipv4Addr};

use axum::body::Body;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::{
    api::AgentState,
    attribute::MetaHealth,
    loss::Counters,
    store::{self, Store, StoreConfig},
};

/// A real store task and the metrics state around it. The task runs until `cancel` (its
/// occurrence sender is kept alive until then).
fn state(cancel: &CancellationToken) -> MetricsState {
    let counters = Arc::new(Counters::default());
    let (store, occurrences, task) = store::spawn(
        Store::new(
            StoreConfig::new("node-a", 100, Duration::from_secs(3600)),
            counters.clone(),
        ),
        cancel.clone(),
    );
    tokio::spawn(task);
    let done = cancel.clone();
    tokio::spawn(async move {
        done.cancelled().await;
        drop(occurrences);
    });
    MetricsState {
        agent: AgentState::in_process("node-a", store, counters),
        program_ids: Arc::new(Vec::new()),
        otlp: None,
        grpc_connections: None,
    }
}

fn server(state: MetricsState) -> Server {
    Server {
        state,
        cache: Arc::default(),
        connections: ConnectionLimit::new("metrics", 4, 2),
    }
}

async fn get(app: &Router, path: &str, peer: IpAddr) -> (StatusCode, String) {
    let request = axum::http::Request::get(path)
        .extension(Peer(SocketAddr::new(peer, 40000)))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const POD: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

#[tokio::test]
async fn concurrent_scrapes_share_one_snapshot() {
    let cancel = CancellationToken::new();
    let server = server(state(&cancel));
    let cache = server.cache.clone();
    let app = router(server);
    let scrapes: Vec<_> = (0..200)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get(&app, "/metrics", POD).await })
        })
        .collect();
    let mut bodies = std::collections::BTreeSet::new();
    for scrape in scrapes {
        let (status, body) = scrape.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("triage_agent_store_records"), "{body}");
        assert!(
            body.contains("triage_agent_connections_refused_total{listener=\"metrics\"} 0"),
            "{body}"
        );
        bodies.insert(body);
    }
    // Two hundred scrapes within a second: one snapshot, one store command.
    assert_eq!(cache.computed.load(Ordering::Relaxed), 1);
    assert_eq!(bodies.len(), 1);
    // Past the interval, the next scrape computes a new one.
    tokio::time::sleep(SCRAPE_CACHE + Duration::from_millis(50)).await;
    let (status, _) = get(&app, "/metrics", POD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache.computed.load(Ordering::Relaxed), 2);
    cancel.cancel();
}

/// A store too slow to answer: the failure is shared like a snapshot, so the scrapes that
/// queue meanwhile send it no command of their own, and all are answered when the first is.
#[tokio::test]
async fn a_store_that_does_not_answer_gets_one_command_per_interval() {
    let counters = Arc::new(Counters::default());
    // The store task is never run: every command waits in its queue.
    let (store, _occurrences, _task) = store::spawn(
        Store::new(
            StoreConfig::new("node-a", 100, Duration::from_secs(3600)),
            counters.clone(),
        ),
        CancellationToken::new(),
    );
    let server = server(MetricsState {
        agent: AgentState::in_process("node-a", store, counters),
        program_ids: Arc::new(Vec::new()),
        otlp: None,
        grpc_connections: None,
    });
    let cache = server.cache.clone();
    let app = router(server);
    let started = Instant::now();
    let scrapes: Vec<_> = (0..5)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get(&app, "/metrics", POD).await })
        })
        .collect();
    for scrape in scrapes {
        let (status, body) = scrape.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body, "the evidence store did not answer in time\n");
    }
    assert_eq!(
        cache.computed.load(Ordering::Relaxed),
        1,
        "one store command for all five scrapes"
    );
    assert!(
        started.elapsed() < SCRAPE_STORE_DEADLINE + SCRAPE_CACHE,
        "the queued scrapes waited for commands of their own: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn readyz_explains_itself_to_loopback_only() {
    let cancel = CancellationToken::new();
    let mut state = state(&cancel);
    // The pod list was never read: not ready, for a reason that names the API server's error.
    state.agent.meta = tokio::sync::watch::channel(MetaHealth {
        last_error: Some("403 Forbidden from https://10.96.0.1".into()),
        ..MetaHealth::default()
    })
    .1;
    let app = router(server(state));
    let (status, body) = get(&app, "/readyz", LOOPBACK).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("403 Forbidden"), "{body}");
    let (status, body) = get(&app, "/readyz", POD).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !body.contains("403") && !body.contains("pod list"),
        "{body}"
    );
    assert!(body.starts_with("not ready"), "{body}");
    // Liveness is the store's loop, which turns.
    let (status, body) = get(&app, "/healthz", POD).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    cancel.cancel();
}

/// Reads from `stream` until the server closes it; how long that took.
async fn time_to_close(stream: &mut tokio::net::TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open for 20 s"),
        }
    }
}

#[tokio::test]
async fn excess_and_slow_connections_are_closed() {
    let cancel = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = ConnectionLimit::new("metrics", 4, 2);
    tokio::spawn(serve_with(
        state(&cancel),
        listener,
        connections.clone(),
        cancel.clone(),
    ));

    // Two slow-loris clients from one address: a request line and never the end of headers.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    while connections.open() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A third from the same address is over the per-address bound: closed at once.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(time_to_close(&mut third).await < Duration::from_secs(1));
    assert_eq!(connections.refused(), 1);
    // Another address still gets an answer (Linux routes all of 127/8 to loopback).
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(addr).await.unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The slow ones are closed once the header read timeout passes.
    for s in &mut slow {
        let waited = time_to_close(s).await;
        assert!(
            waited < HEADER_READ_TIMEOUT + Duration::from_secs(2),
            "{waited:?}"
        );
    }
    while connections.open() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
}

/// How far the agent's periodic reads have come (kernel flow tables, DNS tables, cgroup
/// sweeps) is scraped as counters.
#[tokio::test]
async fn drains_and_sweeps_are_counters() {
    let cancel = CancellationToken::new();
    let state = state(&cancel);
    let counters = state.agent.counters.clone();
    for _ in 0..3 {
        counters.flow_table_drained();
    }
    counters.dns_table_drained();
    for _ in 0..2 {
        counters.cgroup_swept();
    }
    let app = router(server(state));
    let (status, body) = get(&app, "/metrics", POD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for line in [
        "# TYPE triage_agent_flow_table_drains_total counter",
        "triage_agent_flow_table_drains_total 3",
        "triage_agent_dns_table_drains_total 1",
        "triage_agent_cgroup_sweeps_total 2",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} in {body}");
    }
    cancel.cancel();
}

/// A scrape that asks for OpenMetrics (as Prometheus does) gets it; any other gets the text
/// format 0.0.4: counters' families named with `_total`, no `# EOF`.
#[tokio::test]
async fn the_scrapes_accept_header_chooses_the_format() {
    let cancel = CancellationToken::new();
    let app = router(server(state(&cancel)));
    let scrape = |accept: Option<&'static str>| {
        let app = app.clone();
        async move {
            let mut request =
                axum::http::Request::get("/metrics").extension(Peer(SocketAddr::new(POD, 40000)));
            if let Some(a) = accept {
                request = request.header(header::ACCEPT, a);
            }
            let response = app
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let kind = response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_owned();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (kind, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (kind, body) = scrape(Some(
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    ))
    .await;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(body.contains("# TYPE triage_agent_loss counter\n") && body.ends_with("# EOF\n"));
    for accept in [
        None,
        Some("text/plain"),
        Some("application/openmetrics-text;q=0, */*"),
    ] {
        let (kind, body) = scrape(accept).await;
        assert!(
            kind.starts_with("text/plain; version=0.0.4"),
            "{accept:?}: {kind}"
        );
        assert!(
            body.contains("# TYPE triage_agent_loss_total counter\n")
                && body.contains("# HELP triage_agent_loss_total ")
                && !body.contains("# EOF"),
            "{accept:?}: {body}"
        );
    }
    cancel.cancel();
}
