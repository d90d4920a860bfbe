//! DNS lookups that failed or were slow, and the per-pod tallies of the successful ones.

use std::{net::SocketAddr, sync::Arc};

use serde_json::{Map, Value, json};

use super::{Endpoints, KindDetail};
use crate::evidence::{DetailKey, Direction, DnsOutcome, Kind, PodRef, Protocol};

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
