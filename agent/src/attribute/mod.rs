//! Attribution: kernel events -> evidence about a pod, container and process.
//!
//! Fed by the probe reader (decoded [`RawEvent`]s) and the metadata watcher ([`MetaUpdate`]s);
//! feeds the store with [`Occurrence`]s. Never waits for the API server: an event whose pod is
//! not known yet is held in a bounded queue and retried whenever metadata arrives; when its wait
//! runs out it is stored unattributed and counted, never dropped silently.
//!
//! Strength of attribution, strongest first: the cgroup of the process that acted (exact), the
//! pod IP through the IP history at the event's time (exact for pod IPs; hostNetwork pods are
//! never attributed by IP).

pub mod cgroup;
pub mod pods;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    counters::Counters,
    evidence::{Attribution, Direction, Kind, Occurrence, PodRef, Process, Protocol},
    probes::decode::{ConnRefused, RawEvent, RefusedSide},
};
use cgroup::{CgroupIdentity, parse_cgroup_path};
use pods::{PodIndex, PodInfo};

/// Events waiting for metadata, at most. Beyond it the oldest is stored unattributed (counted).
pub const PENDING_CAPACITY: usize = 16_384;
/// How long an event waits for its pod once metadata is in sync: covers the delay between a pod
/// starting to send traffic and its watch event reaching us.
pub const PENDING_GRACE: Duration = Duration::from_secs(30);
/// How long an event waits at most while metadata is not in sync (API server down or slow).
pub const PENDING_MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// A decoded event with its wall-clock time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedEvent {
    pub at: SystemTime,
    pub event: RawEvent,
}

/// Changes to the pod metadata, from the watcher.
#[derive(Clone, Debug)]
pub enum MetaUpdate {
    /// A full list starts (initial or after the watch was lost).
    RelistStarted,
    /// A pod exists (added, modified, or listed).
    Apply(PodInfo),
    /// A pod was deleted.
    Delete { uid: String },
    /// The full list ended: pods not listed since [`MetaUpdate::RelistStarted`] are gone.
    RelistDone,
}

/// Finds the path of a cgroup (v2) by id. Implemented on the real cgroupfs by
/// [`crate::node::cgroups`]; by maps in tests.
pub trait CgroupPaths: Send {
    /// The cgroup's path, `None` if no such cgroup exists (any more).
    fn path(&mut self, id: u64) -> Option<String>;
}

/// What a cgroup id told us.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CgroupLookup {
    Pod(CgroupIdentity),
    NotAPod,
    Gone,
}

/// The attribution state machine (synchronous, so it is unit-testable); [`run`] drives it.
pub struct Attributor {
    index: PodIndex,
    cgroups: Box<dyn CgroupPaths>,
    cgroup_cache: HashMap<u64, CgroupLookup>,
    reasons: HashMap<u32, String>,
    pending: VecDeque<(TimedEvent, SystemTime)>,
    synced: bool,
    relist_seen: Option<HashSet<String>>,
    counters: Arc<Counters>,
}

/// Bound on the cgroup id cache; cleared when reached (ids of live pods are re-resolved cheaply).
const CGROUP_CACHE_CAPACITY: usize = 8192;

impl Attributor {
    /// `reasons` maps kernel reset reason values to names (from the running kernel's BTF).
    pub fn new(
        cgroups: Box<dyn CgroupPaths>,
        reasons: HashMap<u32, String>,
        counters: Arc<Counters>,
    ) -> Self {
        Attributor {
            index: PodIndex::default(),
            cgroups,
            cgroup_cache: HashMap::new(),
            reasons,
            pending: VecDeque::new(),
            synced: false,
            relist_seen: None,
            counters,
        }
    }

