//! The gRPC service `agent.v1.AgentService`: Query (filtered snapshot), Watch (live stream,
//! slow watchers dropped) and Status (node, kernel, probes, metadata feed, every loss counter).
//! Thin: requests are converted, answered by the store task, converted back.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::SystemTime,
};

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use triage_agent_proto::v1::{self as pb, agent_service_server::AgentService};

use crate::{
    attribute::{AttributorStats, MetaHealth},
    convert::{self, ConvertError},
    counters::Counters,
    store::{DEFAULT_QUERY_LIMIT, StoreGone, StoreHandle},
};

/// A kernel program and whether it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub name: String,
    pub hook: String,
    pub attached: bool,
    pub error: Option<String>,
}

/// Kernel-side loss counters (the eBPF LOSS map), read on demand.
pub trait KernelLoss: Send + Sync {
    /// (ring buffer full, connect table full), summed over CPUs.
    fn read(&self) -> (u64, u64);
}

/// Facts about this agent for Status.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub node: String,
    pub kernel: String,
    pub started: SystemTime,
}

/// Everything the service reads.
#[derive(Clone)]
pub struct AgentApi {
    pub info: AgentInfo,
    pub store: StoreHandle,
    pub counters: Arc<Counters>,
    pub probes: Arc<Vec<ProbeStatus>>,
    pub kernel_loss: Arc<dyn KernelLoss>,
    pub meta: watch::Receiver<MetaHealth>,
    pub attribution: watch::Receiver<AttributorStats>,
}

/// Why a request failed; the one place errors become gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {0}")]
    InvalidArgument(#[from] ConvertError),
    #[error(transparent)]
    Unavailable(#[from] StoreGone),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            ApiError::Unavailable(_) => Status::unavailable(e.to_string()),
        }
    }
}

impl AgentApi {
    async fn loss(&self) -> Result<pb::LossCounters, ApiError> {
        let c = self.counters.snapshot();
        let (ring_buffer_full, connect_table_full) = self.kernel_loss.read();
        let store = self.store.stats().await?;
        Ok(pb::LossCounters {
            ring_buffer_full,
            connect_table_full,
            decode_errors: c.decode_errors,
            pipeline_full: c.pipeline_full,
            store_evicted: store.evicted,
            attribution_expired: c.attribution_expired,
            watch_lagged: store.watch_lagged,
        })
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
        let filter = convert::filter_from_pb(req.filter).map_err(ApiError::from)?;
        let limit = match req.limit {
            0 => DEFAULT_QUERY_LIMIT,
            n => n as usize,
        };
        let result = self
            .store
            .query(filter, limit)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::QueryResponse {
            evidence: result
                .evidence
                .iter()
                .map(convert::evidence_to_pb)
                .collect(),
            node: self.info.node.clone(),
            truncated: result.truncated,
            loss: Some(self.loss().await?),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let filter =
            convert::filter_from_pb(request.into_inner().filter).map_err(ApiError::from)?;
        let (rx, lagged) = self.store.subscribe(filter).await.map_err(ApiError::from)?;
        let stream = futures::stream::unfold(Some((rx, lagged)), |state| async move {
            let (mut rx, lagged) = state?;
            match rx.recv().await {
                Some(e) => Some((
                    Ok(pb::WatchResponse {
                        evidence: Some(convert::evidence_to_pb(&e)),
                    }),
                    Some((rx, lagged)),
                )),
                None if lagged.load(Ordering::Relaxed) => Some((
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
        let store = self.store.stats().await.map_err(ApiError::from)?;
        let meta = self.meta.borrow().clone();
        let attribution = self.attribution.borrow().clone();
        Ok(Response::new(pb::StatusResponse {
            node: self.info.node.clone(),
            kernel: self.info.kernel.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: Some(convert::time_to_pb(self.info.started)),
            probes: self
                .probes
                .iter()
                .map(|p| pb::Probe {
                    name: p.name.clone(),
                    hook: p.hook.clone(),
                    attached: p.attached,
                    error: p.error.clone().unwrap_or_default(),
                })
                .collect(),
            metadata: Some(pb::MetadataStatus {
                synced: meta.synced,
                pods: attribution.pods,
                last_error: meta.last_error.unwrap_or_default(),
                pending_events: attribution.pending,
                retries: meta.retries,
            }),
            loss: Some(self.loss().await?),
            store_records: store.records,
            store_capacity: store.capacity,
            events_received: self.counters.snapshot().events_received,
        }))
    }
}
