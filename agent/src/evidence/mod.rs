//! The domain model: what the agent records and the CLI shows.
//!
//! One occurrence shape for every kind: *when* ([`Occurrence::at`]), *who* ([`Subject`]: pod,
//! container, process and how they were attributed) and *what* ([`Detail`], one variant per
//! kind). [`Detail::key`] decides which repeats aggregate into one [`Evidence`] record.
//!
//! Names (kinds, directions, attributions, protocols) are written once, in [`names!`]
//! tables: `as_str`, JSON, the table, `--kind` parsing and the proto conversions all use them.
//!
//! Adding a kind: a [`Kind`] name, a [`Detail`] variant, a module in `kinds/` whose type
//! implements [`KindDetail`] (key, merge rule, endpoints, JSON fields, text cell, diagnosis,
//! OpenTelemetry severity and attributes, NetworkPolicy, wire codec) and its line in the
//! `kinds!` table there; the proto's `oneof` gets its detail message.

pub mod fixtures;
pub mod folded;
mod kinds;
pub mod line;
pub(crate) mod names;
pub mod pod_losses;
pub mod wire;

use std::{fmt, net::IpAddr, net::SocketAddr, sync::Arc, time::SystemTime};

use serde_json::{Map, Value, json};
use triage_agent_common::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use triage_agent_proto::v1 as pb;

pub use folded::Folded;
pub use kinds::{
    Connection, CpuThrottling, Dns, DnsLookups, Drop, Endpoints, FailureCounter, Finding,
    KindDetail, Label, OomKill, Semantic, Severity,
};
use kinds::{each_detail, each_kind, kind_of, same_kind};
pub use names::Named;
pub use pod_losses::PodLosses;
use wire::ConvertError;

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
        /// The source IP of a packet whose way in could not be checked (it had no socket, and
        /// did not enter from a known pod's own interface): any pod with CAP_NET_RAW can write
        /// another's address, so this names who the packet claims, not who sent it.
        Unverified = "unverified",
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
            n if u16::from(n) == IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            IPPROTO_ICMP => Protocol::Icmp,
            IPPROTO_ICMPV6 => Protocol::Icmpv6,
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

/// The TCP flags a dropped segment's record names, in the order they are written.
pub const TCP_FLAGS: [(u8, &str); 4] = [
    (TCP_SYN, "SYN"),
    (TCP_ACK, "ACK"),
    (TCP_FIN, "FIN"),
    (TCP_RST, "RST"),
];

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

