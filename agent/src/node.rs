//! The node agent (`triage-agent agent`): wires the pipeline and runs it until SIGTERM/SIGINT.
//!
//! ```text
//! kernel programs --ring buffer--> probes::reader --events--> attribute --occurrences--> store
//! cgroupfs samplers ------------------------------^     ^                                 ^
//!                        attribute::metadata (kube-rs) -+          api (gRPC) --commands--+
//!                                                  otlp (when configured) --subscription--+
//! ```
//! Each component makes its own bounded channels (`spawn` returns its senders and its task);
//! producers never await consumers on the event path, and every drop is counted in
//! [`Counters`]. The agent is either healthy or gone: any task that ends before shutdown was
//! asked for (an error, a panic, a closed channel) cancels everything, and the agent exits
//! non-zero so the DaemonSet restarts it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

use crate::{
    api::{self, AgentApi, AgentInfo, AgentState},
    attribute,
    attribute::{Attributor, KernelNames, metadata},
    cgroup::{
        self, KnownFirst, ids as cgroup_ids,
        path::{KubeletLayout, KubeletRoot},
    },
    dns,
    kernel::{btf::Btf, tracefs},
    loss::Counters,
    probes::{loader, offsets, reader, reasons::DropReasons},
    samplers,
    store::{self, PersistHealth, Store, StoreConfig},
    supervisor::{Supervisor, infallible},
};

/// How long shutdown waits for tasks before detaching anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the node agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub listen: SocketAddr,
    /// Prometheus `/metrics` (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
    pub store: StoreConfig,
    /// The evidence store on disk (`None`: memory only).
    pub persist: Option<store::persist::PersistConfig>,
    /// cgroup2 mount to resolve cgroup ids in; found in /proc/self/mountinfo when unset.
    pub cgroup_root: Option<PathBuf>,
    /// Which kernel drop reasons to report.
    pub drop_reasons: DropReasons,
    /// DNS capture.
    pub dns: dns::DnsConfig,
    /// kubelet's --cgroup-root, relative to every hierarchy's mount (`None`: not given; `/`
    /// for the samplers, pods anywhere in a path for attribution).
    pub kubelet_cgroup_root: Option<PathBuf>,
    /// The container runtime's CRI socket (`attribute::runtime`).
    pub cri_socket: attribute::runtime::CriSocket,
    pub sample_interval: Duration,
    pub throttle_threshold: u64,
    /// Export of evidence as OpenTelemetry logs (`None`: off).
    pub otlp: Option<crate::otlp::OtlpConfig>,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Runs the node agent until a termination signal; fails when any part of it fails.
/// Opens the store on disk and puts its records back into `store`. A store that cannot be
/// opened is an error in Status, `/readyz` and the log, not a reason to stop observing: the
/// agent keeps its evidence in memory then.
fn open_persistent(
    config: &store::persist::PersistConfig,
    store: &mut Store,
    counters: &Arc<Counters>,
) -> Arc<PersistHealth> {
    match store::persist::open(config, counters.clone()) {
        Ok(opened) => {
            store.set_backend(Box::new(opened.backend));
            let restored = opened.records.len();
            for (owner, evictions) in opened.evictions {
                store.restore_evictions(&owner, evictions);
            }
            for lookups in opened.dns_lookups {
                store.restore_dns_lookups(lookups);
            }
            for losses in opened.pod_losses {
                store.restore_pod_losses(losses);
            }
            for (id, e) in opened.records {
                store.restore(id, e);
            }
            store.sweep(SystemTime::now());
            info!(path = %config.path.display(), restored, "evidence store on disk opened");
            opened.health
        }
        Err(e) => {
            error!("{e}; keeping evidence in memory only");
            let health = Arc::new(PersistHealth::default());
            health.update(|s| {
                s.path = config.path.clone();
                s.max_bytes = config.max_bytes;
                s.error = Some(e.to_string());
            });
            health
        }
    }
}

