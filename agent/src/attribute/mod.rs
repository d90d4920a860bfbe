//! Attribution: kernel events -> occurrences about a pod, container and process.
//!
//! Fed by the probe reader and the cgroupfs samplers (decoded [`RawEvent`]s, through the
//! channel [`spawn`] makes) and the metadata watcher ([`metadata`], [`MetaUpdate`]s); feeds
//! the store with [`Occurrence`]s. Never waits for the API server: an event whose pod is not
//! known yet is held in a bounded queue and retried whenever metadata arrives; when its wait
//! runs out it is stored unattributed and counted ([`Loss::AttributionExpired`]), never dropped
//! silently.
//!
//! Each event offers [`Clues`], strongest first: the cgroup of the process or socket involved
//! (exact: [`crate::cgroup::path`] parses kubelet's layout, `cgroup::ids` finds a cgroup's path by id),
//! then a pod IP through the IP history at the event's time ([`pods`]; exact for pod IPs,
//! hostNetwork pods are never attributed by IP).
//!
//! Why our own pod index instead of kube's reflector store: the reflector holds the *current*
//! pods, but an event must go to the pod that held an IP *at the event's time* (IPs are
//! reused within seconds), to pods deleted since, and to pods the API server has not told us
//! about yet. [`pods::PodIndex`] keeps time ranges per IP and deleted pods for a while.
//!
//! Deadlines (how long an event waits, negative cache entries) run on the monotonic clock, so a
//! wall-clock step cannot expire or keep events early; event times stay wall-clock times.

mod dns;
mod flows;
#[cfg(feature = "node-agent")]
pub mod metadata;
pub mod pods;
mod resources;
#[cfg(feature = "node-agent")]
pub mod runtime;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    cgroup::{
        CgroupPaths, PathLookup,
        path::{CgroupIdentity, KubeletLayout},
    },
    event::{FlowKind, RawEvent, TimedEvent},
    evidence::{Attribution, DnsLookups, Occurrence, PodLosses, PodRef, Process, Subject},
    loss::{Counters, Loss},
};
pub use flows::KernelNames;
use flows::{Names, STACK_REFUSAL_TTL, STACK_REFUSALS_CAPACITY, event_count};
use pods::{PodIndex, PodInfo};

/// Events waiting for metadata, at most. Beyond it the oldest is stored unattributed (counted).
pub const PENDING_CAPACITY: usize = 16_384;
/// How long an event waits for its pod once metadata is in sync: covers the delay between a pod
/// starting to send traffic and its watch event reaching us.
pub const PENDING_GRACE: Duration = Duration::from_secs(30);
/// How long an event from a container its pod's status does not show waits for the container
/// runtime to name it (a runtime is read; it is asked at once).
pub const RUNTIME_WAIT: Duration = Duration::from_secs(2);
/// How long an event waits at most while metadata is not in sync (API server down or slow).
pub const PENDING_MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// How long "this cgroup does not exist" is believed before asking again: a retry of the
/// waiting queue must not redo a syscall per event for cgroups that are gone.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Capacity of the events channel into attribution: a few seconds of a heavy burst.
pub const EVENTS_CHANNEL: usize = 8192;
/// Capacity of the metadata channel (awaited by the watcher: metadata is never dropped).
pub const META_CHANNEL: usize = 1024;

/// The current time on both clocks: wall for event times, monotonic for deadlines.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Now {
    pub fn real() -> Now {
        Now {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// How [`Attributor::retry`] treats the events still waiting.
#[derive(Clone, Copy)]
enum Retry {
    /// They keep waiting.
    Waiting,
    /// Those past their deadline have their last chance.
    Expire,
    /// All have their last chance (shutdown).
    LastChance,
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
    /// The container runtime's pods and containers, all of them (CRI; [`runtime`]).
    Runtime(Arc<Vec<pods::RuntimePod>>),
}

/// What a cgroup id told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CgroupLookup {
    /// Shared with the cache, so a hit copies no strings.
    Pod(Arc<CgroupIdentity>),
    NotAPod,
    Gone,
    Pending,
}

/// What an event offers to find its pod, strongest first.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clues {
    /// cgroup v2 id of the process or socket involved.
    pub cgroup: Option<u64>,
    /// The pod's IP (for traffic: the end that is this pod).
    pub ip: Option<IpAddr>,
}

