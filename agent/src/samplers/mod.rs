//! Samplers: evidence that comes from polling cgroupfs rather than from eBPF: CPU throttling
//! counters, and OOM kill counters (the source of truth for OOM kills, and the fallback when
//! the kernel event is unavailable). The sampler runs on its own thread ([`task`]), reads
//! files on a tick and sends [`Sample`]s into the same attribution channel as the ring buffer
//! reader ([`crate::attribute::AttributeInputs::events`]), with `try_send` and a counted loss
//! ([`crate::loss::Loss::PipelineFull`]) when it is full, exactly like the reader.
//!
//! Containers are found from pod metadata (attribution publishes each live pod's UID and
//! container IDs) plus kubelet's cgroup layout ([`layout`]: both drivers, v1 and v2): a pod's
//! cgroup directory is looked up once among the few places kubelet can put it, and listed once
//! to find its containers; no tree walk per interval. Files stay open and are re-read at offset
//! 0 into one reused buffer ([`cgroupfs`]): a sample costs one `pread` per file and allocates
//! nothing.

pub mod cgroupfs;
pub mod layout;
pub mod sampler;
#[cfg(feature = "node-agent")]
pub mod task;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::evidence::CpuThrottling;

/// How often containers are sampled by default: throttling is reported per interval, so this
/// is also the finest time resolution of a throttling record; 10 s keeps a node of 1,000
/// containers under a millisecond of CPU per second.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Throttled CFS periods in one interval from which a container is reported, by default: 10
/// periods are one second of throttling at the default 100 ms period, in a 10 s interval.
pub const DEFAULT_THROTTLE_THRESHOLD: u64 = 10;

/// cgroup2 ids of the containers the sampler found, with their paths: a kernel event about a
/// process of a container that is already gone (a main process OOM-killed: the runtime
/// removes the cgroup right after) still resolves, without waiting for a walk of the tree
/// that would no longer find it. cgroup2 ids are 64-bit kernfs ids, never reused; the map is
/// bounded by [`KNOWN_CGROUPS_CAPACITY`] (cleared when full; live containers are re-added at
/// their next discovery).
#[derive(Clone, Debug, Default)]
pub struct KnownCgroups(Arc<Mutex<HashMap<u64, String>>>);

/// Bound on [`KnownCgroups`].
pub const KNOWN_CGROUPS_CAPACITY: usize = 65_536;

impl KnownCgroups {
    pub fn insert(&self, id: u64, path: String) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= KNOWN_CGROUPS_CAPACITY {
            m.clear();
        }
        m.insert(id, path);
    }
    pub fn get(&self, id: u64) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}

/// A container, as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerRef {
    pub pod_uid: Arc<str>,
    /// Without runtime prefix, lowercase.
    pub container_id: Arc<str>,
}

/// A live pod of this node and its containers' IDs, as attribution knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainers {
    pub uid: Arc<str>,
    pub container_ids: Vec<Arc<str>>,
}

/// What the OOM kill counter of a container said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomCounts {
    pub container: ContainerRef,
    /// Kills since the previous sample.
    pub kills: u64,
    /// v2 `oom_group_kill` growth: the whole group was killed that many times.
    pub group_kills: u64,
    /// The memory limit (`None`: unlimited or unreadable), bytes.
    pub limit_bytes: Option<u64>,
    /// The peak usage (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`), else current usage.
    pub usage_bytes: Option<u64>,
    /// v2 `memory.oom.group`.
    pub group: Option<bool>,
}

/// What a sampler found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sample {
    /// A container's OOM kill counter grew.
    OomKills(OomCounts),
    /// A container was throttled at or above the threshold during one interval.
    Throttled {
        container: ContainerRef,
        throttling: CpuThrottling,
    },
}

impl Sample {
    /// Occurrences it stands for.
    pub fn count(&self) -> u64 {
        match self {
            Sample::OomKills(o) => o.kills.max(1),
            Sample::Throttled { .. } => 1,
        }
    }

    pub fn container(&self) -> &ContainerRef {
        match self {
            Sample::OomKills(o) => &o.container,
            Sample::Throttled { container, .. } => container,
        }
    }
}

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
