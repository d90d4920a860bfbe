//! The gRPC service `agent.v1.AgentService`: Query (filtered snapshot), Watch (live stream,
//! slow watchers dropped, every update with the loss counters) and Status (node, kernel,
//! probes, metadata feed, every loss counter). Thin: requests are converted ([`crate::codec`]),
//! answered by the store task, converted back. [`serve`] runs it with its limits: requests of a
//! few KiB, [`MAX_CONNECTIONS`] connections ([`limit`]), and a query's sorting and encoding off
//! the store task and off the runtime's workers.

mod error;
#[doc(hidden)]
pub mod fixtures;
pub mod limit;
mod status;

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use triage_agent_proto::v1::{self as pb, agent_service_server::AgentService};

pub use error::ApiError;
pub use limit::ConnectionLimit;
pub use status::{AgentInfo, AgentState, HEARTBEAT_STALE, Health};

use crate::{codec, store::DEFAULT_QUERY_LIMIT};

/// Most requests served at once per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 32;
/// Most connections open at once; more are closed as they arrive. The service listens on the
/// pod's loopback, reached through `kubectl port-forward` (one connection per CLI command and
/// agent), so every connection comes from the same address and only the total is bounded.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest request message. The largest a client sends is a Query with two Kubernetes names (a
/// namespace of at most 63 bytes, a pod of at most 253), a time, every kind and a limit: under
/// 400 bytes (`largest_request_fits`, in the tests). Four KiB leaves room for fields added
/// later; a bigger request is refused (`OUT_OF_RANGE`) before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024;
/// Largest response message (a full 1000-record answer is about 400 KiB, the largest allowed,
/// 10,000 records, about 4 MiB).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest block of request headers (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`); gRPC's own
/// headers are a few hundred bytes.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Keepalive pings on idle connections detect peers that vanished without closing (a laptop
/// that went to sleep mid-watch); a peer that does not answer within the timeout is dropped.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A unary request that takes longer than this is cancelled.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The service: reads the agent's state.
#[derive(Clone)]
pub struct AgentApi {
    state: AgentState,
    connections: Arc<ConnectionLimit>,
}

impl AgentApi {
    /// The service with the default bound of [`MAX_CONNECTIONS`].
    pub fn new(state: AgentState) -> Self {
        Self::with_connections(
            state,
            ConnectionLimit::new("grpc", MAX_CONNECTIONS, MAX_CONNECTIONS),
        )
    }

    /// The service with its own connection bound.
    pub fn with_connections(state: AgentState, connections: Arc<ConnectionLimit>) -> Self {
        AgentApi { state, connections }
    }

    /// The connections [`serve`] keeps open and refuses (for the metrics).
    pub fn connections(&self) -> Arc<ConnectionLimit> {
        self.connections.clone()
    }
}

/// A Query's answer, from the store's selection: sorted, converted to protobuf. Runs on the
/// blocking pool (10,000 records take milliseconds).
fn query_response(
    selection: crate::store::Selection,
    node: String,
    loss: pb::LossCounters,
    started: std::time::SystemTime,
) -> pb::QueryResponse {
    let result = selection.finish();
    pb::QueryResponse {
        evidence: result.evidence.iter().map(codec::evidence_to_pb).collect(),
        node,
        truncated: result.truncated,
        loss: Some(loss),
        evicted_in_window: result.evicted,
        agent_started: Some(codec::time_to_pb(started)),
        dns_lookups: result
            .dns_lookups
            .iter()
            .map(|(pod, l)| codec::dns_lookups_to_pb(pod, l))
            .collect(),
        pod_losses: result
            .pod_losses
            .iter()
            .map(|(pod, l, last)| codec::pod_losses_to_pb(pod, l, *last))
            .collect(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let req = request.into_inner();
        let filter = codec::filter_from_pb(req.filter).map_err(ApiError::from)?;
        let limit = match req.limit {
            0 => DEFAULT_QUERY_LIMIT,
            n => (n as usize).min(DEFAULT_QUERY_LIMIT * 10),
        };
        // The store task only selects; sorting and encoding happen here, on the blocking
        // pool, so neither the store (every occurrence goes through it) nor a runtime worker
        // waits for a large answer.
        let selection = self
            .state
            .store
            .select(filter, limit)
            .await
            .map_err(ApiError::from)?;
        let node = self.state.info.node.clone();
        let loss = self.state.loss();
        let started = self.state.info.started;
        let response =
            tokio::task::spawn_blocking(move || query_response(selection, node, loss, started))
                .await
                .map_err(ApiError::Answer)?;
        Ok(Response::new(response))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let filter = codec::filter_from_pb(request.into_inner().filter).map_err(ApiError::from)?;
        let sub = self
            .state
            .store
            .subscribe(filter)
            .await
            .map_err(ApiError::from)?;
        let state = self.state.clone();
        let stream = futures::stream::unfold(Some((sub, state)), |s| async move {
            let (mut sub, state) = s?;
            match sub.updates.recv().await {
                Some(e) => {
                    let update = pb::WatchResponse {
                        evidence: Some(codec::evidence_to_pb(&e)),
                        loss: Some(state.loss()),
                    };
                    Some((Ok(update), Some((sub, state))))
                }
                None if sub.lag.is_lagged() => Some((
                    Err(Status::resource_exhausted(
                        "watcher fell behind and was disconnected; reconnect and use Query for what was missed",
                    )),
                    None,
                )),
                None => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.state.status().await?))
    }
}

/// Serves the API on `listener` until `cancel`, with the limits above and the service's
/// connection bound ([`AgentApi::connections`]). Returns when the server stops; an error means
/// it failed.
pub async fn serve(
    api: AgentApi,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    // The server's own tcp_nodelay/tcp_keepalive apply only to listeners it binds itself: set
    // them on ours. Without TCP_NODELAY a small answer waits for the client's delayed ACK
    // (about 40 ms per query).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_INTERVAL));
    let incoming = api.connections().incoming(incoming);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS as usize)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(REQUEST_TIMEOUT)
        .add_service(
            pb::agent_service_server::AgentServiceServer::new(api)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::evidence::Kind;

    /// The largest request a client sends: a Query with the longest names Kubernetes allows,
    /// a time, every kind and the largest limit.
    #[test]
    fn largest_request_fits() {
        let request = pb::QueryRequest {
            filter: Some(pb::EvidenceFilter {
                namespace: "n".repeat(63),
                pod: "p".repeat(253),
                since: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 999_999_999,
                }),
                kinds: Kind::ALL.iter().map(|k| codec::kind_to_pb(*k)).collect(),
                include_unattributed: true,
            }),
            limit: u32::MAX,
        };
        let len = request.encoded_len();
        assert!(len < 400, "{len} bytes");
        assert!(MAX_REQUEST_BYTES >= 10 * len, "{len} bytes");
    }
}
