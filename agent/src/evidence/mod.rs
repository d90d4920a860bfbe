//! The domain model: what the agent records and the CLI shows.
//!
//! One occurrence shape for every kind: *when* ([`Occurrence::at`]), *who* ([`Subject`]: pod,
//! container, process and how they were attributed) and *what* ([`Detail`], one variant per
//! kind). [`Detail::key`] decides which repeats aggregate into one [`Evidence`] record.
//!
//! Names (kinds, directions, attributions, protocols) are written once, in [`names!`]
//! tables: `as_str`, JSON, the table, `--kind` parsing and the proto conversions all use them.
//!
//! Adding a signal: a [`Kind`] name, a [`Detail`] variant with its key and merge rule, its JSON
//! fields in [`Detail::json_fields`], its proto `oneof` arm in [`crate::codec`].

pub mod fixtures;
pub(crate) mod names;

use std::{fmt, net::IpAddr, net::SocketAddr, sync::Arc, time::SystemTime};

use serde_json::{Map, Value, json};

pub use names::Named;

names::names! {
    /// Which silent failure a record describes.
    pub enum Kind {
        ConnectionRefused = "connection_refused",
        ConnectionTimeout = "connection_timeout",
        PacketDrop = "packet_drop",
        Dns = "dns",
        OomKill = "oom_kill",
        CpuThrottling = "cpu_throttling",
    }
}

impl Kind {
    /// The layer of the stack a kind points at, as the triage method names it.
    pub fn layer(self) -> &'static str {
        match self {
            Kind::ConnectionRefused | Kind::ConnectionTimeout => "connection",
            Kind::PacketDrop => "network policy / packet path",
            Kind::Dns => "DNS",
            Kind::OomKill => "memory",
            Kind::CpuThrottling => "CPU",
        }
    }
}

names::names! {
    /// How a record was tied to its pod, strongest first.
    pub enum Attribution {
        /// The cgroup of the process involved: exact.
        Cgroup = "cgroup",
        /// The socket involved: exact.
        Socket = "socket",
        /// The pod IP at the time of the event.
        Ip = "ip",
        /// Not tied to a pod of this node.
        None = "none",
    }
}

names::names! {
    /// Which way the failed traffic went, seen from the record's pod.
    pub enum Direction {
        /// The pod's own attempt failed.
        Outbound = "outbound",
        /// The pod failed someone else's attempt.
        Inbound = "inbound",
    }
}

names::names! {
    /// Transport protocol.
    pub enum Protocol {
        Tcp = "tcp",
        Udp = "udp",
        Icmp = "icmp",
        Icmpv6 = "icmpv6",
        /// Any other IP protocol.
        Other = "other",
    }
}

impl Protocol {
    /// From the IP protocol number.
    pub fn from_ip(number: u8) -> Protocol {
        match number {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            _ => Protocol::Other,
        }
    }
}

names::names! {
    /// Who answered a refused connection.
    pub enum Cause {
        /// The destination's TCP stack: nothing listens on the port.
        NoListener = "no_listener",
        /// A firewall rule (a REJECT: an ICMP error, or a reset the destination's stack did not
        /// send).
        Rejected = "rejected",
        /// The agent cannot tell (the reset came from another node).
        Unknown = "unknown",
    }
}

names::names! {
    /// How a DNS lookup failed.
    pub enum DnsOutcome {
        /// The name does not exist (rcode NXDOMAIN).
        Nxdomain = "nxdomain",
        /// The server failed (rcode SERVFAIL: often its upstream is unreachable).
        Servfail = "servfail",
        /// The server refused to answer (rcode REFUSED).
        Refused = "refused",
        /// Any other error rcode (FORMERR, NOTIMP, ...): see `rcode`.
        Error = "error",
        /// No answer within the timeout window.
        Timeout = "timeout",
        /// Answered, but slower than the slow threshold.
        Slow = "slow",
        /// The UDP answer was truncated (TC bit): the client had to retry over TCP.
        TruncatedRetry = "truncated_retry",
        /// The search path was walked: the name was answered only after NXDOMAINs for its
        /// expansions (`name.ns.svc.cluster.local`, ...), each a round trip.
        SearchExpansion = "search_expansion",
    }
}