    pub fn index(&self) -> &PodIndex {
        &self.index
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Applies a metadata change; returns events that could now be attributed.
    pub fn update(&mut self, update: MetaUpdate, now: SystemTime) -> Vec<Occurrence> {
        match update {
            MetaUpdate::RelistStarted => self.relist_seen = Some(HashSet::new()),
            MetaUpdate::Apply(info) => {
                if let Some(seen) = &mut self.relist_seen {
                    seen.insert(info.pod.uid.clone());
                }
                self.index.apply(info, now);
            }
            MetaUpdate::Delete { uid } => self.index.delete(&uid, now),
            MetaUpdate::RelistDone => {
                if let Some(seen) = self.relist_seen.take() {
                    self.index.retain_live(&seen, now);
                }
                self.synced = true;
            }
        }
        // During a re-list, retry once at its end rather than once per listed pod: a full
        // queue times hundreds of pods would be millions of lookups.
        if self.relist_seen.is_some() {
            return Vec::new();
        }
        self.retry(now, false)
    }

    /// Attributes a new event, or holds it until metadata arrives. When the waiting queue is
    /// full, its oldest event is stored unattributed (and counted) to make room.
    pub fn event(&mut self, event: TimedEvent, now: SystemTime) -> Option<Occurrence> {
        if let Some(done) = self.try_attribute(&event, false) {
            return Some(done);
        }
        let evicted = if self.pending.len() >= PENDING_CAPACITY {
            self.pending.pop_front().and_then(|(oldest, _)| {
                self.counters.add_attribution_expired(1);
                self.try_attribute(&oldest, true)
            })
        } else {
            None
        };
        self.pending.push_back((event, now));
        evicted
    }

    /// Marks metadata as out of sync (the watch failed): waiting events get the long deadline.
    pub fn set_synced(&mut self, synced: bool) {
        self.synced = synced;
    }

    /// Periodic: retries waiting events and stores those whose wait ran out, unattributed.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Occurrence> {
        self.index.prune(now);
        self.retry(now, true)
    }

    fn retry(&mut self, now: SystemTime, expire: bool) -> Vec<Occurrence> {
        let mut out = Vec::new();
        let mut still = VecDeque::with_capacity(self.pending.len());
        let waiting = std::mem::take(&mut self.pending);
        for (event, since) in waiting {
            let waited = now.duration_since(since).unwrap_or_default();
            let deadline = if self.synced {
                PENDING_GRACE
            } else {
                PENDING_MAX_WAIT
            };
            let last_chance = expire && waited >= deadline;
            match self.try_attribute(&event, last_chance) {
                Some(occ) => {
                    if last_chance && occ.attribution == Attribution::None {
                        self.counters.add_attribution_expired(1);
                    }
                    out.push(occ);
                }
                None => still.push_back((event, since)),
            }
        }
        self.pending = still;
        out
    }

    fn lookup_cgroup(&mut self, id: u64) -> CgroupLookup {
        if let Some(hit) = self.cgroup_cache.get(&id) {
            return hit.clone();
        }
        let found = match self.cgroups.path(id) {
            None => return CgroupLookup::Gone,
            Some(path) => match parse_cgroup_path(&path) {
                Some(identity) => CgroupLookup::Pod(identity),
                None => CgroupLookup::NotAPod,
            },
        };
        if self.cgroup_cache.len() >= CGROUP_CACHE_CAPACITY {
            self.cgroup_cache.clear();
        }
        self.cgroup_cache.insert(id, found.clone());
        found
    }

    /// `None`: wait for metadata. With `last_chance`, always `Some` (unattributed if need be).
    fn try_attribute(&mut self, event: &TimedEvent, last_chance: bool) -> Option<Occurrence> {
        match &event.event {
            RawEvent::ConnRefused(e) => self.conn_refused(e, event.at, last_chance),
        }
    }

