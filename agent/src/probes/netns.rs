//! Which socket cgroups the kernel has seen in each network namespace (`CGROUP_NETNS`, learned
//! at connect(), see agent-ebpf/src/conn.rs): a dropped packet that entered from a namespace
//! is credited to the pod those cgroups belong to (attribution decides), not to whoever its
//! source address names.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};

use crate::event::RawEvent;

/// How often a namespace the index does not know makes it read the map again, at most.
const REREAD_ON_MISS: Duration = Duration::from_millis(250);
/// How often the index is read again anyway: a namespace gains cgroups (another container of
/// the pod, or host processes in the node's namespace), and a dead pod's number is reused.
const REREAD: Duration = Duration::from_secs(2);

/// The kernel's cgroup -> namespace map, read into namespace -> cgroups.
pub struct NetnsIndex {
    map: BpfHashMap<MapData, u64, u32>,
    by_netns: HashMap<u32, Vec<u64>>,
    read_at: Option<Instant>,
}

impl NetnsIndex {
    pub fn new(map: BpfHashMap<MapData, u64, u32>) -> Self {
        NetnsIndex {
            map,
            by_netns: HashMap::new(),
            read_at: None,
        }
    }

    /// Fills in the cgroups of a dropped packet's ingress namespace.
    pub fn fill(&mut self, event: &mut RawEvent) {
        let RawEvent::Flow(f) = event else { return };
        let Some(netns) = f.ingress_netns else { return };
        let since = self.read_at.map(|t| t.elapsed());
        let stale = since.is_none_or(|s| s >= REREAD)
            || (!self.by_netns.contains_key(&netns) && since.is_none_or(|s| s >= REREAD_ON_MISS));
        if stale {
            self.read();
        }
        f.ingress_cgroups = self.by_netns.get(&netns).cloned().unwrap_or_default();
    }

    fn read(&mut self) {
        self.by_netns = index(self.map.iter().filter_map(Result::ok));
        self.read_at = Some(Instant::now());
    }
}

/// namespace -> cgroups, from (cgroup, namespace) pairs.
fn index(pairs: impl Iterator<Item = (u64, u32)>) -> HashMap<u32, Vec<u64>> {
    let mut by_netns: HashMap<u32, Vec<u64>> = HashMap::new();
    for (cgroup, netns) in pairs {
        by_netns.entry(netns).or_default().push(cgroup);
    }
    by_netns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_list_every_cgroup_seen_in_them() {
        let by = index([(10, 7), (11, 7), (12, 8)].into_iter());
        let mut seven = by[&7].clone();
        seven.sort_unstable();
        assert_eq!(seven, vec![10, 11]);
        assert_eq!(by[&8], vec![12]);
    }
}