/// What attribution hands to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributed {
    /// A failure about a subject (one or more occurrences).
    Occurrence(Occurrence),
    /// A pod's successful DNS lookups: counters the store keeps beside the records, never a
    /// record.
    DnsLookups(PodLookups),
    /// What the kernel lost of a pod's evidence (its share of a table or ring was used up):
    /// counters the store keeps beside the records.
    PodLosses(PodLossTally),
}

impl From<Occurrence> for Attributed {
    fn from(o: Occurrence) -> Self {
        Attributed::Occurrence(o)
    }
}

/// A pod's successful DNS lookups since the last report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLookups {
    pub at: SystemTime,
    pub pod: Arc<PodRef>,
    pub lookups: DnsLookups,
}

/// What the kernel lost of a pod's evidence in one drain interval, and when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLossTally {
    pub at: SystemTime,
    pub pod: Arc<PodRef>,
    pub losses: PodLosses,
}

/// The attribution state machine (synchronous, so it is unit-testable); [`spawn`] drives it.
pub struct Attributor {
    index: PodIndex,
    cgroups: Box<dyn CgroupPaths>,
    /// How a cgroup path names its pod (kubelet's root, when the agent was told it).
    layout: KubeletLayout,
    /// By cgroup id (the kernel's numbers; foldhash, as read for every event).
    cgroup_cache: foldhash::HashMap<u64, CgroupLookup>,
    /// cgroup ids found gone, and until when that is believed.
    cgroup_gone: foldhash::HashMap<u64, Instant>,
    names: Names,
    /// Process names and drop locations, shared by the records that repeat them.
    strings: flows::Interned,
    /// (SYN sender IP, refusing end) -> when this node's stack refused it: a reset the
    /// connecting side got from a local pod without one of these came from a firewall.
    stack_refusals: HashMap<(IpAddr, SocketAddr), Instant>,
    pending: VecDeque<(TimedEvent, Instant)>,
    synced: bool,
    /// When metadata went out of sync (the watch failed after a sync): from then on the IP
    /// history may be stale (pods deleted, IPs reused, unseen), so events that name pods by IP
    /// wait for the next full list instead of trusting it.
    unsynced_since: Option<SystemTime>,
    relist_seen: Option<HashSet<String>>,
    /// OOM kills seen by the kernel event and by the cgroup counters, joined into one record.
    oom: resources::OomJoin,
    /// The pod set changed since it was last published for the samplers.
    pods_dirty: bool,
    /// Pods' successful DNS lookups attributed since [`Attributor::take_lookups`].
    lookups: Vec<PodLookups>,
    /// Pods' kernel losses attributed since [`Attributor::take_pod_losses`].
    pod_losses: Vec<PodLossTally>,
    /// Wakes the container runtime source to report now (an event waits for a pod nobody
    /// has named yet).
    runtime_wake: Option<Arc<tokio::sync::Notify>>,
    /// The container runtime has reported (so a container unknown to the API server's pod
    /// status is worth [`RUNTIME_WAIT`]).
    runtime_reports: bool,
    counters: Arc<Counters>,
}

/// Bound on the cgroup id caches; cleared when reached (ids of live pods are re-resolved
/// cheaply).
const CGROUP_CACHE_CAPACITY: usize = 8192;

