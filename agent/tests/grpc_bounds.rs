//! The gRPC service's bounds, over real sockets against the real store task: an oversized request
//! is refused with a clear code and the agent keeps answering; connections over the bound are
//! closed at once without touching the open ones; a large query's sorting and encoding do not
//! hold the store task, which keeps answering other commands meanwhile.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test scenarios panic with context; helpers are not #[test] fns"
)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{io::AsyncReadExt as _, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use triage_agent::{
    api::{self, AgentApi, AgentState, ConnectionLimit},
    attribute::Attributed,
    evidence::fixtures::refused,
    loss::Counters,
    store::{self, Store, StoreConfig, StoreHandle},
};
use triage_agent_proto::v1::{self as pb, agent_service_client::AgentServiceClient};

struct Agent {
    addr: SocketAddr,
    store: StoreHandle,
    occurrences: mpsc::Sender<Attributed>,
    connections: Arc<ConnectionLimit>,
    cancel: CancellationToken,
}

/// The store task (room for `capacity` records) and the service on 127.0.0.1, at most
/// `max_connections` connections.
async fn start_agent(capacity: usize, max_connections: usize) -> Agent {
    let cancel = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let (store, occurrences, task) = store::spawn(
        Store::new(
            StoreConfig::new("node-a", capacity, Duration::from_secs(3600)),
            counters.clone(),
        ),
        cancel.clone(),
    );
    tokio::spawn(task);
    let connections = ConnectionLimit::new("grpc", max_connections, max_connections);
    let api = AgentApi::with_connections(
        AgentState::in_process("node-a", store.clone(), counters),
        connections.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve(api, listener, cancel.clone()));
    Agent {
        addr,
        store,
        occurrences,
        connections,
        cancel,
    }
}

async fn client(addr: SocketAddr) -> AgentServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AgentServiceClient::new(channel).max_decoding_message_size(api::MAX_RESPONSE_BYTES)
}

fn query(namespace: &str, limit: u32) -> pb::QueryRequest {
    pb::QueryRequest {
        filter: Some(pb::EvidenceFilter {
            namespace: namespace.to_owned(),
            include_unattributed: true,
            ..pb::EvidenceFilter::default()
        }),
        limit,
    }
}

#[tokio::test]
async fn an_oversized_request_is_refused_and_the_agent_keeps_answering() {
    let agent = start_agent(100, api::MAX_CONNECTIONS).await;
    agent
        .occurrences
        .send(Attributed::Occurrence(
            refused()
                .pod("shop", "web")
                .at_time(SystemTime::now())
                .occurrence(),
        ))
        .await
        .unwrap();
    let mut c = client(agent.addr).await;
    let huge = query(&"x".repeat(api::MAX_REQUEST_BYTES + 1), 10);
    let refused = c.query(huge).await.expect_err("a request over the bound");
    assert!(
        matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{refused:?}"
    );
    assert!(refused.message().contains("too large"), "{refused:?}");

    // The same connection, and a new one, still get answers.
    let answer = c.query(query("shop", 10)).await.unwrap().into_inner();
    assert_eq!(answer.evidence.len(), 1);
    let status = client(agent.addr).await.status(pb::StatusRequest {}).await;
    assert_eq!(status.unwrap().into_inner().store_records, 1);
    agent.cancel.cancel();
}

/// Reads from a connection until the server closes it; panics when it stays open.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection over the bound was kept open"),
        }
    }
}

#[tokio::test]
async fn connections_over_the_bound_are_closed_and_open_ones_keep_working() {
    let agent = start_agent(100, 2).await;
    let mut first = client(agent.addr).await;
    let mut second = client(agent.addr).await;
    first.status(pb::StatusRequest {}).await.unwrap();
    second.status(pb::StatusRequest {}).await.unwrap();
    assert_eq!(agent.connections.open(), 2);

    // A third connection is closed at once: a tonic client fails to connect, a raw one reads
    // the end of the stream.
    let mut raw = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    closed_within(&mut raw, Duration::from_secs(1)).await;
    let third = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = third {
        // The TCP handshake completes before the server closes; the first call fails.
        let answer = AgentServiceClient::new(channel)
            .status(pb::StatusRequest {})
            .await;
        assert!(answer.is_err(), "a connection over the bound was served");
    }
    assert!(agent.connections.refused() >= 2);

    // The open ones are untouched.
    for c in [&mut first, &mut second] {
        let answer = c.query(query("", 10)).await.unwrap().into_inner();
        assert_eq!(answer.node, "node-a");
    }
    // Once one closes, a new one is admitted.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.connections.open() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client(agent.addr)
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap();
    agent.cancel.cancel();
}

/// Records the store holds for the large-query test, and what a query asks for (the most the
/// service answers).
const RECORDS: usize = 50_000;
const LARGE_QUERY: u32 = 10_000;

/// One thread runs the runtime (the store task, the service, this test): a query's sorting and
/// encoding run on the blocking pool, so while they do, the store answers other commands. Were
/// they on the store task or the runtime's thread, a command sent meanwhile would wait for them.
fn seen(e: &pb::Evidence) -> (i64, i32) {
    e.last_seen.map_or((0, 0), |t| (t.seconds, t.nanos))
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_query_does_not_stall_the_store() {
    let agent = start_agent(RECORDS, api::MAX_CONNECTIONS).await;
    let now = SystemTime::now();
    for i in 0..RECORDS {
        let occurrence = refused()
            .pod(&format!("ns-{}", i % 100), &format!("pod-{}", i % 1000))
            .dst(&format!("10.0.{}.{}:80", (i / 250) % 250, i % 250))
            .at_time(now - Duration::from_millis(i as u64))
            .occurrence();
        agent
            .occurrences
            .send(Attributed::Occurrence(occurrence))
            .await
            .unwrap();
    }
    while agent.store.stats().await.unwrap().records < RECORDS as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = client(agent.addr).await;

    // Alone: how long a large query takes, end to end.
    let started = Instant::now();
    let answer = c.query(query("", LARGE_QUERY)).await.unwrap().into_inner();
    let alone = started.elapsed();
    assert_eq!(answer.evidence.len(), LARGE_QUERY as usize);
    assert!(answer.truncated);
    assert!(
        answer
            .evidence
            .windows(2)
            .all(|w| seen(&w[0]) >= seen(&w[1])),
        "newest first"
    );

    // Three more, back to back, while the store is asked for its statistics in a loop.
    let queries = tokio::spawn(async move {
        for _ in 0..3 {
            c.query(query("", LARGE_QUERY)).await.unwrap();
        }
    });
    let mut worst = Duration::ZERO;
    let mut answered = 0;
    while !queries.is_finished() {
        let asked = Instant::now();
        agent.store.stats().await.unwrap();
        worst = worst.max(asked.elapsed());
        answered += 1;
        tokio::task::yield_now().await;
    }
    queries.await.unwrap();
    eprintln!(
        "a query of {LARGE_QUERY} of {RECORDS} records: {alone:?} alone; the store answered \
         {answered} commands meanwhile, the slowest in {worst:?}"
    );
    assert!(
        worst < alone / 2,
        "the store waited {worst:?} for a query that takes {alone:?}"
    );
    agent.cancel.cancel();
}
