//! The kernel's counting of repeated DNS failures, as the DNS maps and the tracker both see it:
//! which failures the kernel counts ([`RepeatChange`]) and what it counted ([`Repeated`]).

use std::time::Duration;

/// A failed lookup's identity in the kernel's repeat counting ([`triage_agent_common::DnsRepeatKey`]):
/// the asking cgroup, the hash of the query as sent and of its server, and the rcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RepeatKey {
    pub cgroup: u64,
    pub question: u64,
    pub rcode: u8,
}

/// Repeats of one failure the kernel counted in one drain interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeated {
    pub key: RepeatKey,
    pub count: u64,
    pub latency_sum: Duration,
    pub latency_max: Duration,
    /// When the first and the latest were answered (CLOCK_BOOTTIME).
    pub first_ns: u64,
    pub last_ns: u64,
}

/// What the tracker asks of the kernel's repeat counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepeatChange {
    /// Count this failure's repeats in the kernel from now on.
    Count(RepeatKey),
    /// Send them up one by one again.
    Stop(RepeatKey),
}