impl Attributor {
    /// `names`: the running kernel's names of its reason values (from BTF).
    pub fn new(cgroups: Box<dyn CgroupPaths>, names: KernelNames, counters: Arc<Counters>) -> Self {
        Attributor {
            index: PodIndex::default(),
            cgroups,
            layout: KubeletLayout::anywhere(),
            cgroup_cache: foldhash::HashMap::default(),
            cgroup_gone: foldhash::HashMap::default(),
            names: Names::from(names),
            strings: flows::Interned::default(),
            stack_refusals: HashMap::new(),
            pending: VecDeque::new(),
            synced: false,
            unsynced_since: None,
            relist_seen: None,
            oom: resources::OomJoin::default(),
            pods_dirty: true,
            lookups: Vec::new(),
            pod_losses: Vec::new(),
            runtime_wake: None,
            runtime_reports: false,
            counters,
        }
    }

    /// Wakes `wake`'s waiter (the container runtime source) whenever an event waits for a pod
    /// no source has named yet.
    pub fn with_runtime_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.runtime_wake = Some(wake);
        self
    }

    fn ask_runtime(&self) {
        if let Some(wake) = &self.runtime_wake {
            wake.notify_one();
        }
    }

    /// Reads cgroup paths with `layout` (kubelet's root) instead of looking for a pod level
    /// anywhere in them.
    pub fn with_layout(mut self, layout: KubeletLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Pods' successful DNS lookups attributed since the last call.
    pub fn take_lookups(&mut self) -> Vec<PodLookups> {
        std::mem::take(&mut self.lookups)
    }

    /// Pods' kernel losses attributed since the last call.
    pub fn take_pod_losses(&mut self) -> Vec<PodLossTally> {
        std::mem::take(&mut self.pod_losses)
    }

    /// Live pods and their container IDs, for the samplers.
    pub fn pod_containers(&self) -> Vec<crate::cgroup::PodContainers> {
        self.index.pod_containers()
    }

    pub fn index(&self) -> &PodIndex {
        &self.index
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Applies a metadata change; returns events that could now be attributed.
    pub fn update(&mut self, update: MetaUpdate, now: Now) -> Vec<Occurrence> {
        self.pods_dirty = true;
        match update {
            MetaUpdate::RelistStarted => self.relist_seen = Some(HashSet::new()),
            MetaUpdate::Apply(info) => {
                let seen = match &mut self.relist_seen {
                    Some(seen) => {
                        seen.insert(info.pod.uid.clone());
                        pods::Seen::Listed
                    }
                    None if self.synced => pods::Seen::Watching,
                    None => pods::Seen::Listed,
                };
                self.index.observe(info, now.wall, seen);
            }
            MetaUpdate::Delete { uid } => self.index.delete(&uid, now.wall),
            MetaUpdate::RelistDone => {
                if let Some(seen) = self.relist_seen.take() {
                    self.index.retain_live(&seen, now.wall);
                }
                self.synced = true;
                self.unsynced_since = None;
            }
            MetaUpdate::Runtime(pods) => {
                self.runtime_reports = true;
                self.index.apply_runtime(&pods, now.wall);
                // Cgroups read as no pod's may be a runtime's container in a layout of its own.
                self.cgroup_cache
                    .retain(|_, found| *found != CgroupLookup::NotAPod);
            }
        }
        // During a re-list, retry once at its end rather than once per listed pod: a full
        // queue times hundreds of pods would be millions of lookups.
        if self.relist_seen.is_some() {
            return Vec::new();
        }
        self.retry(now, Retry::Waiting)
    }

    /// Each event to its attribution arm. `None`: wait for metadata. With `last_chance`, always
    /// `Some` (unattributed if need be).
    fn try_attribute(
        &mut self,
        event: &TimedEvent,
        now: Now,
        last_chance: bool,
    ) -> Option<Vec<Occurrence>> {
        // Flows and DNS name pods (their own, or the peer, or the server) by IP: not from a
        // history that may be stale.
        if matches!(event.event, RawEvent::Flow(_) | RawEvent::Dns(_))
            && self.ip_history_uncertain(event.at, last_chance)
        {
            return None;
        }
        match &event.event {
            RawEvent::Flow(f) => self.flow(event, f, now, last_chance),
            RawEvent::Dns(d) => self.dns(event, d, now, last_chance),
            RawEvent::DnsLookups(t) => self.dns_lookups(event, t, now, last_chance),
            RawEvent::OomVictim(v) => self.oom_victim(event, v, now, last_chance),
            RawEvent::Sample(s) => self.sample(event, s, now, last_chance),
            RawEvent::CgroupLosses(l) => self.cgroup_losses(event, l, now, last_chance),
        }
    }

    /// A cgroup's kernel losses go to its pod's counters. A cgroup of no pod (a host process's)
    /// has them in the node-wide counters only, where they already are.
    fn cgroup_losses(
        &mut self,
        event: &TimedEvent,
        l: &crate::event::CgroupLosses,
        now: Now,
        last_chance: bool,
    ) -> Option<Vec<Occurrence>> {
        let clues = Clues {
            cgroup: Some(l.cgroup_id),
            ip: None,
        };
        let subject = self.subject(clues, None, event.at, now, last_chance)?;
        if let Some(pod) = subject.pod {
            self.pod_losses.push(PodLossTally {
                at: event.at,
                pod,
                losses: l.losses,
            });
        }
        Some(Vec::new())
    }

    /// Attributes a new event, or holds it until metadata arrives. When the waiting queue is
    /// full, its oldest event is stored unattributed (and counted) to make room.
    pub fn event(&mut self, event: TimedEvent, now: Now) -> Vec<Occurrence> {
        self.note(&event, now);
        if let Some(done) = self.try_attribute(&event, now, false) {
            return done;
        }
        let evicted = if self.pending.len() >= PENDING_CAPACITY {
            self.pending
                .pop_front()
                .and_then(|(oldest, _)| {
                    // Its last attempt often finds the pod: counted only when it does not.
                    let occs = self.try_attribute(&oldest, now, true)?;
                    if occs
                        .iter()
                        .all(|o| o.subject.attribution == Attribution::None)
                    {
                        self.counters
                            .add(Loss::AttributionExpired, event_count(&oldest));
                    }
                    Some(occs)
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.pending.push_back((event, now.mono));
        evicted
    }

    /// Remembers what later events are judged against.
    fn note(&mut self, event: &TimedEvent, now: Now) {
        if let RawEvent::Flow(f) = &event.event
            && f.kind == FlowKind::SynRefused
        {
            if self.stack_refusals.len() >= STACK_REFUSALS_CAPACITY {
                self.stack_refusals
                    .retain(|_, t| now.mono.saturating_duration_since(*t) < STACK_REFUSAL_TTL);
                if self.stack_refusals.len() >= STACK_REFUSALS_CAPACITY {
                    self.stack_refusals.clear();
                }
            }
            self.stack_refusals.insert((f.src.ip(), f.dst), now.mono);
        }
    }

    /// Marks metadata as out of sync (the watch failed) at `at`: waiting events get the long
    /// deadline, and events from then on that name pods by IP wait for the next full list.
    pub fn set_synced(&mut self, synced: bool, at: SystemTime) {
        if !synced && self.synced {
            self.unsynced_since.get_or_insert(at);
        }
        self.synced = synced;
        if synced {
            self.unsynced_since = None;
        }
    }

    /// Whether who held an IP at `at` may be unknown to us: the pod list went out of sync
    /// before `at` and has not been re-read (during an API server outage a pod can be deleted
    /// and its IP given to a new one without our knowing). `last_chance` settles for the
    /// history as it is.
    pub(super) fn ip_history_uncertain(&self, at: SystemTime, last_chance: bool) -> bool {
        !last_chance && !self.synced && self.unsynced_since.is_some_and(|since| at >= since)
    }

    /// Periodic: retries waiting events and stores those whose wait ran out, unattributed.
    pub fn tick(&mut self, now: Now) -> Vec<Occurrence> {
        self.index.prune(now.wall);
        self.cgroup_gone.retain(|_, until| *until > now.mono);
        let mut out = self.retry(now, Retry::Expire);
        out.extend(self.oom_tick(now));
        out
    }

    /// At shutdown: every event still waiting for its pod's metadata has its last chance now
    /// (attributed by what is known, else stored tied to no pod and counted as
    /// `attribution_expired`), so none vanishes uncounted.
    pub fn flush(&mut self, now: Now) -> Vec<Occurrence> {
        self.retry(now, Retry::LastChance)
    }

    fn retry(&mut self, now: Now, how: Retry) -> Vec<Occurrence> {
        let mut out = Vec::new();
        let mut still = VecDeque::with_capacity(self.pending.len());
        let waiting = std::mem::take(&mut self.pending);
        let deadline = if self.synced {
            PENDING_GRACE
        } else {
            PENDING_MAX_WAIT
        };
        for (event, since) in waiting {
            let last_chance = match how {
                Retry::Waiting => false,
                Retry::Expire => now.mono.saturating_duration_since(since) >= deadline,
                Retry::LastChance => true,
            };
            match self.try_attribute(&event, now, last_chance) {
                Some(occs) => {
                    if last_chance
                        && occs
                            .iter()
                            .all(|o| o.subject.attribution == Attribution::None)
                    {
                        self.counters
                            .add(Loss::AttributionExpired, event_count(&event));
                    }
                    out.extend(occs);
                }
                None => still.push_back((event, since)),
            }
        }
        self.pending = still;
        out
    }

    pub(super) fn lookup_cgroup(&mut self, id: u64, now: Now) -> CgroupLookup {
        if let Some(hit) = self.cgroup_cache.get(&id) {
            return hit.clone();
        }
        if self
            .cgroup_gone
            .get(&id)
            .is_some_and(|until| *until > now.mono)
        {
            return CgroupLookup::Gone;
        }
        let found = match self.cgroups.path(id) {
            PathLookup::Pending => return CgroupLookup::Pending,
            PathLookup::Missing => {
                if self.cgroup_gone.len() >= CGROUP_CACHE_CAPACITY {
                    self.cgroup_gone.clear();
                }
                self.cgroup_gone.insert(id, now.mono + NEGATIVE_TTL);
                return CgroupLookup::Gone;
            }
            PathLookup::Found(path) => match self.layout.parse(&path) {
                Some(identity) => CgroupLookup::Pod(Arc::new(identity)),
                // Not kubelet's layout: the runtime may still have said whose it is.
                None => match self.index.runtime_cgroup(&path) {
                    Some((uid, id)) => CgroupLookup::Pod(Arc::new(CgroupIdentity {
                        pod_uid: uid.to_owned(),
                        container_id: Some(id.to_owned()),
                    })),
                    None => CgroupLookup::NotAPod,
                },
            },
        };
        if self.cgroup_cache.len() >= CGROUP_CACHE_CAPACITY {
            self.cgroup_cache.clear();
        }
        self.cgroup_cache.insert(id, found.clone());
        found
    }

    /// Who an event is about, from its clues. `None`: wait for metadata. With `last_chance`,
    /// always `Some` (unattributed if need be).
    fn subject(
        &mut self,
        clues: Clues,
        process: Option<Process>,
        at: SystemTime,
        now: Now,
        last_chance: bool,
    ) -> Option<Subject> {
        let lookup = match clues.cgroup {
            Some(id) if id != 0 => self.lookup_cgroup(id, now),
            _ => CgroupLookup::Gone,
        };
        match lookup {
            CgroupLookup::Pod(identity) => {
                if let Some(pod) = self.index.by_uid(&identity.pod_uid) {
                    let container = identity
                        .container_id
                        .as_ref()
                        .and_then(|cid| pod.containers.get(cid).cloned());
                    // A container the pod's status does not show yet (it just started, or was
                    // restarted): a runtime that is read names it within a moment.
                    if container.is_none()
                        && identity.container_id.is_some()
                        && !last_chance
                        && self.runtime_reports
                        && now.wall.duration_since(at).unwrap_or_default() < RUNTIME_WAIT
                    {
                        self.ask_runtime();
                        return None;
                    }
                    return Some(Subject {
                        pod: Some(pod.pod.clone()),
                        container,
                        process,
                        attribution: Attribution::Cgroup,
                    });
                }
                if !last_chance {
                    debug!(uid = %identity.pod_uid, "pod not known yet; waiting for metadata");
                    self.ask_runtime();
                    return None;
                }
                Some(Subject::unattributed(process))
            }
            // A process outside any pod (kubelet, a node daemon): node-level evidence.
            CgroupLookup::NotAPod => Some(Subject::unattributed(process)),
            // The path is being looked up: wait for it rather than settle for the IP.
            CgroupLookup::Pending if !last_chance => None,
            // No cgroup, or it is gone (short-lived process): the pod IP.
            CgroupLookup::Gone | CgroupLookup::Pending => match clues
                .ip
                .and_then(|ip| self.index.pod_at_ip(ip, at))
            {
                Some(pod) => Some(Subject {
                    pod: Some(pod.pod.clone()),
                    container: None,
                    process,
                    attribution: Attribution::Ip,
                }),
                None if last_chance || clues.ip.is_none() => Some(Subject::unattributed(process)),
                None => None,
            },
        }
    }
}

/// State of the metadata feed, published for Status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaHealth {
    pub synced: bool,
    /// When the pod list was last complete (a list ended, or a watch event arrived while in
    /// sync).
    pub last_synced: Option<SystemTime>,
    pub last_error: Option<String>,
    pub retries: u32,
}

/// The container runtime source's state ([`runtime`]), for Status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeHealth {
    /// The socket read, or none found.
    pub socket: Option<std::path::PathBuf>,
    /// Runtime name and version (`containerd 1.6.20`), once it answered.
    pub runtime: String,
    /// The last report succeeded.
    pub connected: bool,
    /// Pods (sandboxes) and containers of the last report.
    pub pods: u32,
    pub containers: u32,
    /// Why the runtime is not read (no socket, an error), empty when it is.
    pub last_error: String,
}

/// Input of the attribution task from the metadata watcher.
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
    /// Pods only the container runtime has named.
    pub runtime_only: u32,
}

/// How often waiting events are retried and expired.
const TICK: Duration = Duration::from_secs(1);

/// The senders into attribution.
#[derive(Clone)]
pub struct AttributeInputs {
    /// Decoded kernel events and sampler events (never awaited by producers: `try_send`).
    pub events: mpsc::Sender<TimedEvent>,
    /// Metadata updates (awaited: metadata is never dropped).
    pub meta: mpsc::Sender<Input>,
}

/// Makes attribution's channels: returns the senders, the stats for Status, and the task,
/// which sends occurrences to `store` (never awaited: a full store channel is counted as
/// [`Loss::StoreChannelFull`]) until cancelled or until the events senders are gone.
pub fn spawn(
    attributor: Attributor,
    store: mpsc::Sender<Attributed>,
    cancel: CancellationToken,
) -> (
    AttributeInputs,
    watch::Receiver<AttributorStats>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (inputs, stats, _pods, task) = spawn_with_pods(attributor, store, cancel);
    (inputs, stats, task)
}

/// Like [`spawn`], also publishing the live pods and their container IDs (for the samplers),
/// at most once per tick when they changed.
pub fn spawn_with_pods(
    attributor: Attributor,
    store: mpsc::Sender<Attributed>,
    cancel: CancellationToken,
) -> (
    AttributeInputs,
    watch::Receiver<AttributorStats>,
    watch::Receiver<Arc<Vec<crate::cgroup::PodContainers>>>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (events_tx, events) = mpsc::channel(EVENTS_CHANNEL);
    let (meta_tx, meta) = mpsc::channel(META_CHANNEL);
    let (stats_tx, stats_rx) = watch::channel(AttributorStats::default());
    let (pods_tx, pods_rx) = watch::channel(Arc::new(Vec::new()));
    (
        AttributeInputs {
            events: events_tx,
            meta: meta_tx,
        },
        stats_rx,
        pods_rx,
        run(attributor, events, meta, store, stats_tx, pods_tx, cancel),
    )
}

async fn run(
    mut attributor: Attributor,
    mut events: mpsc::Receiver<TimedEvent>,
    mut meta: mpsc::Receiver<Input>,
    store: mpsc::Sender<Attributed>,
    stats: watch::Sender<AttributorStats>,
    pods: watch::Sender<Arc<Vec<crate::cgroup::PodContainers>>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counters = attributor.counters.clone();
    // Counted in what is lost: an occurrence's count, a tally's lookups.
    let send = |a: Attributed| {
        if let Err(e) = store.try_send(a) {
            match e.into_inner() {
                Attributed::Occurrence(o) => counters.add(Loss::StoreChannelFull, o.count.max(1)),
                Attributed::DnsLookups(l) => {
                    counters.add(Loss::DnsLookupsLost, l.lookups.lookups);
                }
                // The losses are in the node-wide counters; which pod they were is lost.
                Attributed::PodLosses(_) => counters.add(Loss::StoreChannelFull, 1),
            }
        }
    };
    let forward = |occs: Vec<Occurrence>, attributor: &mut Attributor| {
        for occ in occs {
            send(Attributed::Occurrence(occ));
        }
        for lookups in attributor.take_lookups() {
            send(Attributed::DnsLookups(lookups));
        }
        for losses in attributor.take_pod_losses() {
            send(Attributed::PodLosses(losses));
        }
    };
    let mut meta_open = true;
    // At shutdown the producers stop first; what they already sent is still attributed (until
    // they are gone, at most DRAIN), then everything waiting gets its last chance.
    let drain = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(drain);
    let mut draining = false;
    loop {
        tokio::select! {
            () = cancel.cancelled(), if !draining => {
                draining = true;
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            () = &mut drain, if draining => break,
            ev = events.recv() => match ev {
                Some(ev) => {
                    let occs = attributor.event(ev, Now::real());
                    forward(occs, &mut attributor);
                }
                None => break,
            },
            m = meta.recv(), if meta_open => match m {
                Some(Input::Meta(update)) => {
                    let occs = attributor.update(update, Now::real());
                    forward(occs, &mut attributor);
                }
                Some(Input::MetaLost) => attributor.set_synced(false, SystemTime::now()),
                None => meta_open = false,
            },
            _ = tick.tick() => {
                let occs = attributor.tick(Now::real());
                forward(occs, &mut attributor);
                if attributor.pods_dirty && attributor.relist_seen.is_none() {
                    attributor.pods_dirty = false;
                    let _ = pods.send(Arc::new(attributor.pod_containers()));
                }
                let _ = stats.send(AttributorStats {
                    pods: u32::try_from(attributor.index().live_pods()).unwrap_or(u32::MAX),
                    pending: u32::try_from(attributor.pending_len()).unwrap_or(u32::MAX),
                    runtime_only: u32::try_from(attributor.index().runtime_only_pods())
                        .unwrap_or(u32::MAX),
                });
            }
        }
    }
    // What is still in the channel (producers that outlived DRAIN) and what waits.
    events.close();
    while let Ok(ev) = events.try_recv() {
        let occs = attributor.event(ev, Now::real());
        forward(occs, &mut attributor);
    }
    let occs = attributor.flush(Now::real());
    forward(occs, &mut attributor);
}

/// How long attribution waits at shutdown for the producers to stop.
pub const DRAIN: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests;
