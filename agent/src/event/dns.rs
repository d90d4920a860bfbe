//! What the DNS matcher ([`crate::dns`]) reports: failed or slow lookups, and per-pod tallies of
//! the successful ones.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use crate::evidence::{DnsLookups, DnsOutcome, Protocol};

/// A failed or slow lookup, ready for attribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub outcome: DnsOutcome,
    /// When it was decided (answer arrival, or the deadline) and when the lookup began.
    pub at_ns: u64,
    pub first_ns: u64,
    /// The asking socket's cgroup.
    pub cgroup_id: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub protocol: Protocol,
    pub query: Arc<str>,
    pub qtype: u16,
    pub rcode: Option<u8>,
    pub latency: Option<Duration>,
    /// Timeouts: whether a DNS server's socket on this node received the query.
    pub reached_server: Option<bool>,
    /// Timeouts: whether that server sent an answer (which then never arrived).
    pub server_answered: bool,
    /// The cgroup of the server socket that received the query, when one on this node did.
    pub server_cgroup: Option<u64>,
    /// NXDOMAIN answers folded into this finding (search expansions), per lookup.
    pub search_nxdomains: u32,
    /// Lookups this finding stands for (several search walks of one name can settle together).
    pub count: u64,
}

/// A pod's successful-lookup counters since the last flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    pub cgroup_id: u64,
    /// The client IP last seen for this cgroup (attribution by IP when the cgroup is gone).
    pub client_ip: IpAddr,
    pub lookups: DnsLookups,
}
