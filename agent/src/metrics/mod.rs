//! `/metrics` for Prometheus, on its own listener (`--metrics-listen`), apart from gRPC; and
//! `/healthz` and `/readyz` for kubelet's probes on the same port ([`http`] serves them, with
//! the bounds a port any pod can reach needs).
//!
//! Low cardinality by design: labels are a kind, a namespace (bounded: at most 1000, then
//! `_other`), a loss point, a program name or a listener: never a pod, an IP, a port, a DNS name
//! or a process. Every value is read from the state the agent already keeps (the loss counters,
//! the store's statistics, the metadata feed, the probes) when a snapshot is taken, at most once
//! a second however many scrape ([`http::SCRAPE_CACHE`]), so scraping costs nothing between
//! scrapes. Exposition by `prometheus-client` (OpenMetrics text).

pub mod http;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

pub use http::{serve, serve_with};

use crate::{
    api::{AgentState, ConnectionLimit},
    evidence::Kind,
    loss::Loss,
    store::StoreStats,
};

/// The default metrics address: loopback until the DaemonSet binds it to the pod IP.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9743";

/// What a scrape needs beyond [`AgentState`].
#[derive(Clone)]
pub struct MetricsState {
    pub agent: AgentState,
    /// Kernel ids of the loaded programs, by name.
    pub program_ids: Arc<Vec<(String, u32)>>,
    /// The OTLP exporter's figures, when it is on.
    pub otlp: Option<Arc<crate::otlp::ExportStats>>,
    /// The gRPC listener's connections (open, refused), when it runs.
    pub grpc_connections: Option<Arc<ConnectionLimit>>,
}

/// One listener's connections at one scrape.
#[derive(Debug)]
struct ListenerSnapshot {
    listener: &'static str,
    open: u64,
    refused: u64,
}

/// The OTLP exporter's figures at one scrape.
#[derive(Debug)]
struct OtlpSnapshot {
    exported: u64,
    retries: u64,
    queued: u64,
    capacity: u64,
}

/// One scrape's values.
#[derive(Debug)]
struct Snapshot {
    node: String,
    kernel: String,
    store: StoreStats,
    losses: Vec<(Loss, u64)>,
    events_received: u64,
    dns_records: u64,
    dns_kernel_lookups: u64,
    /// (flow table drains, DNS table drains, cgroup sweeps)
    drains: (u64, u64, u64),
    probes: Vec<(String, bool)>,
    /// Each signal's mode on this node.
    signals: Vec<(&'static str, crate::signals::Mode)>,
    synced: bool,
    /// When the pod list was last complete, Unix seconds.
    last_sync: Option<f64>,
    retries: u32,
    pods: u32,
    pending: u32,
    bpf_stats_enabled: bool,
    /// (program, run time, runs)
    bpf: Vec<(String, Duration, u64)>,
    persistence: Option<crate::store::PersistState>,
    otlp: Option<OtlpSnapshot>,
    /// Filled in by the server, which knows its listeners.
    connections: Vec<ListenerSnapshot>,
    process: Option<ProcessSnapshot>,
}

/// The agent process's own figures, as every Prometheus exporter has them (`process_*`).
#[derive(Debug)]
struct ProcessSnapshot {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    start_time_seconds: f64,
}

/// Reads /proc/self (procfs); None when it cannot be read.
fn process_snapshot() -> Option<ProcessSnapshot> {
    use procfs::process::{LimitValue, Process};
    let me = Process::myself().ok()?;
    let stat = me.stat().ok()?;
    #[expect(
        clippy::cast_precision_loss,
        reason = "CPU ticks and boot seconds: far below 2^52"
    )]
    let (ticks, boot) = (
        procfs::ticks_per_second() as f64,
        procfs::boot_time_secs().ok()? as f64,
    );
    #[expect(clippy::cast_precision_loss, reason = "CPU ticks: far below 2^52")]
    let (cpu, start) = (
        (stat.utime + stat.stime) as f64 / ticks,
        boot + stat.starttime as f64 / ticks,
    );
    Some(ProcessSnapshot {
        cpu_seconds: cpu,
        resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
        virtual_bytes: stat.vsize,
        open_fds: me.fd_count().ok()? as u64,
        max_fds: me
            .limits()
            .ok()
            .and_then(|l| match l.max_open_files.soft_limit {
                LimitValue::Value(v) => Some(v),
                LimitValue::Unlimited => None,
            }),
        start_time_seconds: start,
    })
}

fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

impl MetricsState {
    async fn snapshot(&self) -> Option<Snapshot> {
        let a = &self.agent;
        let store = a.store.stats().await.ok()?;
        let meta = a.meta.borrow().clone();
        let attribution = a.attribution.borrow().clone();
        let counts = a.counters.snapshot();
        Some(Snapshot {
            node: a.info.node.clone(),
            kernel: a.info.kernel.clone(),
            store,
            losses: Loss::ALL.iter().map(|l| (*l, counts.get(*l))).collect(),
            events_received: a.counters.events_received(),
            dns_records: a.counters.dns_records(),
            dns_kernel_lookups: a.counters.dns_kernel_lookups(),
            drains: (
                a.counters.flow_table_drains(),
                a.counters.dns_table_drains(),
                a.counters.cgroup_sweeps(),
            ),
            probes: a
                .probes
                .iter()
                .map(|p| (p.name.clone(), p.attached))
                .collect(),
            signals: a.signals().iter().map(|s| (s.signal, s.mode)).collect(),
            synced: meta.synced,
            last_sync: meta.last_synced.map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            }),
            process: process_snapshot(),
            retries: meta.retries,
            pods: attribution.pods,
            pending: attribution.pending,
            bpf_stats_enabled: bpf_stats_enabled(),
            bpf: crate::probes::loader::program_run_stats(&self.program_ids),
            persistence: a.persistence.as_ref().map(|p| p.get()),
            otlp: self.otlp.as_ref().map(|o| {
                use std::sync::atomic::Ordering::Relaxed;
                OtlpSnapshot {
                    exported: o.exported.load(Relaxed),
                    retries: o.retries.load(Relaxed),
                    queued: o.queued.load(Relaxed),
                    capacity: o.capacity,
                }
            }),
            connections: Vec::new(),
        })
    }
}

