//! DNS lookups that failed or were slow, and the per-pod tallies of the successful ones.

use std::{net::SocketAddr, sync::Arc};

use serde_json::{Map, Value, json};
use triage_agent_proto::v1 as pb;

use super::{Endpoints, FailureCounter, Finding, KindDetail, Label, Semantic, Severity};
use crate::{
    evidence::{
        Detail, DetailKey, Direction, DnsOutcome, Evidence, Kind, PodRef, Protocol,
        wire::{ConvertError, addr_from_pb, from_pb, pod_from_pb, pod_to_pb, to_pb},
    },
    text::{clean, cleaned},
};

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

impl KindDetail for Dns {
    fn key(&self) -> DetailKey {
        DetailKey::Dns {
            outcome: self.outcome,
            query: self.query.clone(),
            qtype: self.qtype.clone(),
            client_ip: self.client.ip(),
            server: self.server,
            protocol: self.protocol,
        }
    }

    fn absorb(&mut self, later: Self) {
        self.client = later.client;
        self.rcode = later.rcode.or(self.rcode.take());
        self.latency_ms = later.latency_ms.or(self.latency_ms);
        self.server_pod = later.server_pod.or(self.server_pod.take());
        self.reached_server = later.reached_server.or(self.reached_server);
        self.search_nxdomains = later.search_nxdomains.max(self.search_nxdomains);
    }

    fn endpoints(&self) -> Option<Endpoints<'_>> {
        Some((
            Direction::Outbound,
            self.client,
            self.server,
            self.server_pod.as_ref(),
        ))
    }

    fn protocol(&self) -> Option<Protocol> {
        Some(self.protocol)
    }

    fn json_fields(&self, _: Kind, out: &mut Map<String, Value>) {
        out.insert("protocol".into(), self.protocol.as_str().into());
        out.insert("query".into(), (*self.query).into());
        out.insert("qtype".into(), (*self.qtype).into());
        out.insert("outcome".into(), self.outcome.as_str().into());
        out.insert("rcode".into(), self.rcode.as_deref().into());
        out.insert("server".into(), self.server.to_string().into());
        out.insert("latency_ms".into(), self.latency_ms.into());
        out.insert("reached_server".into(), self.reached_server.into());
        if self.outcome == DnsOutcome::SearchExpansion || self.search_nxdomains > 0 {
            out.insert("search_nxdomains".into(), self.search_nxdomains.into());
        }
    }

    fn cell(&self, _: Kind) -> String {
        let mut text = format!(
            "{} {} {}",
            self.outcome.as_str(),
            clean(&self.query),
            clean(&self.qtype)
        );
        if let Some(rcode) = &self.rcode {
            text.push_str(&format!(" {}", clean(rcode)));
        }
        if let Some(ms) = self.latency_ms {
            text.push_str(&format!(" {ms}ms"));
        }
        if self.search_nxdomains > 0 {
            text.push_str(&format!(" ({} NXDOMAIN before)", self.search_nxdomains));
        }
        if self.protocol == Protocol::Tcp {
            text.push_str(" tcp");
        }
        text
    }

    fn diagnose(&self, record: &Evidence, pod: &str, all: &[Evidence]) -> Finding {
        dns(record, self, pod, all)
    }

    /// A failed or unanswered lookup is an error; a slow, truncated or walked one is a warning,
    /// and so is NXDOMAIN, which may be a search-path probe.
    fn severity(&self) -> Severity {
        match self.outcome {
            DnsOutcome::Servfail
            | DnsOutcome::Refused
            | DnsOutcome::Error
            | DnsOutcome::Timeout => Severity::Error,
            DnsOutcome::Nxdomain
            | DnsOutcome::Slow
            | DnsOutcome::TruncatedRetry
            | DnsOutcome::SearchExpansion => Severity::Warn,
        }
    }

    /// `dns.question.name`; the server is the destination.
    fn semantic(&self) -> Semantic<'_> {
        Semantic {
            attributes: vec![("dns.question.name", &*self.query)],
            carried: &["query", "server"],
        }
    }

    /// The queries go to a Service VIP that policy never sees (it applies after translation):
    /// their drop records carry the real flow.
    fn policy_decides(&self, _: Kind) -> bool {
        false
    }

    fn needs_other_side(&self, _: Kind) -> bool {
        false
    }

    /// `dns_failures_total{outcome}`.
    fn failure_counter(&self, _: Kind) -> Option<FailureCounter> {
        Some(FailureCounter {
            family: "dns_failures",
            labels: [
                Some(("outcome", Label::Static(self.outcome.as_str()))),
                None,
            ],
        })
    }

    fn to_pb(&self, m: &mut pb::Evidence) {
        let d = pb::DnsDetail {
            query: self.query.to_string(),
            qtype: self.qtype.to_string(),
            outcome: self.outcome.as_str().to_owned(),
            rcode: self.rcode.as_deref().unwrap_or_default().to_owned(),
            client: self.client.to_string(),
            server: self.server.to_string(),
            protocol: to_pb::<pb::Protocol>(self.protocol),
            latency_ms: self.latency_ms,
            server_pod: self.server_pod.as_deref().map(pod_to_pb),
            reached_server: self.reached_server,
            search_nxdomains: self.search_nxdomains,
        };
        m.protocol = d.protocol;
        m.reason.clone_from(&d.rcode);
        m.detail = Some(pb::evidence::Detail::Dns(d));
    }

    fn from_pb(kind: Kind, m: &mut pb::Evidence) -> Result<Detail, ConvertError> {
        let Some(pb::evidence::Detail::Dns(d)) = m.detail.take() else {
            return Err(ConvertError::MissingDetail { kind });
        };
        Ok(Detail::Dns(Dns {
            query: d.query.into(),
            qtype: d.qtype.into(),
            outcome: d
                .outcome
                .parse::<DnsOutcome>()
                .map_err(|_| ConvertError::Unknown {
                    field: "outcome",
                    value: d.outcome.clone(),
                })?,
            rcode: Some(d.rcode).filter(|r| !r.is_empty()).map(Into::into),
            client: addr_from_pb(&d.client, "client")?,
            server: addr_from_pb(&d.server, "server")?,
            protocol: from_pb::<pb::Protocol, _>("protocol", d.protocol)?,
            latency_ms: d.latency_ms,
            server_pod: d.server_pod.map(pod_from_pb),
            reached_server: d.reached_server,
            search_nxdomains: d.search_nxdomains,
        }))
    }
}

