//! What the cgroupfs samplers ([`crate::samplers`]) found.

use crate::{cgroup::ContainerRef, evidence::CpuThrottling};

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
