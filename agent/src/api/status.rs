//! What Status and every answer report about the agent: who it is, its probes, its metadata
//! feed, its store and every loss counter. The components publish their own state (probes
//! their [`ProbeStatus`], attribution its [`AttributorStats`] and [`MetaHealth`], the store its
//! stats, everyone the shared [`Counters`]); this module assembles it.

use std::{sync::Arc, time::SystemTime};

use tokio::sync::watch;
use triage_agent_proto::v1 as pb;

use super::ApiError;
use crate::codec;
use crate::{
    attribute::{AttributorStats, MetaHealth},
    loss::Counters,
    probes::ProbeStatus,
    samplers::SamplerStatus,
    store::{PersistHealth, PersistState, StoreHandle},
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
    /// The container runtime source (`None` where none runs).
    pub runtime: Option<watch::Receiver<crate::attribute::RuntimeHealth>>,
    pub attribution: watch::Receiver<AttributorStats>,
    /// The cgroupfs samplers' sources and state (`None` where no sampler runs).
    pub resources: Option<watch::Receiver<SamplerStatus>>,
    /// The evidence store on disk (`None`: memory only).
    pub persistence: Option<Arc<PersistHealth>>,
}

impl AgentState {
    /// An agent's state with no probes, no samplers and no store on disk, its pod list read:
    /// what an in-process server runs on (tests, benchmarks), around a real store task.
    pub fn in_process(node: &str, store: StoreHandle, counters: Arc<Counters>) -> AgentState {
        AgentState {
            info: AgentInfo {
                node: node.to_owned(),
                kernel: "test".to_owned(),
                started: SystemTime::now(),
            },
            store,
            counters,
            probes: Arc::new(Vec::new()),
            meta: watch::channel(MetaHealth {
                synced: true,
                last_synced: Some(SystemTime::now()),
                ..MetaHealth::default()
            })
            .1,
            runtime: None,
            attribution: watch::channel(AttributorStats::default()).1,
            resources: None,
            persistence: None,
        }
    }
}

/// Liveness: the store task's loop (which every occurrence and answer goes through) must have
/// turned within this. It turns at least once per [`crate::store::BATCH_INTERVAL`] (one second)
/// even when idle, so five seconds is a loop stuck or starved for several turns: only then does
/// a restart help.
pub const HEARTBEAT_STALE: std::time::Duration = std::time::Duration::from_secs(5);

/// The agent's health for kubelet's probes (`/healthz`, `/readyz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The agent's core loop turns (the store task, which every answer goes through).
    /// False only when restarting the agent can help.
    pub live: bool,
    /// Why the agent is not ready to be trusted; empty when it is.
    pub problems: Vec<String>,
}

impl AgentState {
    /// Liveness and readiness, from state the components publish (no command to the store, so
    /// a queue of scrapes or queries cannot delay it): live when the store task's loop turned
    /// within [`HEARTBEAT_STALE`]; ready when, besides, no signal the configuration asks for is
    /// off (degraded is ready), the pod list has been complete at least once (attribution
    /// works), and the store on disk, when configured, takes writes.
    pub fn health(&self) -> Health {
        let mut problems = Vec::new();
        let age = self.store.heartbeat_age();
        let live = age <= HEARTBEAT_STALE;
        if !live {
            problems.push(format!(
                "the evidence store's loop has not turned for {} (limit {HEARTBEAT_STALE:?})",
                humantime::format_duration(std::time::Duration::from_secs(age.as_secs()))
            ));
        }
        // A signal this kernel gives in a reduced form (Status and `doctor` say what is lost)
        // is no reason to stop serving; a signal the configuration wants and gets nothing of
        // is.
        // CPU throttling comes from cgroup files alone: a node without a cpu controller has none
        // to give, Status says so, and no restart changes it (readiness would only stall the
        // DaemonSet's rollout).
        for s in self.signals().iter().filter(|s| {
            s.mode == crate::signals::Mode::Off && !s.switched_off && s.signal != "cpu_throttling"
        }) {
            problems.push(format!("signal {} is off: {}", s.signal, s.detail));
        }
        let meta = self.meta.borrow().clone();
        if !meta.synced && meta.last_synced.is_none() {
            problems.push(format!(
                "the pod list has not been read from the API server yet{}",
                meta.last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ));
        }
        if let Some(p) = &self.persistence
            && let Some(error) = p.get().error
        {
            problems.push(format!("the evidence store on disk: {error}"));
        }
        Health { live, problems }
    }

