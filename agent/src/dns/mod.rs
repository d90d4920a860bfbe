//! DNS evidence: every lookup of every pod, matched to its answer.
//!
//! ```text
//! cgroup_skb egress/ingress on the pods' cgroup (kubepods)
//!   UDP, answered well --> counted per cgroup in the kernel --(drained each second)--> tallies
//!   anything else --DNS ring--> run(): packet::decode, packet::parse (domain)
//!       --> track::Tracker --findings, lookup counters--> attribution
//!   queries unanswered past the handover age --(taken from the kernel's table)--> Tracker
//! ```
//! The kernel holds each UDP query (its first 288 payload bytes and the socket's cgroup) until
//! the answer: a good one (NOERROR, not truncated, below the slow threshold) is counted there;
//! otherwise the query and its answer come up through the ring, as do TCP, resends and what the
//! kernel could not hold (`probes::dns_maps` reads its tables). [`packet`] reads the header and question
//! with the `domain` crate; [`track`] matches answers to queries and decides outcomes.
//! Failures and slow answers become `dns` evidence; successes only feed the pod's counters.
//! Every packet that cannot be used is counted ([`Loss::DnsRingFull`] in the kernel,
//! [`Loss::DnsMalformed`] here), as is every query the bounded in-flight table had to give up
//! ([`Loss::DnsInflightEvicted`]) and every good answer the kernel could not count
//! ([`Loss::DnsAnsweredFull`]).

pub mod packet;
pub mod track;

#[cfg(feature = "node-agent")]
mod task;

use tracing::debug;

#[cfg(feature = "node-agent")]
pub use task::{DnsError, run};
pub use track::{TrackConfig, Tracker};

use crate::{
    event::Finding,
    loss::{Counters, Loss},
};

/// The default DNS port.
pub const DEFAULT_PORT: u16 = 53;
/// Settings of DNS capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Ports whose UDP and TCP traffic is DNS (empty: off).
    pub ports: Vec<u16>,
    pub track: TrackConfig,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            ports: vec![DEFAULT_PORT],
            track: TrackConfig::default(),
        }
    }
}

/// How long a UDP query may wait in the kernel before the agent takes it over (then its answer,
/// or its timeout, is decided here): the slow threshold, at most half of the search hold (so
/// the final query of a search-path walk is in flight here before the walk's held NXDOMAINs
/// settle) and half of the timeout.
pub fn handover_age(track: &TrackConfig) -> std::time::Duration {
    track
        .slow
        .min(track::SEARCH_HOLD / 2)
        .min(track.timeout / 2)
}

/// How long a kernel slot the agent took a query from keeps sending that lookup's resends and
/// answer to the agent: two timeouts, the span of a resolver's usual two tries (glibc's
/// `attempts:2`; musl resends within one). Held in the kernel instead, a resend would be
/// matched there while the tracker waits for the first send's answer and reports a timeout
/// for a lookup that succeeded.
pub fn agent_keeps(track: &TrackConfig) -> std::time::Duration {
    track.timeout.saturating_mul(2)
}

/// The thresholds the kernel applies when it matches a UDP answer itself: answers at least as
/// late as the slow threshold go up, and so do a cgroup's answers for a timeout's length after
/// one of its lookups failed (the rest of a search-path walk, which the tracker folds).
pub fn kernel_timing(track: &TrackConfig) -> triage_agent_common::DnsTiming {
    triage_agent_common::DnsTiming {
        slow_ns: crate::kernel::ns(track.slow),
        recent_ns: crate::kernel::ns(track.timeout.max(track::SEARCH_HOLD)),
    }
}

/// One ring record through decoding, parsing and the tracker; every failure counted.
pub fn handle(
    record: &[u8],
    tracker: &mut Tracker,
    counters: &Counters,
    is_dns_port: &impl Fn(u16) -> bool,
) -> Vec<Finding> {
    let captured = match packet::decode(record) {
        Ok(c) => c,
        Err(error) => {
            counters.add(Loss::DecodeErrors, 1);
            debug!(%error, "undecodable DNS record");
            return Vec::new();
        }
    };
    if captured.truncated() {
        counters.add(Loss::DnsTruncated, 1);
    }
    match packet::parse(captured.protocol, captured.payload) {
        Ok(message) => tracker.packet(&captured, message, is_dns_port),
        Err(packet::PacketError::NoMessage) => Vec::new(),
        Err(error) => {
            counters.add(Loss::DnsMalformed, 1);
            debug!(%error, src = %captured.src, dst = %captured.dst, "unparsable DNS payload");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::evidence::Protocol;

    /// Random bytes through the whole path (as a record, and as the payload of well-formed
    /// records from both sides): counted, never a panic. The fuzz target does the same at
    /// length (fuzz/fuzz_targets/dns_packet.rs).
    #[test]
    fn any_bytes_are_counted_never_a_panic() {
        let counters = Arc::new(Counters::default());
        let mut tracker = Tracker::new(TrackConfig::default(), counters.clone());
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..3000u64 {
            let len = (round % 400) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = handle(&bytes, &mut tracker, &counters, &|p| p == 53);
            let record = packet::encode(&packet::Captured {
                boot_ns: round,
                cgroup_id: 7,
                side: if round % 2 == 0 {
                    packet::Side::Egress
                } else {
                    packet::Side::Ingress
                },
                protocol: if round % 3 == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                },
                src: "10.0.0.1:40000".parse().unwrap_or(([0, 0, 0, 0], 0).into()),
                dst: "10.96.0.10:53".parse().unwrap_or(([0, 0, 0, 0], 0).into()),
                wire_len: len as u32,
                payload: &bytes,
                server: (round % 5 == 0).then_some(packet::ServerSide {
                    cgroup: Some(9),
                    answered: round % 2 == 0,
                }),
            });
            let _ = handle(&record, &mut tracker, &counters, &|p| p == 53);
        }
        let _ = tracker.tick(u64::MAX / 2);
        assert!(counters.get(Loss::DnsMalformed) > 0);
        assert!(counters.get(Loss::DecodeErrors) > 0);
        assert_eq!(tracker.in_flight(), 0);
    }
}
