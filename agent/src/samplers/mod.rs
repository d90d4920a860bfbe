//! Samplers: evidence that comes from polling cgroupfs rather than from eBPF: CPU throttling
//! counters, and OOM kill counters (the source of truth for OOM kills, and the fallback when
//! the kernel event is unavailable). The sampler runs on its own thread ([`task`]), reads
//! files on a tick and sends [`crate::event::Sample`]s into the same attribution channel as the ring buffer
//! reader ([`crate::attribute::AttributeInputs::events`]), with `try_send` and a counted loss
//! ([`crate::loss::Loss::PipelineFull`]) when it is full, exactly like the reader.
//!
//! Containers are found from pod metadata (attribution publishes each live pod's UID and
//! container IDs) plus kubelet's cgroup layout ([`crate::cgroup::layout`]: both drivers, v1 and v2): a pod's
//! cgroup directory is looked up once among the few places kubelet can put it, and listed once
//! to find its containers; no tree walk per interval. Files stay open and are re-read at offset
//! 0 into one reused buffer ([`cgroupfs`]): a sample costs one `pread` per file and allocates
//! nothing.

pub mod cgroupfs;
pub mod sampler;
#[cfg(feature = "node-agent")]
pub mod task;

use std::time::Duration;

/// How often containers are sampled by default: throttling is reported per interval, so this
/// is also the finest time resolution of a throttling record; 10 s keeps a node of 1,000
/// containers under a millisecond of CPU per second.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Throttled CFS periods in one interval from which a container is reported, by default: 10
/// periods are one second of throttling at the default 100 ms period, in a 10 s interval.
pub const DEFAULT_THROTTLE_THRESHOLD: u64 = 10;

/// Where each signal is read on this node, and how many containers are sampled (Status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SamplerStatus {
    pub sources: Vec<SignalSource>,
    pub containers: u32,
    pub open_files: u32,
    pub read_errors: u64,
    pub gone: u64,
}

/// One signal's source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignalSource {
    pub signal: &'static str,
    pub hierarchy: &'static str,
    pub files: Vec<String>,
    pub mount: String,
    pub note: String,
}