    /// Every loss counter, now.
    pub fn loss(&self) -> pb::LossCounters {
        codec::loss_to_pb(&self.counters.snapshot())
    }

    /// Each signal's mode, from the programs that run and the samplers' sources.
    pub fn signals(&self) -> Vec<crate::signals::SignalState> {
        let sources = self
            .resources
            .as_ref()
            .map(|r| r.borrow().sources.clone())
            .unwrap_or_default();
        crate::signals::states(&self.probes, &sources)
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, ApiError> {
        let store = self.store.stats().await?;
        let meta = self.meta.borrow().clone();
        let attribution = self.attribution.borrow().clone();
        Ok(pb::StatusResponse {
            node: self.info.node.clone(),
            kernel: self.info.kernel.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: Some(codec::time_to_pb(self.info.started)),
            probes: self
                .probes
                .iter()
                .map(|p| pb::Probe {
                    name: p.name.clone(),
                    hook: p.hook.clone(),
                    attached: p.attached,
                    error: p.error.clone().unwrap_or_default(),
                    fallback: p
                        .degraded
                        .as_ref()
                        .filter(|d| d.program != p.name)
                        .map(|d| d.program.clone())
                        .unwrap_or_default(),
                    degraded: p
                        .degraded
                        .as_ref()
                        .map(|d| format!("{} ({})", d.loses, d.rejected))
                        .unwrap_or_default(),
                })
                .collect(),
            signals: self.signals().into_iter().map(signal_to_pb).collect(),
            metadata: Some(pb::MetadataStatus {
                synced: meta.synced,
                pods: attribution.pods,
                last_error: meta.last_error.unwrap_or_default(),
                pending_events: attribution.pending,
                retries: meta.retries,
            }),
            runtime: self.runtime.as_ref().map(|r| {
                let r = r.borrow();
                pb::RuntimeStatus {
                    socket: r
                        .socket
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    runtime: r.runtime.clone(),
                    connected: r.connected,
                    pods: r.pods,
                    containers: r.containers,
                    last_error: r.last_error.clone(),
                    pods_not_in_api: attribution.runtime_only,
                }
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
            persistence: self
                .persistence
                .as_ref()
                .map(|p| persistence_to_pb(&p.get())),
            flow_table_drains: self.counters.flow_table_drains(),
            dns_table_drains: self.counters.dns_table_drains(),
            cgroup_sweeps: self.counters.cgroup_sweeps(),
        })
    }
}

fn signal_to_pb(s: crate::signals::SignalState) -> pb::SignalState {
    use crate::signals::Mode;
    pb::SignalState {
        signal: s.signal.to_owned(),
        mode: match s.mode {
            Mode::Full => pb::SignalMode::Full,
            Mode::Degraded => pb::SignalMode::Degraded,
            Mode::Off => pb::SignalMode::Off,
        } as i32,
        detail: s.detail,
    }
}

fn persistence_to_pb(p: &PersistState) -> pb::PersistenceStatus {
    pb::PersistenceStatus {
        path: p.path.display().to_string(),
        error: p.error.clone().unwrap_or_default(),
        restored: p.restored,
        moved_aside: p
            .moved_aside
            .as_ref()
            .map(|(path, why)| format!("{} ({why})", path.display()))
            .unwrap_or_default(),
        used_bytes: p.used_bytes,
        max_bytes: p.max_bytes,
        last_commit: p.last_commit.map(codec::time_to_pb),
        pending: p.pending,
    }
}