/// A pod by its API identity. Shared (`Arc`) between the pod index and every record about it,
/// so a record costs a pointer, not three strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl PodRef {
    pub fn json(&self) -> Value {
        json!({"namespace": self.namespace, "name": self.name, "uid": self.uid})
    }
}

/// The process involved, when the kernel knew it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Process {
    pub pid: u32,
    pub comm: Arc<str>,
}

/// Who an occurrence is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// `None` when [`Attribution::None`].
    pub pod: Option<Arc<PodRef>>,
    pub container: Option<Arc<str>>,
    pub process: Option<Process>,
    pub attribution: Attribution,
}

impl Subject {
    /// Not tied to any pod.
    pub fn unattributed(process: Option<Process>) -> Subject {
        Subject {
            pod: None,
            container: None,
            process,
            attribution: Attribution::None,
        }
    }
}

/// A connection between two endpoints, seen from the record's pod (refusals; timeouts next).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub direction: Direction,
    /// The side that initiated the traffic.
    pub src: SocketAddr,
    /// The side that received it.
    pub dst: SocketAddr,
    pub protocol: Protocol,
    /// The kernel's reason, when it gave one.
    pub reason: Option<Arc<str>>,
    /// The pod at the other end, when known.
    pub peer: Option<Arc<PodRef>>,
    /// Refusals: who answered.
    pub cause: Option<Cause>,
    /// Timeouts: SYN retransmissions the kernel made before giving up.
    pub syn_retransmits: u32,
}

/// A dropped packet, seen from the record's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    /// `outbound`: this pod's packet was dropped; `inbound`: a packet to this pod was.
    pub direction: Direction,
    /// The packet's source; its port is the latest occurrence's. ICMP: type and code as ports.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub protocol: Protocol,
    /// The kernel's `skb_drop_reason` name (e.g. NETFILTER_DROP).
    pub reason: Arc<str>,
    /// The pod at the other end, when known.
    pub peer: Option<Arc<PodRef>>,
    /// TCP flags of the dropped segment (FIN, SYN, RST, ACK bits).
    pub tcp_flags: Option<u8>,
    /// Where the kernel freed the packet (`nf_hook_slow+0x8c`), on kernels without drop
    /// reasons (before Linux 5.17; reason UNKNOWN) that show the agent their symbols.
    pub location: Option<Arc<str>>,
}

/// A DNS lookup that failed or was slow, seen from the asking pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    /// The name as asked (for a search expansion: the name before the search domains).
    pub query: Arc<str>,
    /// The query type ("A", "AAAA", "SRV", ...).
    pub qtype: Arc<str>,
    pub outcome: DnsOutcome,
    /// The answer's rcode name ("NXDOMAIN"), when answered.
    pub rcode: Option<Arc<str>>,
    /// The asking socket; its port is the latest occurrence's.
    pub client: SocketAddr,
    /// The server asked (a Service VIP, a node-local cache or an external resolver).
    pub server: SocketAddr,
    pub protocol: Protocol,
    /// Latest latency: answer time, or for timeouts how long the query went unanswered.
    pub latency_ms: Option<u64>,
    /// The DNS server's pod, when it runs on this node and received the query.
    pub server_pod: Option<Arc<PodRef>>,
    /// Timeouts: whether the query was seen arriving at a DNS server's socket on this node
    /// (`None`: no server on this node saw it, or it is elsewhere).
    pub reached_server: Option<bool>,
    /// `search_expansion`: NXDOMAIN answers before the real one (their round trips);
    /// `nxdomain`: the search-path expansions of the name also answered NXDOMAIN.
    pub search_nxdomains: u32,
}

