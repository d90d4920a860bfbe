//! DNS evidence: every lookup of every pod, matched to its answer in userspace.
//!
//! ```text
//! cgroup_skb egress/ingress on the cgroup2 root --DNS ring--> run(): packet::decode,
//!   packet::parse (domain) --> track::Tracker --findings, lookup counters--> attribution
//! ```
//! The kernel copies the first 288 bytes of each DNS payload (UDP or TCP on the configured
//! ports) with the socket's cgroup; [`packet`] reads the header and question with the `domain`
//! crate; [`track`] matches answers to queries and decides outcomes. Failures and slow answers
//! become `dns` evidence; successes only feed the pod's counters. Every packet that cannot be
//! used is counted ([`Loss::DnsRingFull`] in the kernel, [`Loss::DnsMalformed`] here), as is
//! every query the bounded in-flight table had to give up ([`Loss::DnsInflightEvicted`]).

pub mod packet;
pub mod track;

#[cfg(feature = "node-agent")]
mod task;

use tracing::debug;

#[cfg(feature = "node-agent")]
pub use task::{DnsError, run};
pub use track::{Finding, Tally, TrackConfig, Tracker};

use crate::loss::{Counters, Loss};

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
