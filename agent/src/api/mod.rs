//! The gRPC service `agent.v1.AgentService`: Query (filtered snapshot), Watch (live stream,
//! slow watchers dropped, every update with the loss counters) and Status (node, kernel,
//! probes, metadata feed, every loss counter). Thin: requests are converted ([`crate::codec`]),
//! answered by the store task, converted back. [`serve`] runs it with its limits.

mod error;
mod status;

use std::{pin::Pin, sync::atomic::Ordering, time::Duration};

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use triage_agent_proto::v1::{self as pb, agent_service_server::AgentService};

pub use error::ApiError;
pub use status::{AgentInfo, AgentState};

use crate::{codec, store::DEFAULT_QUERY_LIMIT};

/// Most requests served at once per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 32;
/// Largest request or response message (a full 1000-record answer is about 400 KiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
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
}

impl AgentApi {
    pub fn new(state: AgentState) -> Self {
        AgentApi { state }
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
        let result = self
            .state
            .store
            .query(filter, limit)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::QueryResponse {
            evidence: result.evidence.iter().map(codec::evidence_to_pb).collect(),
            node: self.state.info.node.clone(),
            truncated: result.truncated,
            loss: Some(self.state.loss()),
            evicted_in_window: result.evicted,
            agent_started: Some(codec::time_to_pb(self.state.info.started)),
            dns_lookups: result
                .dns_lookups
                .iter()
                .map(|(pod, l)| codec::dns_lookups_to_pb(pod, l))
                .collect(),
        }))
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
                None if sub.lagged.load(Ordering::Relaxed) => Some((
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

/// Serves the API on `listener` until `cancel`, with the limits above. Returns when the server
/// stops; an error means it failed.
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
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS as usize)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(REQUEST_TIMEOUT)
        .add_service(
            pb::agent_service_server::AgentServiceServer::new(api)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await
}