/// TCP flags from text: "SYN|ACK" -> bits; unknown names are ignored.
pub fn tcp_flags_from_text(text: &str) -> u8 {
    text.split('|')
        .filter_map(|f| TCP_FLAGS.iter().find(|(_, name)| *name == f))
        .fold(0, |a, (bit, _)| a | bit)
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

kinds::kinds!(detail_enum! {});

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

impl DetailKey {
    /// The key of a folded record (see [`folded`]): one per kind, protocol, reason and cause,
    /// whatever the sender, port, TCP flags or drop location (all chosen by the sender).
    pub fn folded(self) -> DetailKey {
        let unspecified = |ip: IpAddr| match ip {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        match self {
            DetailKey::Connection {
                direction,
                protocol,
                src_ip,
                dst,
                reason,
                cause,
            } => DetailKey::Connection {
                direction,
                protocol,
                src_ip: unspecified(src_ip),
                dst: SocketAddr::new(dst.ip(), 0),
                reason,
                cause,
            },
            DetailKey::Drop {
                direction,
                protocol,
                src_ip,
                dst,
                reason,
                ..
            } => DetailKey::Drop {
                direction,
                protocol,
                src_ip: unspecified(src_ip),
                dst: SocketAddr::new(dst.ip(), 0),
                reason,
                tcp_flags: None,
                location: None,
            },
            other => other,
        }
    }
}

impl Detail {
    /// Which kind this is.
    pub fn kind(&self) -> Kind {
        kind_of!(self)
    }

    /// The aggregation key.
    pub fn key(&self) -> DetailKey {
        each_detail!(self, d => d.key())
    }

    /// Takes in a later occurrence with the same key: the latest values win where they vary.
    fn absorb(&mut self, later: Detail) {
        // Same key means same kind; nothing to take from another kind.
        same_kind!(self, later, d, l => d.absorb(l))
    }

    /// For a peer-driven occurrence (an inbound refusal or drop, which its sender causes, not
    /// the pod): the sender and the destination port a folded record tallies. `None` for
    /// everything the pod does itself.
    pub fn folding(&self) -> Option<(IpAddr, u16)> {
        match self {
            Detail::ConnectionRefused(Connection {
                direction: Direction::Inbound,
                src,
                dst,
                ..
            })
            | Detail::ConnectionTimeout(Connection {
                direction: Direction::Inbound,
                src,
                dst,
                ..
            })
            | Detail::PacketDrop(Drop {
                direction: Direction::Inbound,
                src,
                dst,
                ..
            }) => Some((src.ip(), dst.port())),
            _ => None,
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
    pub fn endpoints(&self) -> Option<Endpoints<'_>> {
        each_detail!(self, d => d.endpoints())
    }

    /// The transport protocol, for the traffic kinds; `None` for resource kinds.
    pub fn protocol(&self) -> Option<Protocol> {
        each_detail!(self, d => d.protocol())
    }

    /// The kind-specific JSON fields, flat beside the common ones (the JSON contract).
    pub fn json_fields(&self, out: &mut Map<String, Value>) {
        if let Some((direction, src, dst, peer)) = self.endpoints() {
            out.insert("direction".into(), direction.as_str().into());
            out.insert("src".into(), src.to_string().into());
            out.insert("dst".into(), dst.to_string().into());
            out.insert("peer".into(), peer.map(|p| p.json()).into());
        }
        let kind = self.kind();
        each_detail!(self, d => d.json_fields(kind, out));
    }

    /// The kind-specific cell of the table and of a watch line.
    pub fn cell(&self) -> String {
        let kind = self.kind();
        each_detail!(self, d => d.cell(kind))
    }

    /// What `record` (whose detail this is) says is wrong and the safest next step; `pod` names
    /// its pod for people, `all` is every record of the answer.
    pub fn diagnose(&self, record: &Evidence, pod: &str, all: &[Evidence]) -> Finding {
        each_detail!(self, d => d.diagnose(record, pod, all))
    }

    /// How serious the record is (the OpenTelemetry log record's severity).
    pub fn severity(&self) -> Severity {
        each_detail!(self, d => d.severity())
    }

    /// OpenTelemetry semantic-convention attributes beyond the endpoints.
    pub fn semantic(&self) -> Semantic<'_> {
        each_detail!(self, d => d.semantic())
    }

    /// Whether NetworkPolicy decides the fate of this record's traffic.
    pub fn policy_decides(&self) -> bool {
        let kind = self.kind();
        each_detail!(self, d => d.policy_decides(kind))
    }

    /// Whether only the other end's node can explain this record.
    pub fn needs_other_side(&self) -> bool {
        let kind = self.kind();
        each_detail!(self, d => d.needs_other_side(kind))
    }

    /// The node-level failure counter an occurrence of this detail counts in.
    pub fn failure_counter(&self) -> Option<FailureCounter> {
        let kind = self.kind();
        each_detail!(self, d => d.failure_counter(kind))
    }

    /// Fills the message's `detail` (and the legacy fields the kind had).
    pub fn to_pb(&self, m: &mut pb::Evidence) {
        each_detail!(self, d => d.to_pb(m))
    }

    /// The detail of a record of `kind`, taken out of `m`.
    pub fn from_pb(kind: Kind, m: &mut pb::Evidence) -> Result<Detail, ConvertError> {
        each_kind!(kind, T => T::from_pb(kind, m))
    }
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
    /// Set when the record folds inbound occurrences from many senders and ports (see
    /// [`folded`]); `detail`'s addresses are then the latest occurrence's.
    pub folded: Option<Box<Folded>>,
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
            folded: None,
        }
    }

    /// A new folded record of one occurrence (see [`folded`]); a plain one for kinds that do
    /// not fold.
    pub fn first_folded(node: Arc<str>, o: Occurrence) -> Evidence {
        let folding = o.detail.folding();
        let count = o.count.max(1);
        let mut e = Evidence::first(node, o);
        e.folded = folding.map(|(sender, port)| Box::new(Folded::new(sender, port, count)));
        e
    }

    /// The table cells after pod and kind: (direction, src, dst, peer, detail). A folded
    /// record's source is its senders and its destination port the range of ports.
    pub fn detail_cells(&self) -> [String; 5] {
        let mut cells = line::detail_cells(&self.detail);
        if let Some(f) = &self.folded
            && let Some((_, _, dst, _)) = self.detail.endpoints()
        {
            cells[1] = match f.senders.as_slice() {
                [(ip, _)] if f.other_senders_count == 0 => ip.to_string(),
                _ => f.senders_text(),
            };
            cells[2] = if f.port_min == f.port_max {
                dst.to_string()
            } else {
                let ip = SocketAddr::new(dst.ip(), 0).to_string();
                format!("{}:{}-{}", &ip[..ip.len() - 2], f.port_min, f.port_max)
            };
            // The latest sender's pod is no peer of the whole record.
            cells[3] = "-".to_owned();
            cells[4] = format!("{}; {}", cells[4], f.cell());
        }
        cells
    }

    /// Counts more occurrences with the same key; the latest one's varying values win.
    pub fn absorb(&mut self, o: Occurrence) {
        self.count = self.count.saturating_add(o.count.max(1));
        self.first_seen = self.first_seen.min(o.first_at).min(o.at);
        if let Some(f) = &mut self.folded
            && let Some((sender, port)) = o.detail.folding()
        {
            // Every occurrence is tallied, in whatever order it arrives.
            f.add(sender, port, o.count.max(1));
        }
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