/// Successful DNS lookups of a pod (not evidence: the background against which failures are
/// read, "37 of 40 lookups succeeded").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsLookups {
    /// Lookups that ended (answered, timed out), retransmissions not counted twice.
    pub lookups: u64,
    /// Answered with NOERROR.
    pub succeeded: u64,
    /// Answered with an error rcode (NXDOMAIN included).
    pub failed: u64,
    /// Never answered.
    pub timeouts: u64,
    /// Answered above the slow threshold.
    pub slow: u64,
    /// Sum and maximum of answer latencies, in microseconds.
    pub latency_sum_us: u64,
    pub latency_max_us: u64,
}

impl DnsLookups {
    pub fn add(&mut self, other: &DnsLookups) {
        self.lookups = self.lookups.saturating_add(other.lookups);
        self.succeeded = self.succeeded.saturating_add(other.succeeded);
        self.failed = self.failed.saturating_add(other.failed);
        self.timeouts = self.timeouts.saturating_add(other.timeouts);
        self.slow = self.slow.saturating_add(other.slow);
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
        self.latency_max_us = self.latency_max_us.max(other.latency_max_us);
    }

    /// Mean answer latency in microseconds (answered lookups only).
    pub fn latency_avg_us(&self) -> u64 {
        let answered = self.succeeded + self.failed;
        self.latency_sum_us.checked_div(answered).unwrap_or(0)
    }

    pub fn json(&self) -> Value {
        json!({
            "lookups": self.lookups,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "timeouts": self.timeouts,
            "slow": self.slow,
            "latency_avg_ms": self.latency_avg_us() as f64 / 1000.0,
            "latency_max_ms": self.latency_max_us as f64 / 1000.0,
        })
    }
}

/// The TCP flags a dropped segment's record names, in the order they are written.
pub const TCP_FLAGS: [(u8, &str); 4] = [(0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST")];

/// TCP flags as text: "SYN", "SYN|ACK".
pub fn tcp_flags_text(flags: u8) -> String {
    let names = TCP_FLAGS;
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "none".to_owned()
    } else {
        set.join("|")
    }
}

names::names! {
    /// Which source saw an OOM kill.
    pub enum OomSource {
        /// The kernel's `mark_victim` event (victim identity read in the kernel); confirmed by
        /// the cgroup's counter when it has one.
        Kernel = "kernel",
        /// The cgroup's OOM kill counter only (v2 `memory.events`, v1 `memory.oom_control`):
        /// the victim process is unknown.
        Counter = "counter",
    }
}

/// A process killed by the OOM killer. The record's `process` is the victim (absent when only
/// the cgroup counter saw the kill).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomKill {
    /// Whether the victim was the container's first process (the one Kubernetes watches), when
    /// that can be known. `false`: a child died and Kubernetes reports nothing.
    pub main_process: Option<bool>,
    /// The memory limit that applied (the tightest of the cgroup and its parents), bytes.
    pub memory_limit_bytes: Option<u64>,
    /// The cgroup's memory usage at the kill, bytes.
    pub memory_usage_bytes: Option<u64>,
    /// The victim's resident memory (anon + file + shmem) when the kernel chose it, bytes.
    pub victim_rss_bytes: Option<u64>,
    pub oom_score_adj: Option<i16>,
    /// v2 `memory.oom.group`: the whole container was killed with the victim.
    pub group_kill: Option<bool>,
    pub source: OomSource,
}

/// A container throttled by its CPU limit, over one or more sampling intervals (summed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuThrottling {
    /// CFS periods in which the container was throttled.
    pub throttled_periods: u64,
    /// CFS periods in which the container ran.
    pub total_periods: u64,
    /// Time spent throttled, microseconds.
    pub throttled_us: u64,
    /// The CPU limit (quota / period), thousandths of a core; `None` when unlimited.
    pub limit_millicores: Option<u64>,
    /// Time sampled, milliseconds.
    pub interval_ms: u64,
    /// PSI `cpu.pressure` some avg10, hundredths of a percent, when the kernel has PSI.
    pub cpu_pressure_some_avg10: Option<u32>,
}

