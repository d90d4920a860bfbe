//! The real gRPC service on a loopback socket, fed by the real store task with no kernel
//! behind it: what the CLI's tests (agent/tests/cli.rs, tests/tests/subjects.rs) ask.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{AgentApi, AgentInfo, AgentState, serve};
use crate::{
    attribute::{Attributed, AttributorStats, MetaHealth},
    loss::Counters,
    store::{self, Store, StoreConfig, StoreHandle},
};

/// An agent's state for tests: node `node`, kernel "6.18", no probes or runtime, its
/// metadata feed synced.
pub fn agent_state(node: &str, store: StoreHandle, counters: Arc<Counters>) -> AgentState {
    AgentState {
        info: AgentInfo {
            node: node.into(),
            kernel: "6.18".into(),
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
        },
        store,
        counters,
        probes: Arc::new(vec![]),
        runtime: None,
        meta: watch::channel(MetaHealth {
            synced: true,
            ..MetaHealth::default()
        })
        .1,
        attribution: watch::channel(AttributorStats::default()).1,
        persistence: None,
        resources: None,
    }
}

/// A served agent: its address (HOST:PORT), where its occurrences go in, and what stops it.
pub struct LocalAgent {
    pub addr: String,
    pub occurrences: mpsc::Sender<Attributed>,
    pub cancel: CancellationToken,
}

/// Serves an agent of node `node` on `addr` (e.g. "127.0.0.1:0") with these loss counters,
/// inside the calling tokio runtime. Its metadata feed reads synced, its kernel "6.18".
///
/// # Panics
/// When `addr` cannot be bound (a test fixture: the test fails there).
#[expect(
    clippy::expect_used,
    reason = "a test fixture: a bind failure fails the test"
)]
pub async fn serve_local(node: &str, addr: &str, counters: Arc<Counters>) -> LocalAgent {
    let cancel = CancellationToken::new();
    let (store, occurrences, task) = store::spawn(
        Store::new(
            StoreConfig::new(node, 100, Duration::from_secs(3600)),
            counters.clone(),
        ),
        cancel.clone(),
    );
    tokio::spawn(task);
    let api = AgentApi::new(agent_state(node, store, counters));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the agent's socket");
    let addr = listener.local_addr().expect("a bound address").to_string();
    tokio::spawn(serve(api, listener, cancel.clone()));
    LocalAgent {
        addr,
        occurrences,
        cancel,
    }
}
