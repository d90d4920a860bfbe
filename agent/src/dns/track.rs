//! Matching DNS answers to queries, per asking socket: what was asked, what came back, how long
//! it took, and what was never answered. Pure and synchronous (times are CLOCK_BOOTTIME
//! nanoseconds from the kernel), so every rule is unit-tested; [`super::run`] drives it.
//!
//! - A query (a packet with QR clear leaving a socket towards a DNS port) enters the in-flight
//!   table under (socket cgroup, client ip:port, server ip:port, id, qtype, qname). A resend
//!   with the same key (the resolver's retry) refreshes its deadline instead of counting twice.
//! - Its answer (QR set, arriving at the same socket) ends it: NOERROR feeds the pod's
//!   [`DnsLookups`] (and a `slow` finding above the threshold); SERVFAIL, REFUSED and other
//!   errors are findings at once; NXDOMAIN waits briefly in the client's search group (below).
//! - No answer within the timeout: a `timeout` finding, saying whether a DNS server's socket
//!   on this node received the query and whether it answered (the same packets seen at the
//!   server's side, matched by client address and id; for a query the kernel held, its notes
//!   arrive with the query, [`super::packet::ServerSide`]).
//! - Good UDP answers are mostly counted in the kernel and join the pod's counters through
//!   [`Tracker::answered_in_kernel`]; what reaches the tracker is the rest.
//! - The search path: a resolver with `ndots:5` asks `name.ns.svc.cluster.local`,
//!   `name.svc.cluster.local`, ... each answered NXDOMAIN before the name that exists. NXDOMAINs
//!   wait in their client's group for [`SEARCH_HOLD`]; an answer for a related name (same
//!   leading labels, a shorter search suffix or none) folds them into one `search_expansion`
//!   finding with their count and cost; if nothing is answered, they are one `nxdomain`
//!   finding for the shortest name tried, not one per expansion.
//! - Bounded: at most `per_pod` queries in flight per cgroup and `total` in all. The oldest of
//!   the cgroup (or of the cgroup holding most) makes room, counted as
//!   [`Loss::DnsInflightEvicted`].

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use domain::base::iana::Rcode;
use triage_agent_common::{AF_INET, AF_INET6, dns_question_hash};

use super::packet::{Captured, Message, Side};
use crate::{
    event::{Finding, Tally},
    evidence::{DnsLookups, DnsOutcome, Protocol},
    loss::{Counters, Loss},
    probes::dns_repeats::{RepeatChange, RepeatKey},
};

/// How long NXDOMAIN answers wait for the rest of their search sequence (after the latest one,
/// and while the client has queries in flight).
pub const SEARCH_HOLD: Duration = Duration::from_secs(1);

/// Unfolded NXDOMAINs of one name in one search group after which its repeats are counted in
/// the kernel (a flood of a name that does not exist; a search walk's expansion is folded by
/// its answered name long before).
pub const NX_REPEATS_TO_COUNT: u64 = 64;

/// Names held per search group (a pod container's client address) at most: beyond, the one
/// held longest settles at once (a flood of distinct missing names; a search walk tries a
/// handful).
pub const HELD_NAMES_MAX: usize = 256;

/// rcode values, as the DNS library defines them (its names are what records show).
const NOERROR: u8 = Rcode::NOERROR.to_int();
const SERVFAIL: u8 = Rcode::SERVFAIL.to_int();
const NXDOMAIN: u8 = Rcode::NXDOMAIN.to_int();
const REFUSED: u8 = Rcode::REFUSED.to_int();

/// Tracker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackConfig {
    /// No answer within this: `timeout` (glibc's default per try is 5 s).
    pub timeout: Duration,
    /// Answered slower than this: `slow`.
    pub slow: Duration,
    /// Queries in flight per socket cgroup (pod container) at most.
    pub per_pod: usize,
    /// Queries in flight in all at most.
    pub total: usize,
}