impl CpuThrottling {
    /// Throttled periods over periods run (0 when none ran).
    pub fn ratio(&self) -> f64 {
        if self.total_periods == 0 {
            0.0
        } else {
            self.throttled_periods as f64 / self.total_periods as f64
        }
    }
    pub fn throttled_seconds(&self) -> f64 {
        self.throttled_us as f64 / 1e6
    }
    pub fn limit_cores(&self) -> Option<f64> {
        self.limit_millicores.map(|m| m as f64 / 1000.0)
    }
    pub fn interval_seconds(&self) -> f64 {
        self.interval_ms as f64 / 1000.0
    }
    pub fn pressure_avg10(&self) -> Option<f64> {
        self.cpu_pressure_some_avg10.map(|p| f64::from(p) / 100.0)
    }
}

/// What happened, one variant per kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    ConnectionRefused(Connection),
    ConnectionTimeout(Connection),
    PacketDrop(Drop),
    Dns(Dns),
    OomKill(OomKill),
    CpuThrottling(CpuThrottling),
}

/// What makes two occurrences of a kind "the same failure" (besides pod and container).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DetailKey {
    /// Client ports are ephemeral, so the source is keyed by IP only; the destination keeps its
    /// port (it names the service).
    Connection {
        direction: Direction,
        protocol: Protocol,
        src_ip: IpAddr,
        dst: SocketAddr,
        reason: Option<Arc<str>>,
        cause: Option<Cause>,
    },
    Drop {
        direction: Direction,
        protocol: Protocol,
        src_ip: IpAddr,
        dst: SocketAddr,
        reason: Arc<str>,
        tcp_flags: Option<u8>,
        location: Option<Arc<str>>,
    },
    /// Client ports are ephemeral: the asking side is its IP.
    Dns {
        outcome: DnsOutcome,
        query: Arc<str>,
        qtype: Arc<str>,
        client_ip: IpAddr,
        server: SocketAddr,
        protocol: Protocol,
    },
    /// Kills of a container's main process and of its children are told apart.
    OomKill { main_process: Option<bool> },
    /// One record per container.
    CpuThrottling,
}

impl Detail {
    pub fn kind(&self) -> Kind {
        match self {
            Detail::ConnectionRefused(_) => Kind::ConnectionRefused,
            Detail::ConnectionTimeout(_) => Kind::ConnectionTimeout,
            Detail::PacketDrop(_) => Kind::PacketDrop,
            Detail::Dns(_) => Kind::Dns,
            Detail::OomKill(_) => Kind::OomKill,
            Detail::CpuThrottling(_) => Kind::CpuThrottling,
        }
    }

    /// The aggregation key.
    pub fn key(&self) -> DetailKey {
        match self {
            Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => DetailKey::Connection {
                direction: c.direction,
                protocol: c.protocol,
                src_ip: c.src.ip(),
                dst: c.dst,
                reason: c.reason.clone(),
                cause: c.cause,
            },
            Detail::PacketDrop(d) => DetailKey::Drop {
                direction: d.direction,
                protocol: d.protocol,
                src_ip: d.src.ip(),
                dst: d.dst,
                reason: d.reason.clone(),
                tcp_flags: d.tcp_flags,
                location: d.location.clone(),
            },
            Detail::Dns(d) => DetailKey::Dns {
                outcome: d.outcome,
                query: d.query.clone(),
                qtype: d.qtype.clone(),
                client_ip: d.client.ip(),
                server: d.server,
                protocol: d.protocol,
            },
            Detail::OomKill(o) => DetailKey::OomKill {
                main_process: o.main_process,
            },
            Detail::CpuThrottling(_) => DetailKey::CpuThrottling,
        }
    }