    fn conn_refused(
        &mut self,
        e: &ConnRefused,
        at: SystemTime,
        last_chance: bool,
    ) -> Option<Occurrence> {
        let reason = e.reason.map(|r| {
            self.reasons
                .get(&r)
                .cloned()
                .unwrap_or_else(|| format!("reason {r}"))
        });
        let occurrence = |pod: Option<&PodInfo>,
                          container: Option<String>,
                          attribution,
                          direction,
                          peer: Option<PodRef>,
                          process| Occurrence {
            kind: Kind::ConnectionRefused,
            at,
            pod: pod.map(|p| p.pod.clone()),
            container,
            process,
            attribution: if pod.is_some() {
                attribution
            } else {
                Attribution::None
            },
            direction,
            src: e.src,
            dst: e.dst,
            protocol: Protocol::Tcp,
            reason: reason.clone(),
            peer,
        };
        match e.side {
            RefusedSide::Connector => {
                let process = e.task.as_ref().map(|t| Process {
                    pid: t.tgid,
                    comm: t.comm.clone(),
                });
                let peer = self.index.pod_at_ip(e.dst.ip(), at).map(|p| p.pod.clone());
                let lookup = match &e.task {
                    Some(task) if task.cgroup_id != 0 => self.lookup_cgroup(task.cgroup_id),
                    _ => CgroupLookup::Gone,
                };
                match lookup {
                    CgroupLookup::Pod(identity) => {
                        if let Some(pod) = self.index.by_uid(&identity.pod_uid) {
                            let container = identity
                                .container_id
                                .as_ref()
                                .and_then(|cid| pod.containers.get(cid).cloned());
                            return Some(occurrence(
                                Some(pod),
                                container,
                                Attribution::Cgroup,
                                Direction::Outbound,
                                peer,
                                process,
                            ));
                        }
                        if !last_chance {
                            debug!(uid = %identity.pod_uid, "pod not known yet; waiting for metadata");
                            return None;
                        }
                        Some(occurrence(
                            None,
                            None,
                            Attribution::None,
                            Direction::Outbound,
                            peer,
                            process,
                        ))
                    }
                    // A process outside any pod (kubelet, a node daemon): node-level evidence.
                    CgroupLookup::NotAPod => Some(occurrence(
                        None,
                        None,
                        Attribution::None,
                        Direction::Outbound,
                        peer,
                        process,
                    )),
                    // The cgroup is gone (short-lived process): fall back to the pod IP.
                    CgroupLookup::Gone => match self.index.pod_at_ip(e.src.ip(), at) {
                        Some(pod) => Some(occurrence(
                            Some(pod),
                            None,
                            Attribution::Ip,
                            Direction::Outbound,
                            peer,
                            process,
                        )),
                        None if last_chance => Some(occurrence(
                            None,
                            None,
                            Attribution::None,
                            Direction::Outbound,
                            peer,
                            process,
                        )),
                        None => None,
                    },
                }
            }
            RefusedSide::Refuser => {
                let peer = self.index.pod_at_ip(e.src.ip(), at).map(|p| p.pod.clone());
                match self.index.pod_at_ip(e.dst.ip(), at) {
                    Some(pod) => Some(occurrence(
                        Some(pod),
                        None,
                        Attribution::Ip,
                        Direction::Inbound,
                        peer,
                        None,
                    )),
                    None if last_chance => Some(occurrence(
                        None,
                        None,
                        Attribution::None,
                        Direction::Inbound,
                        peer,
                        None,
                    )),
                    None => None,
                }
            }
        }
    }
}

/// State of the metadata feed, published for Status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaHealth {
    pub synced: bool,
    pub last_error: Option<String>,
    pub retries: u32,
}

/// Input of the attribution task.
pub enum Input {
    Meta(MetaUpdate),
    /// The watch failed; metadata may be stale until the next [`MetaUpdate::RelistDone`].
    MetaLost,
}

/// Snapshot of attributor state for Status.
#[derive(Clone, Debug, Default)]
pub struct AttributorStats {
    pub pods: u32,
    pub pending: u32,
}

/// How often waiting events are retried and expired.
const TICK: Duration = Duration::from_secs(1);

/// Runs the attribution task until cancelled: events from `events`, metadata from `meta`,
/// occurrences out to `store` (never awaited: a full store channel is counted).
pub async fn run(
    mut attributor: Attributor,
    mut events: mpsc::Receiver<TimedEvent>,
    mut meta: mpsc::Receiver<Input>,
    store: mpsc::Sender<Occurrence>,
    stats: tokio::sync::watch::Sender<AttributorStats>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counters = attributor.counters.clone();
    let forward = |occs: Vec<Occurrence>| {
        for occ in occs {
            if store.try_send(occ).is_err() {
                counters.add_pipeline_full(1);
            }
        }
    };
    let mut meta_open = true;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            ev = events.recv() => match ev {
                Some(ev) => {
                    let now = SystemTime::now();
                    forward(attributor.event(ev, now).into_iter().collect());
                }
                None => break,
            },
            m = meta.recv(), if meta_open => match m {
                Some(Input::Meta(update)) => forward(attributor.update(update, SystemTime::now())),
                Some(Input::MetaLost) => attributor.set_synced(false),
                None => meta_open = false,
            },
            _ = tick.tick() => {
                forward(attributor.tick(SystemTime::now()));
                let _ = stats.send(AttributorStats {
                    pods: u32::try_from(attributor.index().live_pods()).unwrap_or(u32::MAX),
                    pending: u32::try_from(attributor.pending_len()).unwrap_or(u32::MAX),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
