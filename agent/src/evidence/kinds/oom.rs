//! Processes the OOM killer chose.

use serde_json::{Map, Value};

use super::KindDetail;
use crate::evidence::{DetailKey, Kind, OomSource};

/// A process killed by the OOM killer. The record's `process` is the victim (absent when only
/// the cgroup counter saw the kill).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomKill {
    /// Whether the victim was the container's first process (the one Kubernetes watches), when
    /// that can be known. `false`: a child died and Kubernetes reports nothing.
    pub main_process: Option<bool>,
    /// The memory limit that applied (the tightest of the cgroup and its parents), bytes.
    pub memory_limit_bytes: Option<u64>,
    /// The cgroup's memory usage at the kill, bytes.
    pub memory_usage_bytes: Option<u64>,
    /// The victim's resident memory (anon + file + shmem) when the kernel chose it, bytes.
    pub victim_rss_bytes: Option<u64>,
    pub oom_score_adj: Option<i16>,
    /// v2 `memory.oom.group`: the whole container was killed with the victim.
    pub group_kill: Option<bool>,
    pub source: OomSource,
}

impl KindDetail for OomKill {
    fn key(&self) -> DetailKey {
        DetailKey::OomKill {
            main_process: self.main_process,
        }
    }

    fn absorb(&mut self, later: Self) {
        // A victim named once stays named.
        let source = if self.source == OomSource::Kernel {
            self.source
        } else {
            later.source
        };
        *self = OomKill {
            main_process: later.main_process.or(self.main_process),
            memory_limit_bytes: later.memory_limit_bytes.or(self.memory_limit_bytes),
            memory_usage_bytes: later.memory_usage_bytes.or(self.memory_usage_bytes),
            victim_rss_bytes: later.victim_rss_bytes.or(self.victim_rss_bytes),
            oom_score_adj: later.oom_score_adj.or(self.oom_score_adj),
            group_kill: later.group_kill.or(self.group_kill),
            source,
        };
    }

    fn json_fields(&self, _: Kind, out: &mut Map<String, Value>) {
        out.insert("main_process".into(), self.main_process.into());
        out.insert("memory_limit_bytes".into(), self.memory_limit_bytes.into());
        out.insert("memory_usage_bytes".into(), self.memory_usage_bytes.into());
        out.insert("victim_rss_bytes".into(), self.victim_rss_bytes.into());
        out.insert("oom_score_adj".into(), self.oom_score_adj.into());
        out.insert("group_kill".into(), self.group_kill.into());
        out.insert("source".into(), self.source.as_str().into());
    }
}