    /// Takes in a later occurrence with the same key: the latest values win where they vary.
    fn absorb(&mut self, later: Detail) {
        match (self, later) {
            (Detail::ConnectionRefused(c), Detail::ConnectionRefused(l))
            | (Detail::ConnectionTimeout(c), Detail::ConnectionTimeout(l)) => {
                c.src = l.src;
                c.peer = l.peer.or(c.peer.take());
                c.syn_retransmits = c.syn_retransmits.saturating_add(l.syn_retransmits);
            }
            (Detail::PacketDrop(d), Detail::PacketDrop(l)) => {
                d.src = l.src;
                d.peer = l.peer.or(d.peer.take());
            }
            (Detail::Dns(d), Detail::Dns(l)) => {
                d.client = l.client;
                d.rcode = l.rcode.or(d.rcode.take());
                d.latency_ms = l.latency_ms.or(d.latency_ms);
                d.server_pod = l.server_pod.or(d.server_pod.take());
                d.reached_server = l.reached_server.or(d.reached_server);
                d.search_nxdomains = l.search_nxdomains.max(d.search_nxdomains);
            }
            (Detail::OomKill(o), Detail::OomKill(l)) => {
                // A victim named once stays named.
                let source = if o.source == OomSource::Kernel {
                    o.source
                } else {
                    l.source
                };
                *o = OomKill {
                    main_process: l.main_process.or(o.main_process),
                    memory_limit_bytes: l.memory_limit_bytes.or(o.memory_limit_bytes),
                    memory_usage_bytes: l.memory_usage_bytes.or(o.memory_usage_bytes),
                    victim_rss_bytes: l.victim_rss_bytes.or(o.victim_rss_bytes),
                    oom_score_adj: l.oom_score_adj.or(o.oom_score_adj),
                    group_kill: l.group_kill.or(o.group_kill),
                    source,
                };
            }
            (Detail::CpuThrottling(c), Detail::CpuThrottling(l)) => {
                c.throttled_periods = c.throttled_periods.saturating_add(l.throttled_periods);
                c.total_periods = c.total_periods.saturating_add(l.total_periods);
                c.throttled_us = c.throttled_us.saturating_add(l.throttled_us);
                c.interval_ms = c.interval_ms.saturating_add(l.interval_ms);
                c.limit_millicores = l.limit_millicores;
                c.cpu_pressure_some_avg10 = l.cpu_pressure_some_avg10;
            }
            // Same key means same kind; nothing to take from another kind.
            _ => {}
        }
    }

    /// The connection, for kinds that have one.
    pub fn connection(&self) -> Option<&Connection> {
        match self {
            Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => Some(c),
            _ => None,
        }
    }

    /// Direction, endpoints and peer, for the traffic kinds; `None` for resource kinds.
    pub fn endpoints(&self) -> Option<(Direction, SocketAddr, SocketAddr, Option<&Arc<PodRef>>)> {
        match self {
            Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => {
                Some((c.direction, c.src, c.dst, c.peer.as_ref()))
            }
            Detail::PacketDrop(d) => Some((d.direction, d.src, d.dst, d.peer.as_ref())),
            Detail::Dns(d) => Some((
                Direction::Outbound,
                d.client,
                d.server,
                d.server_pod.as_ref(),
            )),
            Detail::OomKill(_) | Detail::CpuThrottling(_) => None,
        }
    }

