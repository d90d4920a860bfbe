//! The node agent (`triage-agent agent`): wires the pipeline of ARCHITECTURE.md and runs it
//! until SIGTERM/SIGINT.
//!
//! ```text
//! kernel -> reader -> attribute -> store <- api (gRPC)
//!                        ^
//!             metadata (kube-rs watcher)
//! ```
//! Every channel is bounded; producers never await consumers on the event path.

pub mod cgroups;
pub mod clock;
pub mod loader;
pub mod metadata;
pub mod reader;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, error, info, info_span, warn};
use triage_agent_proto::v1::agent_service_server::AgentServiceServer;

use crate::{
    api::{AgentApi, AgentInfo},
    attribute::{self, Attributor, AttributorStats, MetaHealth},
    counters::Counters,
    probes::btf::Btf,
    store::{self, Store, StoreHandle},
};

/// Capacity of the reader -> attribution channel: a few seconds of a heavy burst.
const EVENTS_CHANNEL: usize = 8192;
/// Capacity of the attribution -> store channel.
const OCCURRENCES_CHANNEL: usize = 8192;
/// Capacity of the metadata -> attribution channel (awaited: metadata is never dropped).
const META_CHANNEL: usize = 1024;
/// How long shutdown waits for tasks before detaching anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the node agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub listen: SocketAddr,
    pub store_capacity: usize,
    pub store_max_age: Duration,
    /// cgroup2 mount to resolve cgroup ids in; found in /proc/self/mountinfo when unset.
    pub cgroup_root: Option<PathBuf>,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Runs the node agent until a termination signal.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let started = SystemTime::now();
    let mut kube_config = kube::Config::infer()
        .await
        .context("no Kubernetes client configuration (set KUBECONFIG or run in a pod)")?;
    // kube's built-in retry hides 503/429 for minutes; the watcher's own backoff retries instead,
    // so every failure is logged and shown in Status while it lasts.
    kube_config.default_retry = false;
    let client = kube::Client::try_from(kube_config).context("building the Kubernetes client")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;

    let tracefs = loader::ensure_tracefs()?;
    let btf = match Btf::vmlinux() {
        Ok(btf) => Some(btf),
        Err(error) => {
            warn!(%error, "kernel BTF unavailable; probes that need struct offsets stay detached");
            None
        }
    };
    let (probes, ring, loss) =
        loader::load(&tracefs, btf.as_ref()).context("loading eBPF programs")?;
    let reasons = loader::reset_reason_names(btf.as_ref());
    drop(btf);

    let cgroup_root = match config.cgroup_root.clone() {
        Some(root) => root,
        None => std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroups::cgroup2_mount(&m))
            .context("no cgroup2 mount found; pass --cgroup-root")?,
    };
    let resolver = cgroups::CgroupResolver::new(cgroup_root);

    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (events_tx, events_rx) = mpsc::channel(EVENTS_CHANNEL);
    let (occ_tx, occ_rx) = mpsc::channel(OCCURRENCES_CHANNEL);
    let (meta_tx, meta_rx) = mpsc::channel(META_CHANNEL);
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (health_tx, health_rx) = watch::channel(MetaHealth::default());
    let (stats_tx, stats_rx) = watch::channel(AttributorStats::default());

    tracker.spawn(
        store::run(
            Store::new(
                config.node.clone(),
                config.store_capacity,
                config.store_max_age,
            ),
            occ_rx,
            cmd_rx,
            cancel.child_token(),
        )
        .instrument(info_span!("store")),
    );
    let attributor = Attributor::new(Box::new(resolver), reasons, counters.clone());
    tracker.spawn(
        attribute::run(
            attributor,
            events_rx,
            meta_rx,
            occ_tx,
            stats_tx,
            cancel.child_token(),
        )
        .instrument(info_span!("attribute")),
    );
    tracker.spawn(
        metadata::run(
            client,
            config.node.clone(),
            meta_tx,
            health_tx,
            cancel.child_token(),
        )
        .instrument(info_span!("metadata")),
    );
    {
        let counters = counters.clone();
        let cancel = cancel.clone();
        tracker.spawn(
            async move {
                if let Err(error) =
                    reader::run(ring, events_tx, counters, cancel.child_token()).await
                {
                    error!(%error, "ring buffer reader failed; stopping the agent");
                    cancel.cancel();
                }
            }
            .instrument(info_span!("reader")),
        );
    }

    let api = AgentApi {
        info: AgentInfo {
            node: config.node.clone(),
            kernel: kernel_release(),
            started,
        },
        store: StoreHandle::new(cmd_tx),
        counters,
        probes: Arc::new(probes.statuses.clone()),
        kernel_loss: Arc::new(loss),
        meta: health_rx,
        attribution: stats_rx,
    };
    let server_cancel = cancel.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tracker.spawn(
        async move {
            let result = tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(api))
                .serve_with_incoming_shutdown(incoming, server_cancel.cancelled())
                .await;
            if let Err(error) = result {
                error!(%error, "gRPC server failed; stopping the agent");
                server_cancel.cancel();
            }
        }
        .instrument(info_span!("api")),
    );
    tracker.close();
    info!(node = %config.node, listen = %config.listen, "agent running");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        () = cancel.cancelled() => warn!("a task failed: shutting down"),
    }
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("tasks did not stop within the grace period");
    }
    drop(probes);
    info!("eBPF programs detached; bye");
    Ok(())
}
