//! Everything about cgroups in one place: parsing kubelet's cgroup paths ([`path`]), finding a
//! cgroup's path from its id ([`ids`]), the hierarchies of this node and the containers in them
//! ([`layout`]), and the containers the agent knows about.

#[cfg(feature = "node-agent")]
pub mod ids;
pub mod layout;
pub mod path;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Bound on [`KnownCgroups`].
pub const KNOWN_CGROUPS_CAPACITY: usize = 65_536;

/// cgroup2 ids of the containers the sampler found, with their paths: a kernel event about a
/// process of a container that is already gone (a main process OOM-killed: the runtime
/// removes the cgroup right after) still resolves, without waiting for a walk of the tree
/// that would no longer find it. cgroup2 ids are 64-bit kernfs ids, never reused; the map is
/// bounded by [`KNOWN_CGROUPS_CAPACITY`] (cleared when full; live containers are re-added at
/// their next discovery).
#[derive(Clone, Debug, Default)]
pub struct KnownCgroups(Arc<Mutex<HashMap<u64, String>>>);

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

/// The answer to "which cgroup has this id".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathLookup {
    Found(String),
    /// No such cgroup (any more).
    Missing,
    /// Not known yet (a walk of the tree is under way): ask again later.
    Pending,
}

/// Finds the path of a cgroup (v2) by id, never blocking. Implemented on the real cgroupfs by
/// `cgroup_ids`; by maps in tests.
pub trait CgroupPaths: Send {
    fn path(&mut self, id: u64) -> PathLookup;
}

#[cfg(feature = "node-agent")]
/// cgroup ids the samplers found first (containers that may already be gone), then the
/// resolver.
pub struct KnownFirst {
    pub known: KnownCgroups,
    pub inner: ids::CgroupResolver,
}

#[cfg(feature = "node-agent")]
impl CgroupPaths for KnownFirst {
    fn path(&mut self, id: u64) -> PathLookup {
        match self.known.get(id) {
            Some(path) => PathLookup::Found(path),
            None => self.inner.path(id),
        }
    }
}