    /// The kind-specific JSON fields, flat beside the common ones (the JSON contract).
    pub fn json_fields(&self, out: &mut Map<String, Value>) {
        if let Some((direction, src, dst, peer)) = self.endpoints() {
            out.insert("direction".into(), direction.as_str().into());
            out.insert("src".into(), src.to_string().into());
            out.insert("dst".into(), dst.to_string().into());
            out.insert("peer".into(), peer.map(|p| p.json()).into());
        }
        match self {
            Detail::ConnectionRefused(c) => {
                out.insert("protocol".into(), c.protocol.as_str().into());
                out.insert("reason".into(), c.reason.as_deref().into());
                out.insert("cause".into(), c.cause.map(Cause::as_str).into());
            }
            Detail::ConnectionTimeout(c) => {
                out.insert("protocol".into(), c.protocol.as_str().into());
                out.insert("syn_retransmits".into(), c.syn_retransmits.into());
            }
            Detail::PacketDrop(d) => {
                out.insert("protocol".into(), d.protocol.as_str().into());
                out.insert("reason".into(), (*d.reason).into());
                if let Some(flags) = d.tcp_flags {
                    out.insert("tcp_flags".into(), tcp_flags_text(flags).into());
                }
                if let Some(location) = &d.location {
                    out.insert("location".into(), (**location).into());
                }
            }
            Detail::Dns(d) => {
                out.insert("protocol".into(), d.protocol.as_str().into());
                out.insert("query".into(), (*d.query).into());
                out.insert("qtype".into(), (*d.qtype).into());
                out.insert("outcome".into(), d.outcome.as_str().into());
                out.insert("rcode".into(), d.rcode.as_deref().into());
                out.insert("server".into(), d.server.to_string().into());
                out.insert("latency_ms".into(), d.latency_ms.into());
                out.insert("reached_server".into(), d.reached_server.into());
                if d.outcome == DnsOutcome::SearchExpansion || d.search_nxdomains > 0 {
                    out.insert("search_nxdomains".into(), d.search_nxdomains.into());
                }
            }
            Detail::OomKill(o) => {
                out.insert("main_process".into(), o.main_process.into());
                out.insert("memory_limit_bytes".into(), o.memory_limit_bytes.into());
                out.insert("memory_usage_bytes".into(), o.memory_usage_bytes.into());
                out.insert("victim_rss_bytes".into(), o.victim_rss_bytes.into());
                out.insert("oom_score_adj".into(), o.oom_score_adj.into());
                out.insert("group_kill".into(), o.group_kill.into());
                out.insert("source".into(), o.source.as_str().into());
            }
            Detail::CpuThrottling(c) => {
                out.insert("throttled_periods".into(), c.throttled_periods.into());
                out.insert("total_periods".into(), c.total_periods.into());
                out.insert(
                    "throttled_seconds".into(),
                    round3(c.throttled_seconds()).into(),
                );
                out.insert("cpu_limit_cores".into(), c.limit_cores().into());
                out.insert("ratio".into(), round3(c.ratio()).into());
                out.insert(
                    "interval_seconds".into(),
                    round3(c.interval_seconds()).into(),
                );
                if let Some(p) = c.pressure_avg10() {
                    out.insert("cpu_pressure_some_avg10".into(), p.into());
                }
            }
        }
    }
}

/// Three decimals: JSON readers see 0.25, not 0.25000000000000006.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One or more occurrences of a failure, attributed, on its way to the store. Hot signals are
/// counted in the kernel and arrive as one occurrence with `count` repeats seen between
/// `first_at` and `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    /// The latest sighting.
    pub at: SystemTime,
    /// The earliest sighting (`at` for a single one).
    pub first_at: SystemTime,
    /// Sightings this occurrence stands for (at least 1).
    pub count: u64,
    pub subject: Subject,
    pub detail: Detail,
}

impl Occurrence {
    /// A single sighting at `at`.
    pub fn single(at: SystemTime, subject: Subject, detail: Detail) -> Occurrence {
        Occurrence {
            at,
            first_at: at,
            count: 1,
            subject,
            detail,
        }
    }

    pub fn kind(&self) -> Kind {
        self.detail.kind()
    }
}

/// One aggregated record: repeats of the same failure counted, with first and last sighting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub node: Arc<str>,
    pub subject: Subject,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub count: u64,
    pub detail: Detail,
}

impl Evidence {
    /// A record of one occurrence.
    pub fn first(node: Arc<str>, o: Occurrence) -> Evidence {
        Evidence {
            node,
            subject: o.subject,
            first_seen: o.first_at.min(o.at),
            last_seen: o.at,
            count: o.count.max(1),
            detail: o.detail,
        }
    }

    /// Counts more occurrences with the same key; the latest one's varying values win.
    pub fn absorb(&mut self, o: Occurrence) {
        self.count = self.count.saturating_add(o.count.max(1));
        self.first_seen = self.first_seen.min(o.first_at).min(o.at);
        if o.at >= self.last_seen {
            self.last_seen = o.at;
            self.subject.process = o.subject.process.or(self.subject.process.take());
            self.detail.absorb(o.detail);
        }
    }