/// Where the cgroup_skb programs attach: the pods' cgroup under kubelet's root, so node
/// daemons (kubelet, the runtime, etcd) pay nothing per packet; the cgroup2 root when no pod
/// cgroup is there (a node without kubelet, or a wrong `--kubelet-cgroup-root`), said in the log
/// and in Status.
fn skb_cgroup(mount: &Path, root: &KubeletRoot) -> PathBuf {
    match cgroup::layout::pods_cgroup(mount, root) {
        Some(pods) => {
            info!(cgroup = %pods.display(), "DNS programs attach to the pods' cgroup");
            pods
        }
        None => {
            warn!(
                mount = %mount.display(),
                "no pods' cgroup (kubepods) under kubelet's cgroup root: the DNS programs attach \
                 to the cgroup2 root, where every process of the node runs them; pass \
                 --kubelet-cgroup-root"
            );
            mount.to_owned()
        }
    }
}

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let started = SystemTime::now();
    let mut kube_config = kube::Config::infer()
        .await
        .context("no Kubernetes client configuration (set KUBECONFIG or run in a pod)")?;
    // kube's built-in retry hides 503/429 for minutes; the watcher's own backoff retries instead,
    // so every failure is logged and shown in Status while it lasts.
    kube_config.default_retry = false;
    // A plain-HTTP API server (`kubectl proxy`, the simulated node) needs no trust roots; without
    // this the client would still ask the system for CA certificates, and a FROM-scratch image
    // has none ("No CA certificates were loaded from the system").
    if kube_config.cluster_url.scheme_str() == Some("http") && kube_config.root_cert.is_none() {
        kube_config.root_cert = Some(Vec::new());
    }
    let client = kube::Client::try_from(kube_config).context("building the Kubernetes client")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;

    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            crate::metrics::http::bind(addr)
                .with_context(|| format!("listening for /metrics on {addr}"))?,
        ),
        None => None,
    };

    let tracefs = tracefs::ensure_mounted()?;
    let btf = match Btf::vmlinux() {
        Ok(btf) => Some(btf),
        Err(error) => {
            warn!(%error, "kernel BTF unavailable; probes that need struct offsets stay detached");
            None
        }
    };
    let cgroup_root = match config.cgroup_root.clone() {
        Some(root) => root,
        None => std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup_ids::cgroup2_mount(&m))
            .context("no cgroup2 mount found; pass --cgroup-root")?,
    };
    let kubelet_root = KubeletRoot::new(
        config
            .kubelet_cgroup_root
            .as_deref()
            .unwrap_or(Path::new("/")),
    );
    let skb_cgroup = skb_cgroup(&cgroup_root, &kubelet_root);
    let loaded = loader::load(&loader::LoadOptions {
        tracefs: &tracefs,
        btf: btf.as_ref(),
        drop_reasons: &config.drop_reasons,
        skb_cgroup: &skb_cgroup,
        dns_ports: &config.dns.ports,
        dns_timing: dns::kernel_timing(&config.dns.track),
    })
    .context("loading eBPF programs")?;
    let names = KernelNames {
        reset: offsets::reset_reason_names(btf.as_ref()),
        drop: loaded.drop_reasons.clone(),
        sees_stack_refusals: loaded
            .probes
            .statuses
            .iter()
            .any(|p| p.name == "tcp_send_reset" && p.attached),
        // Only where drops carry a location instead of a reason.
        symbols: loaded
            .probes
            .statuses
            .iter()
            .any(|p| p.name == "kfree_skb" && p.attached && p.degraded.is_some())
            .then(|| Arc::new(crate::kernel::kallsyms::Symbols::load())),
    };
    drop(btf);

    let counters = Arc::new(Counters::default());
    // Since this start, unless the persistent store kept them from an earlier one.
    counters.begin(started);
    let resolver = cgroup_ids::CgroupResolver::new(cgroup_root.clone(), counters.clone())
        .with_context(|| format!("opening the cgroup2 tree at {}", cgroup_root.display()))?;
    let cancel = CancellationToken::new();
    // However this function returns (an error after the tasks started, too), every task is
    // told to stop before the runtime goes: the sampler's thread waits on the runtime's timer.
    let _stop_all = cancel.clone().drop_guard();
    let supervisor = Supervisor {
        tracker: TaskTracker::new(),
        cancel: cancel.clone(),
        failed: Arc::new(AtomicBool::new(false)),
    };

    let mut evidence = Store::new(config.store.clone(), counters.clone());
    let persistence = config
        .persist
        .as_ref()
        .map(|p| open_persistent(p, &mut evidence, &counters));
    let (store, occurrences, store_task) = store::spawn(evidence, cancel.child_token());
    supervisor.spawn("store", infallible(store_task));
    let known = cgroup::KnownCgroups::default();
    let runtime_wake = Arc::new(tokio::sync::Notify::new());
    let hierarchies = cgroup::layout::Hierarchies::detect();
    // Paths come from the cgroup2 walk (under `cgroup_root`) and from the samplers (under the
    // unified mount): pods are read right under kubelet's root in either.
    let layout = match &config.kubelet_cgroup_root {
        Some(_) => KubeletLayout::under(
            &kubelet_root,
            std::iter::once(cgroup_root.clone()).chain(hierarchies.unified.clone()),
        ),
        None => KubeletLayout::anywhere(),
    };
    let attributor = Attributor::new(
        Box::new(KnownFirst {
            known: known.clone(),
            inner: resolver,
        }),
        names,
        counters.clone(),
    )
    .with_layout(layout)
    .with_runtime_wake(runtime_wake.clone());
    let (inputs, attribution, live_pods, attribute_task) =
        attribute::spawn_with_pods(attributor, occurrences, cancel.child_token());
    supervisor.spawn("attribute", infallible(attribute_task));
    let (meta_health, metadata_task) = metadata::spawn(
        client,
        config.node.clone(),
        inputs.meta.clone(),
        cancel.child_token(),
    );
    supervisor.spawn("metadata", infallible(metadata_task));
    let (runtime_health, runtime_task) = attribute::runtime::spawn(
        config.cri_socket.clone(),
        inputs.meta.clone(),
        runtime_wake,
        cancel.child_token(),
    );
    supervisor.spawn("runtime", infallible(runtime_task));
    let oom_event = loaded
        .probes
        .statuses
        .iter()
        .find(|p| p.name == "mark_victim")
        .map_or(Err("not loaded".to_owned()), |p| {
            if p.attached {
                Ok(())
            } else {
                Err(p.error.clone().unwrap_or_default())
            }
        });
    let sampler_config = samplers::sampler::SamplerConfig {
        hierarchies,
        kubelet_root,
        throttle_threshold: config.throttle_threshold,
    };
    let (resources, sampler_task) = samplers::task::spawn(
        sampler_config,
        known,
        config.sample_interval,
        oom_event,
        live_pods,
        inputs.events.clone(),
        counters.clone(),
        cancel.child_token(),
    );
    supervisor.spawn_producer("sampler", sampler_task);
    supervisor.spawn_producer(
        "dns",
        dns::run(
            loaded.dns_ring,
            loaded.dns_maps,
            config.dns.clone(),
            inputs.events.clone(),
            counters.clone(),
            cancel.child_token(),
        ),
    );
    supervisor.spawn_producer(
        "reader",
        reader::run(
            loaded.ring,
            loaded.flows,
            loaded.loss,
            inputs.events,
            counters.clone(),
            cancel.child_token(),
        ),
    );

    let otlp = match config.otlp.clone() {
        Some(otlp) => {
            let (stats, task) = crate::otlp::spawn(
                otlp,
                &config.node,
                store.clone(),
                counters.clone(),
                cancel.child_token(),
            )
            .context("setting up the OTLP exporter")?;
            supervisor.spawn("otlp", infallible(task));
            Some(stats)
        }
        None => None,
    };

    let state = AgentState {
        info: AgentInfo {
            node: config.node.clone(),
            kernel: kernel_release(),
            started,
        },
        store,
        counters,
        probes: Arc::new(loaded.probes.statuses.clone()),
        meta: meta_health,
        runtime: Some(runtime_health),
        attribution,
        resources: Some(resources),
        persistence,
    };
    let api = AgentApi::new(state.clone());
    if let Some(listener) = metrics_listener {
        let metrics = crate::metrics::MetricsState {
            agent: state,
            program_ids: Arc::new(loaded.program_ids.clone()),
            otlp,
            grpc_connections: Some(api.connections()),
        };
        supervisor.spawn(
            "metrics",
            crate::metrics::serve(metrics, listener, cancel.child_token()),
        );
    }
    supervisor.spawn("api", api::serve(api, listener, cancel.child_token()));
    supervisor.tracker.close();
    info!(node = %config.node, listen = %config.listen, "agent running");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        () = cancel.cancelled() => warn!("a task stopped: shutting down"),
    }
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, supervisor.tracker.wait())
        .await
        .is_err()
    {
        warn!("tasks did not stop within the grace period");
    }
    drop(loaded.probes);
    info!("eBPF programs detached; bye");
    if supervisor.failed.load(Ordering::SeqCst) {
        anyhow::bail!("a pipeline task stopped unexpectedly (see the log above)");
    }
    Ok(())
}
