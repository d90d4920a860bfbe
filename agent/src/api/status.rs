//! What Status and every answer report about the agent: who it is, its probes, its metadata
//! feed, its store and every loss counter. The components publish their own state (probes
//! their [`ProbeStatus`], attribution its [`AttributorStats`] and [`MetaHealth`], the store its
//! stats, everyone the shared [`Counters`]); this module assembles it.

use std::{sync::Arc, time::SystemTime};

use tokio::sync::watch;
use triage_agent_proto::v1 as pb;

use super::{ApiError, convert};
use crate::{
    attribute::{AttributorStats, MetaHealth},
    loss::Counters,
    probes::ProbeStatus,
    samplers::SamplerStatus,
    store::StoreHandle,
};

/// Facts about this agent.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub node: String,
    pub kernel: String,
    pub started: SystemTime,
}

/// Everything the service reads.
#[derive(Clone)]
pub struct AgentState {
    pub info: AgentInfo,
    pub store: StoreHandle,
    pub counters: Arc<Counters>,
    pub probes: Arc<Vec<ProbeStatus>>,
    pub meta: watch::Receiver<MetaHealth>,
    pub attribution: watch::Receiver<AttributorStats>,
    /// The cgroupfs samplers' sources and state (`None` where no sampler runs).
    pub resources: Option<watch::Receiver<SamplerStatus>>,
}

impl AgentState {
    /// Every loss counter, now.
    pub fn loss(&self) -> pb::LossCounters {
        convert::loss_to_pb(&self.counters.snapshot())
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, ApiError> {
        let store = self.store.stats().await?;
        let meta = self.meta.borrow().clone();
        let attribution = self.attribution.borrow().clone();
        Ok(pb::StatusResponse {
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
            loss: Some(self.loss()),
            store_records: store.records,
            store_capacity: store.capacity,
            events_received: self.counters.events_received(),
            store_expired: store.expired,
            resource_sources: self
                .resources
                .as_ref()
                .map(|r| {
                    let r = r.borrow();
                    r.sources
                        .iter()
                        .map(|s| pb::ResourceSource {
                            signal: s.signal.to_owned(),
                            hierarchy: s.hierarchy.to_owned(),
                            files: s.files.clone(),
                            mount: s.mount.clone(),
                            containers: r.containers,
                            note: s.note.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}