    pub fn kind(&self) -> Kind {
        self.detail.kind()
    }

    pub fn pod(&self) -> Option<&PodRef> {
        self.subject.pod.as_deref()
    }
}

/// What a query or watch asks for. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub since: Option<SystemTime>,
    pub kinds: Vec<Kind>,
    pub include_unattributed: bool,
}

impl Filter {
    /// Whether a record passes this filter.
    pub fn matches(&self, e: &Evidence) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind()) {
            return false;
        }
        if let Some(since) = self.since
            && e.last_seen < since
        {
            return false;
        }
        self.matches_pod(e.pod())
    }

    /// Whether records about `pod` (`None`: unattributed) pass the namespace and pod filters.
    pub fn matches_pod(&self, pod: Option<&PodRef>) -> bool {
        match pod {
            None => self.include_unattributed && self.namespace.is_none() && self.pod.is_none(),
            Some(pod) => {
                self.namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == pod.namespace)
                    && self.pod.as_ref().is_none_or(|name| *name == pod.name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::refused, *};
    use std::time::Duration;

    #[test]
    fn names_round_trip_and_serialize() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), *k);
            assert_eq!(k.to_string(), k.as_str());
        }
        for d in Direction::ALL {
            assert_eq!(d.as_str().parse::<Direction>().unwrap(), *d);
        }
        assert!(
            "refused"
                .parse::<Kind>()
                .unwrap_err()
                .contains("connection_refused")
        );
    }

    #[test]
    fn filter_by_pod_namespace_since_and_kind() {
        let e = refused().pod("default", "client").last_seen(200).evidence();
        let mut f = Filter::default();
        assert!(f.matches(&e));
        f.namespace = Some("default".into());
        f.pod = Some("client".into());
        assert!(f.matches(&e));
        f.pod = Some("server".into());
        assert!(!f.matches(&e));
        f.pod = Some("client".into());
        f.namespace = Some("other".into());
        assert!(!f.matches(&e));
        f.namespace = Some("default".into());
        f.since = Some(fixtures::t(201));
        assert!(!f.matches(&e));
        f.since = Some(fixtures::t(200));
        assert!(f.matches(&e));
        f.kinds = vec![Kind::Dns];
        assert!(!f.matches(&e));
    }

    #[test]
    fn unattributed_only_when_asked_and_unfiltered_by_pod() {
        let e = refused().unattributed().evidence();
        let mut f = Filter::default();
        assert!(!f.matches(&e));
        f.include_unattributed = true;
        assert!(f.matches(&e));
        f.namespace = Some("default".into());
        assert!(!f.matches(&e));
    }

    #[test]
    fn absorb_keeps_first_and_latest() {
        let mut e = refused().at(10).evidence();
        e.absorb(refused().at(30).src("10.0.0.1:40001").occurrence());
        e.absorb(refused().at(20).src("10.0.0.1:40002").occurrence());
        assert_eq!(e.count, 3);
        assert_eq!(
            (e.first_seen, e.last_seen),
            (fixtures::t(10), fixtures::t(30))
        );
        assert_eq!(e.detail.connection().unwrap().src.port(), 40001);
        assert_eq!(
            e.last_seen.duration_since(e.first_seen).unwrap(),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn counted_occurrences_add_their_count_and_span() {
        let mut e = refused().at(10).evidence();
        let mut o = refused().at(40).occurrence();
        o.count = 500;
        o.first_at = fixtures::t(5);
        e.absorb(o);
        assert_eq!(e.count, 501);
        assert_eq!(
            (e.first_seen, e.last_seen),
            (fixtures::t(5), fixtures::t(40))
        );
    }

    #[test]
    fn json_fields_are_flat() {
        let mut m = Map::new();
        refused().evidence().detail.json_fields(&mut m);
        assert_eq!(m["direction"], "outbound");
        assert_eq!(m["protocol"], "tcp");
        assert_eq!(m["dst"], "10.0.0.2:8080");
        assert!(m["reason"].is_null());
    }
}