/// The OpenMetrics text of one snapshot.
fn render(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn counter_f64(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// The node-level failure counters: every occurrence of these kinds on this node, by labels
/// from fixed sets only (no namespace, pod or address), so alerts can read them directly.
const FAILURE_FAMILIES: &[(&str, &str)] = &[
    (
        "packet_drops",
        "Packets the kernel dropped to or from this node's pods, by the kernel's reason and direction.",
    ),
    (
        "dns_failures",
        "DNS lookups of this node's pods that failed, went unanswered or were slow, by outcome.",
    ),
    (
        "connection_failures",
        "Connections of this node's pods refused or never answered, by kind and cause (\"\" for a timeout).",
    ),
];

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut m = e.encode_descriptor(
                "triage_agent_build_info",
                "The agent's version, node and kernel (value 1).",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("node", self.node.clone()),
                ("kernel", self.kernel.clone()),
            ];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        {
            let mut m = e.encode_descriptor(
                "triage_agent_evidence_occurrences",
                "Failures recorded since the agent started, by kind and namespace (\"\": tied to no pod).",
                None,
                MetricType::Counter,
            )?;
            let mut rows = self.store.occurrences.clone();
            rows.sort();
            for (kind, namespace, n) in rows {
                let labels = [("kind", kind.as_str().to_owned()), ("namespace", namespace)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
            // Every kind appears, so a rate() over a kind never starts from nothing.
            for kind in Kind::ALL {
                if !self.store.occurrences.iter().any(|(k, _, _)| k == kind) {
                    let labels = [
                        ("kind", kind.as_str().to_owned()),
                        ("namespace", String::new()),
                    ];
                    ConstCounter::new(0u64).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "triage_agent_loss",
                "Evidence lost (or, for flow_table_full and dns_truncated, degraded), by where.",
                None,
                MetricType::Counter,
            )?;
            for (loss, n) in &self.losses {
                let labels = [("point", loss.as_str().to_owned())];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut e,
            "triage_agent_kernel_events",
            "Records read from the kernel's ring buffers.",
            self.events_received,
        )?;
        counter(
            &mut e,
            "triage_agent_dns_packets_parsed",
            "DNS packets read from the DNS ring buffer and parsed (failures, slow answers, \
             timeouts, TCP and what the kernel could not match).",
            self.dns_records,
        )?;
        counter(
            &mut e,
            "triage_agent_dns_lookups_matched_in_kernel",
            "UDP DNS lookups the kernel matched to a good answer and counted itself.",
            self.dns_kernel_lookups,
        )?;
        counter(
            &mut e,
            "triage_agent_flow_table_drains",
            "Times the kernel's flow tables were drained (every 500 ms while the agent keeps up).",
            self.drains.0,
        )?;
        counter(
            &mut e,
            "triage_agent_dns_table_drains",
            "Times the kernel's DNS tables were drained (once a second).",
            self.drains.1,
        )?;
        counter(
            &mut e,
            "triage_agent_cgroup_sweeps",
            "Times the cgroup sampler read every sampled container (once per sample interval).",
            self.drains.2,
        )?;
        {
            let mut m = e.encode_descriptor(
                "triage_agent_probe_attached",
                "1 when the kernel program runs, 0 when it could not be attached (see Status).",
                None,
                MetricType::Gauge,
            )?;
            for (program, attached) in &self.probes {
                let labels = [("program", program.clone())];
                ConstGauge::new(i64::from(*attached)).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            use crate::signals::Mode;
            let mut m = e.encode_descriptor(
                "triage_agent_signal_mode",
                "1 for the mode each signal runs in on this node (full, degraded: evidence in a \
                 reduced form, off), 0 for the others (see Status and `triage-agent doctor`).",
                None,
                MetricType::Gauge,
            )?;
            for (signal, mode) in &self.signals {
                for each in [Mode::Full, Mode::Degraded, Mode::Off] {
                    let labels = [("signal", *signal), ("mode", each.as_str())];
                    ConstGauge::new(i64::from(*mode == each)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        gauge(
            &mut e,
            "triage_agent_store_records",
            "Records in the evidence store.",
            self.store.records as f64,
        )?;
        gauge(
            &mut e,
            "triage_agent_store_capacity",
            "Records the store holds at most.",
            self.store.capacity as f64,
        )?;
        counter(
            &mut e,
            "triage_agent_store_expired",
            "Records removed for age (retention, not loss).",
            self.store.expired,
        )?;
        gauge(
            &mut e,
            "triage_agent_watchers",
            "Watch streams open.",
            self.store.subscribers as f64,
        )?;
        gauge(
            &mut e,
            "triage_agent_metadata_synced",
            "1 while the pod list from the API server is complete.",
            f64::from(u8::from(self.synced)),
        )?;
        if let Some(at) = self.last_sync {
            gauge(
                &mut e,
                "triage_agent_metadata_last_sync_timestamp_seconds",
                "When the pod list was last complete (Unix time; time() minus it is its age).",
                at,
            )?;
        }
        gauge(
            &mut e,
            "triage_agent_metadata_retries",
            "Consecutive failed watch attempts.",
            f64::from(self.retries),
        )?;
        gauge(
            &mut e,
            "triage_agent_pods",
            "Pods of this node the agent knows.",
            f64::from(self.pods),
        )?;
        gauge(
            &mut e,
            "triage_agent_attribution_pending_events",
            "Events waiting for their pod's metadata.",
            f64::from(self.pending),
        )?;
        gauge(
            &mut e,
            "triage_agent_bpf_stats_enabled",
            "1 when kernel.bpf_stats_enabled is on (program run time and count below are then counted).",
            f64::from(u8::from(self.bpf_stats_enabled)),
        )?;
        {
            let mut m = e.encode_descriptor(
                "triage_agent_bpf_program_run_time_seconds",
                "Time the kernel spent running each program (needs kernel.bpf_stats_enabled=1).",
                None,
                MetricType::Counter,
            )?;
            for (program, time, _) in &self.bpf {
                let labels = [("program", program.clone())];
                ConstCounter::new(time.as_secs_f64()).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "triage_agent_bpf_program_runs",
                "Times each program ran (needs kernel.bpf_stats_enabled=1).",
                None,
                MetricType::Counter,
            )?;
            for (program, _, runs) in &self.bpf {
                let labels = [("program", program.clone())];
                ConstCounter::new(*runs).encode(m.encode_family(&labels)?)?;
            }
        }
        if let Some(p) = &self.persistence {
            gauge(
                &mut e,
                "triage_agent_store_disk_healthy",
                "1 while the evidence store on disk takes writes (--store-path).",
                f64::from(u8::from(p.error.is_none())),
            )?;
            gauge(
                &mut e,
                "triage_agent_store_disk_used_bytes",
                "Bytes the records use in the store's file.",
                p.used_bytes as f64,
            )?;
            gauge(
                &mut e,
                "triage_agent_store_disk_max_bytes",
                "The file's budget (--store-max-bytes); over it the oldest records are evicted.",
                p.max_bytes as f64,
            )?;
            counter(
                &mut e,
                "triage_agent_store_disk_commits",
                "Batches written to the store's file.",
                p.commits,
            )?;
            gauge(
                &mut e,
                "triage_agent_store_disk_last_commit_timestamp_seconds",
                "When the last batch was written (what a kill -9 keeps); 0 before the first.",
                p.last_commit.map_or(0.0, |t| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64()
                }),
            )?;
            gauge(
                &mut e,
                "triage_agent_store_disk_pending_changes",
                "Record changes not yet committed to disk (queued or being written).",
                p.pending as f64,
            )?;
            gauge(
                &mut e,
                "triage_agent_store_disk_restored_records",
                "Records read back from the file at startup.",
                p.restored as f64,
            )?;
        }
        if let Some(o) = &self.otlp {
            counter(
                &mut e,
                "triage_agent_otlp_exported_records",
                "Evidence record updates the OTLP collector accepted (losses: triage_agent_loss_total{point=~\"otlp_.*\"}).",
                o.exported,
            )?;
            counter(
                &mut e,
                "triage_agent_otlp_export_retries",
                "OTLP export attempts that failed with a retryable error and were retried.",
                o.retries,
            )?;
            gauge(
                &mut e,
                "triage_agent_otlp_queue_records",
                "Evidence record updates waiting for OTLP export.",
                o.queued as f64,
            )?;
            gauge(
                &mut e,
                "triage_agent_otlp_queue_capacity",
                "Record updates the OTLP export queue holds at most.",
                o.capacity as f64,
            )?;
        }
        for (family, help) in FAILURE_FAMILIES {
            let name = format!("triage_agent_{family}");
            let mut m = e.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for (c, n) in self
                .store
                .failures
                .iter()
                .filter(|(c, _)| c.family == *family)
            {
                let labels: Vec<(&str, &str)> = c.labels().collect();
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        if let Some(p) = &self.process {
            counter_f64(
                &mut e,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                p.cpu_seconds,
            )?;
            gauge(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes as f64,
            )?;
            gauge(
                &mut e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes as f64,
            )?;
            gauge(
                &mut e,
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds as f64,
            )?;
            if let Some(max) = p.max_fds {
                gauge(
                    &mut e,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    max as f64,
                )?;
            }
            gauge(
                &mut e,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            )?;
        }
        if !self.connections.is_empty() {
            let mut m = e.encode_descriptor(
                "triage_agent_connections_open",
                "Connections open on each listener (metrics: this port; grpc: the API).",
                None,
                MetricType::Gauge,
            )?;
            for c in &self.connections {
                ConstGauge::new(c.open as i64)
                    .encode(m.encode_family(&[("listener", c.listener)])?)?;
            }
        }
        if !self.connections.is_empty() {
            let mut m = e.encode_descriptor(
                "triage_agent_connections_refused",
                "Connections closed at once for being over the listener's bound, in all or from \
                 one address (a flood, or too many clients).",
                None,
                MetricType::Counter,
            )?;
            for c in &self.connections {
                ConstCounter::new(c.refused)
                    .encode(m.encode_family(&[("listener", c.listener)])?)?;
            }
        }
        Ok(())
    }
}

/// OpenMetrics text as Prometheus's text format 0.0.4: a counter's family is named with its
/// `_total` (as its samples are), and the lines 0.0.4 does not have (`# UNIT`, `# EOF`) go.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `--metrics-listen`: the address to bind, or none (the endpoint is off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

/// Parses `--metrics-listen`: IP:PORT, or "none".
pub fn parse_listen(s: &str) -> Result<MetricsListen, String> {
    match s.trim() {
        "" | "none" | "off" => Ok(MetricsListen(None)),
        addr => addr
            .parse()
            .map(|a| MetricsListen(Some(a)))
            .map_err(|_| format!("{addr:?} is not an IP:PORT address (or \"none\")")),
    }
}
