//! The socket cgroups the kernel has seen in each network namespace (`NETNS_CGROUPS`, learned
//! at connect(), see agent-ebpf/src/conn.rs): a dropped packet that entered from a namespace
//! is credited to the pod those cgroups belong to (attribution decides), not to whoever its
//! source address names.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use triage_agent_common::NetnsCgroups;

use crate::event::RawEvent;

/// How long an answer is reused: a namespace gains cgroups (another container of the pod, a
/// host process in the node's namespace), and a dead pod's number is reused.
const KEEP: Duration = Duration::from_secs(1);
/// Namespaces remembered at most (cleared when reached).
const CAPACITY: usize = 4096;

/// Reads of the kernel's map, one namespace at a time, kept for [`KEEP`].
pub struct NetnsIndex {
    map: BpfHashMap<MapData, u32, NetnsCgroups>,
    known: HashMap<u32, (Vec<u64>, Instant)>,
}

impl NetnsIndex {
    pub fn new(map: BpfHashMap<MapData, u32, NetnsCgroups>) -> Self {
        NetnsIndex {
            map,
            known: HashMap::new(),
        }
    }

    /// Fills in the cgroups of a dropped packet's ingress namespace.
    pub fn fill(&mut self, event: &mut RawEvent) {
        let RawEvent::Flow(f) = event else { return };
        let Some(netns) = f.ingress_netns else { return };
        if let Some((cgroups, at)) = self.known.get(&netns)
            && !cgroups.is_empty()
            && at.elapsed() < KEEP
        {
            f.ingress_cgroups = cgroups.clone();
            return;
        }
        let cgroups = self.map.get(&netns, 0).map_or_else(|_| Vec::new(), cgroups);
        if self.known.len() >= CAPACITY {
            self.known.clear();
        }
        self.known.insert(netns, (cgroups.clone(), Instant::now()));
        f.ingress_cgroups = cgroups;
    }
}

/// The cgroups an entry names.
fn cgroups(seen: NetnsCgroups) -> Vec<u64> {
    [seen.first, seen.other]
        .into_iter()
        .filter(|c| *c != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_names_its_cgroups() {
        let both = NetnsCgroups {
            first: 10,
            other: 11,
        };
        assert_eq!(cgroups(both), vec![10, 11]);
        let one = NetnsCgroups {
            first: 10,
            other: 0,
        };
        assert_eq!(cgroups(one), vec![10]);
    }
}