/// The drop records that explain a DNS timeout: the same pod's packets to a DNS port over the
/// same protocol, dropped while the lookups went unanswered. (After a Service VIP is translated
/// the dropped packet's destination is the DNS pod, not the VIP: the port and time tie them.)
fn dns_drops<'a>(e: &Evidence, d: &Dns, all: &'a [Evidence]) -> Vec<&'a Evidence> {
    all.iter()
        .filter(|x| {
            x.pod() == e.pod()
                && matches!(&x.detail, Detail::PacketDrop(p)
                    if p.direction == Direction::Outbound
                        && p.protocol == d.protocol
                        && p.dst.port() == d.server.port())
                && x.first_seen <= e.last_seen
                && x.last_seen + std::time::Duration::from_secs(30) >= e.first_seen
        })
        .collect()
}

fn dns(e: &Evidence, d: &Dns, pod: &str, all: &[Evidence]) -> Finding {
    let kind = e.kind();
    let name = cleaned(&d.query);
    let server = match &d.server_pod {
        Some(p) => format!("{} (pod {p})", d.server),
        None if d.server.ip().to_string() == "169.254.20.10" => {
            format!("{} (node-local DNS cache)", d.server)
        }
        None => d.server.to_string(),
    };
    let latency = d
        .latency_ms
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_else(|| "?".to_owned());
    let (summary, next_step) = match d.outcome {
        DnsOutcome::Nxdomain => (
            format!(
                "{pod} asked {server} for {name} ({qtype}) {count} time(s): NXDOMAIN, the name \
                 does not exist{expanded}.",
                qtype = d.qtype,
                count = e.count,
                expanded = if d.search_nxdomains > 0 {
                    format!(
                        " (each lookup also tried {} search-path expansion(s), all NXDOMAIN)",
                        d.search_nxdomains
                    )
                } else {
                    String::new()
                },
            ),
            format!(
                "Check the name the application uses (typo, wrong namespace: a Service in \
                 another namespace is <service>.<namespace>), and that the Service exists \
                 (kubectl get svc -A | grep <name>). Restarting {pod} will not fix it."
            ),
        ),
        DnsOutcome::SearchExpansion => (
            format!(
                "{pod}'s lookups of {name} walked the search path: {n} NXDOMAIN answer(s) \
                 (names with the pod's search domains appended, ndots:5) before the real one, \
                 {latency} per lookup, {count} time(s).",
                n = d.search_nxdomains,
                count = e.count,
            ),
            format!(
                "Use the fully qualified name with a trailing dot ({name}.) in the \
                 application's configuration, or lower ndots in the pod's dnsConfig \
                 (options: [{{name: ndots, value: \"2\"}}]). Not a failure: each lookup costs \
                 {} extra round trip(s).",
                d.search_nxdomains
            ),
        ),
        DnsOutcome::Servfail => (
            format!(
                "{pod}'s lookups of {name} ({qtype}) got SERVFAIL from {server} {count} time(s): \
                 the DNS server could not get an answer (usually its upstream resolver is \
                 unreachable or failing).",
                qtype = d.qtype,
                count = e.count,
            ),
            "Check the DNS server's logs and its upstream (kubectl -n kube-system logs -l \
             k8s-app=kube-dns; the forward plugin's target): the fault is upstream of the pod. \
             Restarting the pod will not fix it."
                .to_owned(),
        ),
        DnsOutcome::Refused | DnsOutcome::Error => (
            format!(
                "{pod}'s lookups of {name} ({qtype}) were answered {rcode} by {server} {count} \
                 time(s).",
                qtype = d.qtype,
                rcode = d.rcode.as_deref().map(cleaned).unwrap_or_default(),
                count = e.count,
            ),
            "Check which server the pod asks (its /etc/resolv.conf, dnsPolicy) and that \
             server's configuration for this zone."
                .to_owned(),
        ),
        DnsOutcome::Slow => (
            format!(
                "{pod}'s lookups of {name} ({qtype}) were slow: {latency} from {server} (latest; \
                 {count} slow answer(s)).",
                qtype = d.qtype,
                count = e.count,
            ),
            "Check the DNS server's load and CPU throttling (CoreDNS replicas, its cache) and \
             its upstream latency; a node-local DNS cache helps. Restarting the pod will not \
             help."
                .to_owned(),
        ),
        DnsOutcome::TruncatedRetry => (
            format!(
                "{pod}'s lookups of {name} ({qtype}) got truncated UDP answers from {server} \
                 {count} time(s) and had to ask again over TCP.",
                qtype = d.qtype,
                count = e.count,
            ),
            "The answer is too big for UDP: check that TCP/53 to the DNS server is allowed \
             (NetworkPolicy egress) and consider trimming the record set."
                .to_owned(),
        ),
        DnsOutcome::Timeout => {
            let drops = dns_drops(e, d, all);
            let base = format!(
                "{pod}'s lookups of {name} ({qtype}) to {server} went unanswered {count} \
                 time(s) (waited {latency}): the application sees \"temporary failure in name \
                 resolution\" or a stall.",
                qtype = d.qtype,
                count = e.count,
            );
            let proto = match d.protocol {
                Protocol::Tcp => "tcp",
                _ => "udp",
            };
            if let Some(drop) = drops.first() {
                let reason = match &drop.detail {
                    Detail::PacketDrop(p) => cleaned(&p.reason),
                    _ => String::new(),
                };
                (
                    format!(
                        "{base} The queries were dropped by the kernel ({reason}, {n} \
                         packet(s) to port {port}): see the packet_drop finding.",
                        n = drop.count,
                        port = d.server.port(),
                    ),
                    format!(
                        "A NetworkPolicy or firewall rule drops {pod}'s DNS: allow egress to \
                         the DNS pods on {proto}/53 and tcp/53 (kube-system, k8s-app=kube-dns); \
                         `triage-agent explain` names the policy. Restarting {pod} will not \
                         fix it."
                    ),
                )
            } else if d.reached_server == Some(true) {
                (
                    format!(
                        "{base} The query reached the DNS server on this node but no answer \
                         came back: the server is overloaded or waits on its upstream."
                    ),
                    "Check the DNS server (CoreDNS) load, throttling and its upstream; \
                     look for its own dns timeouts (triage-agent query --pod <coredns pod>)."
                        .to_owned(),
                )
            } else {
                (
                    format!(
                        "{base} No drop of these queries was seen on this node and no DNS \
                         server here received them: the loss is on the way to the server or \
                         at it."
                    ),
                    format!(
                        "Check the DNS Service has ready endpoints (kubectl -n kube-system get \
                         endpointslices -l k8s-app=kube-dns), NetworkPolicy egress to {proto}/53, \
                         and the agent on the DNS pods' nodes."
                    ),
                )
            }
        }
    };
    Finding {
        kind,
        layer: kind.layer(),
        summary,
        next_step,
    }
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