impl Default for TrackConfig {
    fn default() -> Self {
        TrackConfig {
            timeout: Duration::from_secs(5),
            slow: Duration::from_secs(1),
            per_pod: 1024,
            total: 16_384,
        }
    }
}

/// A failure whose repeats the kernel counts: what they stand for.
#[derive(Clone, Debug)]
struct Known {
    key: Key,
    protocol: Protocol,
    /// Drain intervals since its latest repeat.
    idle: u32,
    /// Stopped in the kernel, kept until repeats counted before that are drained.
    stopping: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    cgroup: u64,
    client: SocketAddr,
    server: SocketAddr,
    id: u16,
    qtype: u16,
    qname: Arc<str>,
}

#[derive(Clone, Debug)]
struct InFlight {
    first_ns: u64,
    last_ns: u64,
    protocol: Protocol,
    reached_server: bool,
    server_answered: bool,
    server_cgroup: Option<u64>,
    /// UDP: the query's hash as the kernel computes it, for counting repeats of its failure.
    question: Option<u64>,
}

/// NXDOMAINs of one name waiting for the rest of their search sequence (the same name, type,
/// client address and server are merged).
#[derive(Clone, Debug)]
struct HeldNx {
    key: Key,
    /// The first one's query and the latest one's answer.
    first_ns: u64,
    at_ns: u64,
    /// The latest one's latency.
    latency_ns: u64,
    protocol: Protocol,
    /// How many.
    count: u64,
    /// Their identity in the kernel's repeat counting (UDP).
    repeat: Option<RepeatKey>,
}

impl HeldNx {
    fn same_lookup(&self, other: &HeldNx) -> bool {
        self.key.qname == other.key.qname
            && self.key.qtype == other.key.qtype
            && self.key.server == other.key.server
            && self.key.client.ip() == other.key.client.ip()
            && self.protocol == other.protocol
    }
}

#[derive(Default)]
struct SearchGroup {
    held: Vec<HeldNx>,
    last_ns: u64,
}

/// The matcher.
pub struct Tracker {
    config: TrackConfig,
    inflight: HashMap<Key, InFlight>,
    /// Per cgroup, keys in the order they were sent (oldest first). Answered keys stay until
    /// they reach the front or the queue is compacted ([`Tracker::compact`]).
    order: HashMap<u64, VecDeque<Key>>,
    /// Per cgroup, how many of its queries are in flight (what the per-pod bound counts).
    live: HashMap<u64, usize>,
    /// (client address, id) -> key, to match what a server on this node saw.
    by_client: HashMap<(SocketAddr, u16), Key>,
    /// NXDOMAINs per (cgroup, client ip).
    search: HashMap<(u64, IpAddr), SearchGroup>,
    tallies: HashMap<u64, Tally>,
    /// Failures whose repeats the kernel counts.
    known: HashMap<RepeatKey, Known>,
    /// The NXDOMAIN ones among them, per cgroup (an answered name stops its expansions').
    nx_known: HashMap<u64, Vec<RepeatKey>>,
    /// Changes for the kernel not yet taken ([`Tracker::take_repeat_changes`]).
    changes: Vec<RepeatChange>,
    /// Queries that entered the in-flight table since start (resends not counted again).
    tracked: u64,
    counters: Arc<Counters>,
}

/// At most this many failures are counted in the kernel (its table's size).
pub const KNOWN_MAX: usize = triage_agent_common::DNS_REPEATABLE_ENTRIES as usize;

impl Tracker {
    pub fn new(config: TrackConfig, counters: Arc<Counters>) -> Tracker {
        Tracker {
            config,
            inflight: HashMap::new(),
            order: HashMap::new(),
            live: HashMap::new(),
            by_client: HashMap::new(),
            search: HashMap::new(),
            tallies: HashMap::new(),
            known: HashMap::new(),
            nx_known: HashMap::new(),
            changes: Vec::new(),
            tracked: 0,
            counters,
        }
    }

