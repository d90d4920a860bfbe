//! The events producers hand to attribution: what the kernel programs, the DNS matcher and the
//! cgroupfs samplers found, before it is known which pod it is about. Producers
//! ([`crate::probes`], [`crate::dns`], [`crate::samplers`]) and attribution ([`crate::attribute`])
//! both import this module; no producer imports attribution.

pub mod dns;
pub mod flow;
pub mod sample;

use std::time::SystemTime;

pub use dns::{Finding, Tally};
pub use flow::{Flow, FlowKind, OomVictim, TaskInfo};
pub use sample::{OomCounts, Sample};

/// A decoded kernel event (or a cgroupfs sampler's finding), before attribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    /// One or more occurrences of a hot signal's flow.
    Flow(Flow),
    /// A failed or slow DNS lookup, matched in userspace ([`crate::dns`]).
    Dns(Box<Finding>),
    /// A pod's successful DNS lookups since the last report.
    DnsLookups(Tally),
    /// The OOM killer chose a victim.
    OomVictim(OomVictim),
    /// What the kernel lost of one cgroup's evidence in a drain interval (its share of a table
    /// or ring was used up, or the table was full).
    CgroupLosses(CgroupLosses),
    /// What a cgroupfs sampler found (throttling, OOM kill counters); its time is the sample's.
    Sample(Sample),
}

impl RawEvent {
    /// CLOCK_BOOTTIME nanoseconds of the latest occurrence (0 for samples, which carry
    /// wall-clock times).
    pub fn boot_ns(&self) -> u64 {
        match self {
            RawEvent::Flow(f) => f.last_ns,
            RawEvent::Dns(d) => d.at_ns,
            RawEvent::OomVictim(o) => o.boot_ns,
            RawEvent::DnsLookups(_) | RawEvent::CgroupLosses(_) => 0,
            RawEvent::Sample(_) => 0,
        }
    }

    /// CLOCK_BOOTTIME nanoseconds of the earliest occurrence.
    pub fn first_boot_ns(&self) -> u64 {
        match self {
            RawEvent::Flow(f) => f.first_ns,
            RawEvent::Dns(d) => d.first_ns,
            _ => self.boot_ns(),
        }
    }

    /// Occurrences the event stands for (what is lost if it is dropped).
    pub fn count(&self) -> u64 {
        match self {
            RawEvent::Flow(f) => f.count,
            RawEvent::Dns(d) => d.count.max(1),
            RawEvent::DnsLookups(t) => t.lookups.lookups,
            RawEvent::OomVictim(_) => 1,
            RawEvent::Sample(s) => s.count(),
            // Losses the node-wide counters already have: dropping this loses only which pod
            // they were, one event.
            RawEvent::CgroupLosses(_) => 1,
        }
    }
}

/// What the kernel lost of one cgroup's evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLosses {
    pub cgroup_id: u64,
    pub losses: crate::evidence::PodLosses,
}

/// A decoded event with its wall-clock times (latest and earliest occurrence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedEvent {
    pub at: SystemTime,
    pub first_at: SystemTime,
    pub event: RawEvent,
}

/// A producer's error that only says its consumer (attribution) is gone: at shutdown, once
/// attribution has drained, that is how a producer ends, not a failure.
pub trait ConsumerGone {
    fn consumer_gone(&self) -> bool;
}
