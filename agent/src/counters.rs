//! Loss and throughput counters shared by the pipeline's tasks. Every way evidence can be lost
//! has a counter here (or in the kernel's LOSS map), and Status reports all of them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Userspace counters, cumulative since start. Relaxed atomics: they are statistics.
#[derive(Debug, Default)]
pub struct Counters {
    events_received: AtomicU64,
    decode_errors: AtomicU64,
    pipeline_full: AtomicU64,
    attribution_expired: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub events_received: u64,
    pub decode_errors: u64,
    pub pipeline_full: u64,
    pub attribution_expired: u64,
}

impl Counters {
    pub fn add_events_received(&self, n: u64) {
        self.events_received.fetch_add(n, Relaxed);
    }
    pub fn add_decode_errors(&self, n: u64) {
        self.decode_errors.fetch_add(n, Relaxed);
    }
    pub fn add_pipeline_full(&self, n: u64) {
        self.pipeline_full.fetch_add(n, Relaxed);
    }
    pub fn add_attribution_expired(&self, n: u64) {
        self.attribution_expired.fetch_add(n, Relaxed);
    }
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            events_received: self.events_received.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            pipeline_full: self.pipeline_full.load(Relaxed),
            attribution_expired: self.attribution_expired.load(Relaxed),
        }
    }
}