    /// Lookups of a cgroup the kernel matched and found answered well (NOERROR, not
    /// truncated, below the slow threshold): they join its counters.
    pub fn answered_in_kernel(
        &mut self,
        cgroup: u64,
        client_ip: IpAddr,
        lookups: u64,
        latency_sum: Duration,
        latency_max: Duration,
    ) {
        let t = self.tally(cgroup, client_ip);
        t.succeeded = t.succeeded.saturating_add(lookups);
        add_lookups(t, lookups, latency_sum, latency_max);
    }

    /// Queries in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Queries that entered the in-flight table since start (a resend is the same query).
    /// Each ends once: answered (a lookup in the tallies, or a `truncated_retry` finding),
    /// timed out (a lookup in the tallies), or evicted ([`Loss::DnsInflightEvicted`]).
    pub fn queries_tracked(&self) -> u64 {
        self.tracked
    }

    /// Takes in one packet; returns findings decided by it. `is_dns_port` tells which end is
    /// the server.
    pub fn packet(
        &mut self,
        c: &Captured<'_>,
        m: Message,
        is_dns_port: impl Fn(u16) -> bool,
    ) -> Vec<Finding> {
        let towards_server = is_dns_port(c.dst.port());
        match (c.side, m.response, towards_server) {
            // A query leaving the asking socket.
            (Side::Egress, false, true) => {
                self.query(c, m);
                Vec::new()
            }
            // An answer arriving at the asking socket.
            (Side::Ingress, true, false) => self.answer(c, m),
            // A query arriving at a server socket on this node.
            (Side::Ingress, false, true) => {
                if let Some(entry) = self.server_side(c.src, &m) {
                    entry.reached_server = true;
                    entry.server_cgroup = Some(c.cgroup_id);
                }
                Vec::new()
            }
            // An answer leaving a server socket on this node.
            (Side::Egress, true, false) => {
                if let Some(entry) = self.server_side(c.dst, &m) {
                    entry.server_answered = true;
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn server_side(&mut self, client: SocketAddr, m: &Message) -> Option<&mut InFlight> {
        let key = self.by_client.get(&(client, m.id))?;
        if *key.qname != *m.qname || key.qtype != m.qtype {
            return None;
        }
        self.inflight.get_mut(key)
    }

    fn query(&mut self, c: &Captured<'_>, m: Message) {
        let key = Key {
            cgroup: c.cgroup_id,
            client: c.src,
            server: c.dst,
            id: m.id,
            qtype: m.qtype,
            qname: m.qname,
        };
        let (reached_server, server_answered, server_cgroup) = match c.server {
            Some(s) => (s.cgroup.is_some(), s.answered, s.cgroup),
            None => (false, false, None),
        };
        if let Some(entry) = self.inflight.get_mut(&key) {
            entry.last_ns = entry.last_ns.max(c.boot_ns);
            entry.first_ns = entry.first_ns.min(c.boot_ns);
            entry.reached_server |= reached_server;
            entry.server_answered |= server_answered;
            entry.server_cgroup = entry.server_cgroup.or(server_cgroup);
            return;
        }
        let per_pod = self.live.get(&key.cgroup).copied().unwrap_or(0);
        if per_pod >= self.config.per_pod {
            self.evict_oldest(key.cgroup);
        } else if self.inflight.len() >= self.config.total
            && let Some(biggest) = self
                .live
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(cgroup, _)| *cgroup)
        {
            self.evict_oldest(biggest);
        }
        self.order
            .entry(key.cgroup)
            .or_default()
            .push_back(key.clone());
        *self.live.entry(key.cgroup).or_default() += 1;
        self.compact(key.cgroup);
        self.by_client.insert((key.client, key.id), key.clone());
        let question = (c.protocol == Protocol::Udp).then(|| question_hash(c));
        self.tracked += 1;
        self.inflight.insert(
            key,
            InFlight {
                first_ns: c.boot_ns,
                last_ns: c.boot_ns,
                protocol: c.protocol,
                reached_server,
                server_answered,
                server_cgroup,
                question,
            },
        );
    }

    fn evict_oldest(&mut self, cgroup: u64) {
        while let Some(key) = self.order.get_mut(&cgroup).and_then(VecDeque::pop_front) {
            if self.remove(&key).is_some() {
                self.counters.add(Loss::DnsInflightEvicted, 1);
                break;
            }
        }
        self.drop_empty(cgroup);
    }

    fn drop_empty(&mut self, cgroup: u64) {
        if self.order.get(&cgroup).is_some_and(VecDeque::is_empty) {
            self.order.remove(&cgroup);
        }
    }

    /// Drops the answered keys from a cgroup's order once they outnumber the live ones, so the
    /// order stays within about twice the bound however fast lookups are answered behind an
    /// unanswered one (amortised: each key is dropped once).
    fn compact(&mut self, cgroup: u64) {
        let live = self.live.get(&cgroup).copied().unwrap_or(0);
        let inflight = &self.inflight;
        if let Some(q) = self.order.get_mut(&cgroup)
            && q.len() > 2 * live + 64
        {
            q.retain(|k| inflight.contains_key(k));
        }
    }

    fn remove(&mut self, key: &Key) -> Option<InFlight> {
        let entry = self.inflight.remove(key)?;
        if let Some(n) = self.live.get_mut(&key.cgroup) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(&key.cgroup);
            }
        }
        if self.by_client.get(&(key.client, key.id)) == Some(key) {
            self.by_client.remove(&(key.client, key.id));
        }
        Some(entry)
    }

    fn tally(&mut self, cgroup: u64, client_ip: IpAddr) -> &mut DnsLookups {
        let t = self.tallies.entry(cgroup).or_insert_with(|| Tally {
            cgroup_id: cgroup,
            client_ip,
            lookups: DnsLookups::default(),
        });
        t.client_ip = client_ip;
        &mut t.lookups
    }

    fn answer(&mut self, c: &Captured<'_>, m: Message) -> Vec<Finding> {
        let key = Key {
            cgroup: c.cgroup_id,
            client: c.dst,
            server: c.src,
            id: m.id,
            qtype: m.qtype,
            qname: m.qname,
        };
        // Unknown: asked before the agent started, evicted, or already timed out.
        let Some(entry) = self.remove(&key) else {
            return Vec::new();
        };
        let latency = Duration::from_nanos(c.boot_ns.saturating_sub(entry.first_ns));
        let server_cgroup = entry.server_cgroup;
        let finding = |outcome, rcode| Finding {
            outcome,
            at_ns: c.boot_ns,
            first_ns: entry.first_ns,
            cgroup_id: key.cgroup,
            client: key.client,
            server: key.server,
            protocol: entry.protocol,
            query: key.qname.clone(),
            qtype: key.qtype,
            rcode,
            latency: Some(latency),
            reached_server: None,
            server_answered: false,
            server_cgroup,
            search_nxdomains: 0,
            count: 1,
        };
        // A truncated UDP answer: the resolver asks again over TCP, which is the lookup.
        if m.truncated && c.protocol == Protocol::Udp {
            return vec![finding(DnsOutcome::TruncatedRetry, Some(m.rcode))];
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let slow = latency >= self.config.slow;
        {
            let t = self.tally(key.cgroup, key.client.ip());
            t.lookups += 1;
            if m.rcode == NOERROR {
                t.succeeded += 1;
            } else {
                t.failed += 1;
            }
            if slow {
                t.slow += 1;
            }
            t.latency_sum_us = t.latency_sum_us.saturating_add(us);
            t.latency_max_us = t.latency_max_us.max(us);
        }
        // A failure the kernel can count the repeats of (UDP, answered before the slow
        // threshold: what the kernel matches itself).
        let repeat = entry
            .question
            .filter(|_| m.rcode != NOERROR && !slow)
            .map(|question| RepeatKey {
                cgroup: key.cgroup,
                question,
                rcode: m.rcode,
            });
        let mut out = Vec::new();
        match m.rcode {
            NXDOMAIN => {
                return self.hold_nx(
                    HeldNx {
                        key,
                        first_ns: entry.first_ns,
                        at_ns: c.boot_ns,
                        latency_ns: c.boot_ns.saturating_sub(entry.first_ns),
                        protocol: entry.protocol,
                        count: 1,
                        repeat,
                    },
                    false,
                );
            }
            NOERROR => {
                self.stop_expansions_of(&key);
                if let Some(folded) = self.fold_search(&key, c.boot_ns, entry.protocol) {
                    out.push(folded);
                }
                if slow {
                    out.push(finding(DnsOutcome::Slow, Some(m.rcode)));
                }
            }
            SERVFAIL => out.push(finding(DnsOutcome::Servfail, Some(m.rcode))),
            REFUSED => out.push(finding(DnsOutcome::Refused, Some(m.rcode))),
            other => out.push(finding(DnsOutcome::Error, Some(other))),
        }
        // Reported: its repeats are counted in the kernel from now on.
        if let Some(repeat) = repeat {
            self.count_in_kernel(repeat, &key, entry.protocol);
        }
        out
    }

    /// Holds an NXDOMAIN in its client's search group, merged with earlier ones of the same
    /// lookup. A name answered NXDOMAIN [`NX_REPEATS_TO_COUNT`] times (one by one, not
    /// `from_kernel`) with nothing folding it is a flood of a missing name: its repeats are
    /// counted in the kernel from then on. Returns what settles to make room.
    /// An answered name: the kernel stops counting NXDOMAINs of its client that are its
    /// expansions (they are a search walk's, and must come up to be folded).
    /// Asks the kernel to count this failure's repeats (once; within [`KNOWN_MAX`]).
    /// Stops counting a failure's repeats in the kernel: they are part of search walks.
    /// Changes for the kernel's repeat counting since the last call, in order.
    /// Repeats of a reported failure the kernel counted in one drain interval: they join the
    /// pod's counters and its evidence as if each had come up alone.
    /// Once per drain interval, after the kernel's repeats: failures without repeats for
    /// `REPEAT_IDLE_DRAINS` intervals stop being counted there, and stopped ones are
    /// forgotten once nothing counted before the stop can still arrive.
    /// An answered name ends the search sequence of its client: its held NXDOMAINs for related
    /// names become one `search_expansion` finding.
    /// Periodic: timeouts and settled search groups. `now_ns`: CLOCK_BOOTTIME now.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Finding> {
        let mut out = Vec::new();
        let timeout = crate::kernel::ns(self.config.timeout);
        let cgroups: Vec<u64> = self.order.keys().copied().collect();
        for cgroup in cgroups {
            let mut resent = Vec::new();
            while let Some(front) = self.order.get(&cgroup).and_then(|q| q.front()).cloned() {
                let Some(entry) = self.inflight.get(&front) else {
                    // Answered or evicted: its place in the order is stale.
                    self.order.get_mut(&cgroup).map(VecDeque::pop_front);
                    continue;
                };
                if now_ns.saturating_sub(entry.first_ns) < timeout {
                    break;
                }
                self.order.get_mut(&cgroup).map(VecDeque::pop_front);
                if now_ns.saturating_sub(entry.last_ns) < timeout {
                    // Resent since: its deadline runs from the resend.
                    resent.push(front);
                    continue;
                }
                let Some(entry) = self.remove(&front) else {
                    continue;
                };
                let t = self.tally(cgroup, front.client.ip());
                t.lookups += 1;
                t.timeouts += 1;
                out.push(Finding {
                    outcome: DnsOutcome::Timeout,
                    at_ns: now_ns,
                    first_ns: entry.first_ns,
                    cgroup_id: cgroup,
                    client: front.client,
                    server: front.server,
                    protocol: entry.protocol,
                    query: front.qname.clone(),
                    qtype: front.qtype,
                    rcode: None,
                    latency: Some(Duration::from_nanos(now_ns.saturating_sub(entry.first_ns))),
                    reached_server: Some(entry.reached_server),
                    server_answered: entry.server_answered,
                    server_cgroup: entry.server_cgroup,
                    search_nxdomains: 0,
                    count: 1,
                });
            }
            if !resent.is_empty() {
                let q = self.order.entry(cgroup).or_default();
                q.extend(resent);
            }
            self.drop_empty(cgroup);
        }
        let hold = crate::kernel::ns(SEARCH_HOLD);
        let group_keys: Vec<(u64, IpAddr)> = self.search.keys().copied().collect();
        for group_key in group_keys {
            let Some(group) = self.search.get_mut(&group_key) else {
                continue;
            };
            let cgroup = group_key.0;
            let quiet = now_ns.saturating_sub(group.last_ns) >= hold;
            let in_flight: Vec<Arc<str>> = self
                .order
                .get(&cgroup)
                .map(|q| {
                    q.iter()
                        .filter(|k| self.inflight.contains_key(*k))
                        .map(|k| k.qname.clone())
                        .collect()
                })
                .unwrap_or_default();
            // Settled: held past the hold with no lookup in flight that could end its walk
            // (a name it is an expansion of), or past the timeout. A group quiet for the hold
            // with nothing in flight settles whole, as do the names related to a settled one
            // (one walk's expansions are reported together).
            let related = |a: &str, b: &str| a == b || expansion_of(a, b) || expansion_of(b, a);
            let mut ripe: Vec<bool> = group
                .held
                .iter()
                .map(|h| {
                    // Quiet: no NXDOMAIN for it or a related name within the hold.
                    let latest = group
                        .held
                        .iter()
                        .filter(|o| related(&h.key.qname, &o.key.qname))
                        .map(|o| o.at_ns)
                        .fold(h.at_ns, u64::max);
                    quiet && in_flight.is_empty()
                        || now_ns.saturating_sub(h.first_ns) >= timeout
                        || now_ns.saturating_sub(latest) >= hold
                            && !in_flight.iter().any(|q| expansion_of(&h.key.qname, q))
                })
                .collect();
            let ripe_names: Vec<Arc<str>> = group
                .held
                .iter()
                .zip(&ripe)
                .filter(|(_, r)| **r)
                .map(|(h, _)| h.key.qname.clone())
                .collect();
            for (h, r) in group.held.iter().zip(ripe.iter_mut()) {
                *r = *r || ripe_names.iter().any(|other| related(&h.key.qname, other));
            }
            if !ripe.iter().any(|r| *r) {
                continue;
            }
            let mut settled = Vec::new();
            let mut keep = Vec::new();
            for (h, r) in group.held.drain(..).zip(ripe) {
                if r { settled.push(h) } else { keep.push(h) }
            }
            group.held = keep;
            if group.held.is_empty() {
                self.search.remove(&group_key);
            }
            out.extend(nxdomain_findings(settled));
        }
        out
    }

    /// Takes the success counters gathered since the last call.
    pub fn take_tallies(&mut self) -> Vec<Tally> {
        self.tallies.drain().map(|(_, t)| t).collect()
    }
}

/// Lookups counted together (in the kernel), with their latencies' sum and maximum.
fn add_lookups(t: &mut DnsLookups, lookups: u64, latency_sum: Duration, latency_max: Duration) {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    t.lookups = t.lookups.saturating_add(lookups);
    t.latency_sum_us = t.latency_sum_us.saturating_add(us(latency_sum));
    t.latency_max_us = t.latency_max_us.max(us(latency_max));
}

/// [`dns_question_hash`] of a captured query, as the kernel computes it for the query it held.
fn question_hash(c: &Captured<'_>) -> u64 {
    let (family, server) = match c.dst.ip() {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (AF_INET, b)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    };
    dns_question_hash(c.payload, &server, c.dst.port(), family)
}

mod repeats;
mod search;

use search::{expansion_of, nxdomain_findings};
#[cfg(test)]
mod tests;
