//! The evidence store: aggregates repeats of the same failure into one record (count, first and
//! last seen), bounded by record count and age, fair between pods.
//!
//! Records are grouped by owner (a pod, or "unattributed"); the owner map is also the index a
//! pod's query reads, so answering for one pod never scans the others' records. Room is made
//! fairly: a pod over its quota, a namespace over its quota, or the unattributed records over
//! their budget lose their own oldest records; when the whole store is full, the biggest owner
//! loses its oldest. One noisy pod can therefore never push out another pod's evidence.
//! Owners are kept ranked by their record count (then by their oldest record), over all and per
//! namespace, in step with every change, so the biggest is found in O(log owners), never by a
//! scan of them all.
//! Evictions are counted per owner (an answer says what was lost for the pod asked about) and
//! globally ([`Loss::StoreEvicted`]); records past the retention age expire and are counted
//! apart (expiry is the retention policy, not a loss).
//!
//! [`task`] runs the store as a single owner task reached through a [`StoreHandle`].

#[cfg(feature = "disk-store")]
pub mod persist;
mod pod_losses;
mod records;
mod task;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;

use records::{List, Records, stamp};

pub use task::{
    BATCH_INTERVAL, Command, Heartbeat, OCCURRENCES_CHANNEL, StoreGone, StoreHandle,
    SubscribeError, Subscription, spawn,
};

use crate::{
    attribute::{Attributed, PodLookups, PodLossTally},
    evidence::{DetailKey, DnsLookups, Evidence, Filter, Kind, Occurrence, PodLosses, PodRef},
    loss::{Counters, Loss},
};

/// Default record capacity: 100,000 records of IPv4 traffic take about 8 MiB (84 bytes each).
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Default retention: long enough to answer "what went wrong during last night's incident".
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default answer size of a query.
pub const DEFAULT_QUERY_LIMIT: usize = 1000;
/// Updates a watcher may have in flight before it is considered too slow and dropped.
pub const WATCH_BUFFER: usize = 1024;
/// Most concurrent watchers; more are refused (each holds a buffer of [`WATCH_BUFFER`]).
pub const MAX_SUBSCRIBERS: usize = 64;
/// Inbound refusal and drop records a pod keeps one per sender and port; past these, new ones
/// fold into one record per kind, protocol and reason ([`crate::evidence::folded`]). They are
/// caused by the senders, not by the pod, so they never push out the pod's own evidence: when
/// a pod must lose a record for room, it loses its oldest inbound one first.
pub const INBOUND_RECORDS: usize = 32;

/// Bounds of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub node: String,
    /// Most records in all.
    pub capacity: usize,
    /// Records not seen for this long expire.
    pub max_age: Duration,
    /// Most records of one pod.
    pub pod_quota: usize,
    /// Most records of one namespace.
    pub namespace_quota: usize,
    /// Most records tied to no pod.
    pub unattributed_quota: usize,
}

impl StoreConfig {
    /// Quotas derived from the capacity: a pod may hold 1/20 of it, a namespace 1/4, records
    /// tied to no pod 1/10 — so at least 20 pods fill their quota before anyone else's
    /// evidence is touched.
    pub fn new(node: impl Into<String>, capacity: usize, max_age: Duration) -> StoreConfig {
        let capacity = capacity.max(1);
        StoreConfig {
            node: node.into(),
            capacity,
            max_age,
            pod_quota: (capacity / 20).max(1),
            namespace_quota: (capacity / 4).max(1),
            unattributed_quota: (capacity / 10).max(1),
        }
    }
}

/// Who a record belongs to, for quotas and the index: a pod by its uid (the [`PodRef`] is
/// shared with the records, so naming an owner copies no string), or the records tied to no
/// pod. Equal, hashed and ordered by the uid alone.
#[derive(Clone, Debug)]
enum Owner {
    Pod(Arc<PodRef>),
    Unattributed,
}

impl Owner {
    fn uid(&self) -> Option<&str> {
        match self {
            Owner::Pod(p) => Some(p.uid.as_str()),
            Owner::Unattributed => None,
        }
    }
}

impl PartialEq for Owner {
    fn eq(&self, other: &Owner) -> bool {
        match (self, other) {
            // Most often the one PodRef every record of the pod shares.
            (Owner::Pod(a), Owner::Pod(b)) => Arc::ptr_eq(a, b) || a.uid == b.uid,
            (Owner::Unattributed, Owner::Unattributed) => true,
            _ => false,
        }
    }
}

impl Eq for Owner {}

impl std::hash::Hash for Owner {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uid().hash(state);
    }
}

impl PartialOrd for Owner {
    fn partial_cmp(&self, other: &Owner) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Owner {
    fn cmp(&self, other: &Owner) -> std::cmp::Ordering {
        match (self, other) {
            (Owner::Pod(a), Owner::Pod(b)) if Arc::ptr_eq(a, b) => std::cmp::Ordering::Equal,
            _ => self.uid().cmp(&other.uid()),
        }
    }
}

/// What makes two occurrences "the same failure".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    owner: Owner,
    container: Option<Arc<str>>,
    detail: DetailKey,
    /// A folded record's key ([`DetailKey::folded`]), kept apart from a single sender's.
    folded: bool,
}

impl Key {
    fn of(o: &Occurrence, folded: bool) -> Key {
        let detail = o.detail.key();
        Key {
            kind: o.kind(),
            owner: owner_of(o.subject.pod.as_ref()),
            container: o.subject.container.clone(),
            detail: if folded { detail.folded() } else { detail },
            folded,
        }
    }

    fn of_evidence(e: &Evidence) -> Key {
        let detail = e.detail.key();
        let folded = e.folded.is_some();
        Key {
            kind: e.kind(),
            owner: owner_of(e.subject.pod.as_ref()),
            container: e.subject.container.clone(),
            detail: if folded { detail.folded() } else { detail },
            folded,
        }
    }
}

fn owner_of(pod: Option<&Arc<PodRef>>) -> Owner {
    pod.map_or(Owner::Unattributed, |p| Owner::Pod(p.clone()))
}

impl Owner {
    /// The owner's name for the [`Backend`]: the pod's uid, "" for the unattributed records.
    fn name(&self) -> &str {
        match self {
            Owner::Pod(p) => &p.uid,
            Owner::Unattributed => "",
        }
    }

    /// The owner [`Owner::name`] names (only its uid is known).
    fn from_name(name: &str) -> Owner {
        match name {
            "" => Owner::Unattributed,
            uid => Owner::Pod(Arc::new(PodRef {
                namespace: String::new(),
                name: String::new(),
                uid: uid.to_owned(),
            })),
        }
    }
}

/// What one owner lost to evictions for room, kept by the [`Backend`] across restarts so an
/// answer after a restart still says what was evicted before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evictions {
    /// The pod (`None` for the unattributed records).
    pub pod: Option<Arc<PodRef>>,
    /// Records evicted.
    pub evicted: u64,
    /// Newest last_seen among them.
    pub newest: SystemTime,
}

/// A hasher that gathers a key's bytes and hands them to `inner` in one write: a key is a
/// score of small fields, and SipHash pays for each write. SipHash streams, so the hash is the
/// one `inner` would give the same bytes written one by one. Past the buffer, bytes stream on.
struct Buffered<H> {
    inner: H,
    buf: [u8; 256],
    len: usize,
}

impl<H: std::hash::Hasher + Clone> std::hash::Hasher for Buffered<H> {
    fn write(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(room) = self.buf.get_mut(self.len..end) {
            room.copy_from_slice(bytes);
            self.len = end;
            return;
        }
        self.inner
            .write(self.buf.get(..self.len).unwrap_or_default());
        self.len = 0;
        self.inner.write(bytes);
    }

    fn finish(&self) -> u64 {
        let mut h = self.inner.clone();
        h.write(self.buf.get(..self.len).unwrap_or_default());
        h.finish()
    }
}

/// One owner's records in last-seen order (oldest first) and what it lost.
#[derive(Default)]
struct OwnerState {
    pod: Option<Arc<PodRef>>,
    /// Its own records (not peer-driven), oldest first.
    own: List,
    /// Its inbound (peer-driven) records, oldest first: evicted first.
    inbound: List,
    evicted: u64,
    /// Newest last_seen among this owner's evicted records.
    evicted_newest: Option<SystemTime>,
    /// Where the owner is filed in the [`Ranking`]: its rank and the pod whose namespace
    /// filed it; `None` while it holds no record.
    ranked: Option<(Rank, Option<Arc<PodRef>>)>,
}

impl OwnerState {
    /// Records held.
    fn len(&self) -> usize {
        self.own.len() + self.inbound.len()
    }

    /// Its oldest record: index and (last_seen, id).
    fn oldest(&self, records: &Records) -> Option<(u32, (u64, u64))> {
        match (records.first(&self.own), records.first(&self.inbound)) {
            (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// An owner's place in the eviction order: the most records first; of equal counts, the one
/// holding the oldest record (its (last_seen, id), unique to one record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    most: std::cmp::Reverse<usize>,
    oldest: (u64, u64),
}

/// The owners holding records in eviction order, over all and per namespace (of the owner's
/// pod), so that the biggest owner is found in O(log owners). Kept in step with every change
/// to an owner's records or pod by [`Ranking::file`]. A rank names its owner's own oldest
/// record (its sequence is unique), so no two owners share one.
#[derive(Default)]
struct Ranking {
    all: BTreeMap<Rank, Owner>,
    by_namespace: foldhash::HashMap<String, BTreeMap<Rank, Owner>>,
}

/// Moves `owner` in `set` from rank `was` to rank `now` (either absent: in or out only).
fn rerank(set: &mut BTreeMap<Rank, Owner>, was: Option<Rank>, now: Option<Rank>, owner: &Owner) {
    let moved = was.and_then(|was| set.remove(&was));
    if let Some(now) = now {
        set.insert(now, moved.unwrap_or_else(|| owner.clone()));
    }
}

impl Ranking {
    /// Files `owner` where its records and pod now put it (takes it out when it holds none).
    fn file(&mut self, owner: &Owner, state: &mut OwnerState, records: &Records) {
        let rank = state.oldest(records).map(|(_, oldest)| Rank {
            most: std::cmp::Reverse(state.len()),
            oldest,
        });
        fn namespace(pod: &Option<Arc<PodRef>>) -> Option<&str> {
            pod.as_ref().map(|p| p.namespace.as_str())
        }
        let was = state
            .ranked
            .as_ref()
            .map(|(rank, pod)| (*rank, namespace(pod)));
        let now = rank.map(|rank| (rank, namespace(&state.pod)));
        if was == now {
            return;
        }
        rerank(&mut self.all, was.map(|w| w.0), rank, owner);
        let from = was.and_then(|(rank, ns)| Some((rank, ns?)));
        let to = now.and_then(|(rank, ns)| Some((rank, ns?)));
        match (from, to) {
            // The same namespace: one lookup.
            (Some((was, from)), Some((now, to))) if std::ptr::eq(from, to) || from == to => {
                match self.by_namespace.get_mut(from) {
                    Some(set) => rerank(set, Some(was), Some(now), owner),
                    None => {
                        self.by_namespace
                            .insert(to.to_owned(), BTreeMap::from([(now, owner.clone())]));
                    }
                }
            }
            _ => {
                if let Some((was, from)) = from
                    && let Some(set) = self.by_namespace.get_mut(from)
                {
                    set.remove(&was);
                    if set.is_empty() {
                        self.by_namespace.remove(from);
                    }
                }
                if let Some((now, to)) = to {
                    match self.by_namespace.get_mut(to) {
                        Some(set) => rerank(set, None, Some(now), owner),
                        None => {
                            self.by_namespace
                                .insert(to.to_owned(), BTreeMap::from([(now, owner.clone())]));
                        }
                    }
                }
            }
        }
        match (&mut state.ranked, rank) {
            // The pod is most often the one it was filed with: kept, not cloned again.
            (Some((filed, pod)), Some(rank)) => {
                *filed = rank;
                let same = match (&*pod, &state.pod) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    *pod = state.pod.clone();
                }
            }
            (ranked, rank) => *ranked = rank.map(|rank| (rank, state.pod.clone())),
        }
    }

    /// The owner with the most records (in `namespace`, when given); of equal owners, the one
    /// with the oldest record.
    fn biggest(&self, namespace: Option<&str>) -> Option<&Owner> {
        let set = match namespace {
            None => &self.all,
            Some(ns) => self.by_namespace.get(ns)?,
        };
        set.first_key_value().map(|(_, owner)| owner)
    }
}

/// Store counters for Status and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub records: u64,
    pub capacity: u64,
    /// Records evicted for room: [`Loss::StoreEvicted`], so with the store on disk since the
    /// first start on it (it continues across restarts, as the loss counters do).
    pub evicted: u64,
    /// Records expired for age since this start.
    pub expired: u64,
    pub subscribers: u64,
    /// Occurrences recorded since the agent started, by kind and namespace ("" when tied to no
    /// pod; [`OTHER_NAMESPACES`] beyond [`METRIC_NAMESPACES`] namespaces).
    pub occurrences: Vec<(Kind, String, u64)>,
    /// Occurrences by node-level failure counter (family and labels), since the agent started.
    pub failures: Vec<(crate::evidence::FailureCounter, u64)>,
}

/// What the persistent store ([`persist`], node agent only) is doing, for Status, `/readyz`
/// and the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PersistState {
    pub path: std::path::PathBuf,
    /// Records read back at startup.
    pub restored: u64,
    /// The file that was found unusable and moved aside at startup, with why.
    pub moved_aside: Option<(std::path::PathBuf, String)>,
    /// Bytes the records use in the file (pages in use), after the last commit.
    pub used_bytes: u64,
    pub max_bytes: u64,
    /// When the last batch was committed.
    pub last_commit: Option<SystemTime>,
    /// Batches committed since start.
    pub commits: u64,
    /// The last commit's error, cleared by the next successful one.
    pub error: Option<String>,
    /// Records whose newest change is not committed yet: waiting for the writer or being
    /// written (a busy or failing disk makes this grow, up to the backlog's bound). 0 means
    /// everything the store held when it was read is on disk.
    pub pending: u64,
}

/// Shared view of [`PersistState`].
#[derive(Debug, Default)]
pub struct PersistHealth {
    state: std::sync::Mutex<PersistState>,
    /// Records in the backlog: their newest change is not committed yet.
    pub(crate) queued: AtomicU64,
}

impl PersistHealth {
    pub fn get(&self) -> PersistState {
        use std::sync::atomic::Ordering::SeqCst;
        let mut s = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        s.pending = self.queued.load(SeqCst);
        s
    }

    pub fn update(&self, f: impl FnOnce(&mut PersistState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }
}

/// Distinct namespaces the occurrence counters keep apart (a bound on metric cardinality).
pub const METRIC_NAMESPACES: usize = 1000;
/// The namespace label of occurrences beyond [`METRIC_NAMESPACES`].
pub const OTHER_NAMESPACES: &str = "_other";
/// Most label sets of the node-level failure counters together (kernel drop reasons x
/// directions, DNS outcomes, refusal causes: under 200 in practice); beyond it, `_other`.
pub const FAILURE_SERIES: usize = 256;

/// A query's answer.
#[derive(Clone, Debug, Default)]
pub struct QueryResult {
    pub evidence: Vec<Evidence>,
    pub truncated: bool,
    /// Records of the pods asked about that were evicted for room and had been seen inside
    /// the query's window: the answer lacks them.
    pub evicted: u64,
    /// DNS lookup counters of the pods asked about (since the agent started; with the store on
    /// disk, since the first start on it).
    pub dns_lookups: Vec<(Arc<PodRef>, DnsLookups)>,
    /// What the kernel lost of the pods asked about (since the agent started; with the store on
    /// disk, since the first start on it), and when each pod's losses last grew.
    pub pod_losses: Vec<(Arc<PodRef>, PodLosses, SystemTime)>,
}

/// A query's records as the store selected them: the newest `limit` (and whether there were
/// more), in no order. Sorting is [`Selection::finish`]'s, done by whoever asked, so a large
/// answer's sort does not hold the store task (which every occurrence goes through).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    evidence: Vec<Evidence>,
    truncated: bool,
    evicted: u64,
    dns_lookups: Vec<(Arc<PodRef>, DnsLookups)>,
    pod_losses: Vec<(Arc<PodRef>, PodLosses, SystemTime)>,
}

impl Selection {
    /// Records matching: this many.
    pub fn len(&self) -> usize {
        self.evidence.len()
    }

    pub fn is_empty(&self) -> bool {
        self.evidence.is_empty()
    }

    /// The answer: records most recent first (of equal times, the higher count first), DNS
    /// lookup counters by pod.
    pub fn finish(self) -> QueryResult {
        let Selection {
            mut evidence,
            truncated,
            evicted,
            mut dns_lookups,
            mut pod_losses,
        } = self;
        evidence.sort_by(newest_first);
        dns_lookups.sort_by(|a, b| a.0.cmp(&b.0));
        pod_losses.sort_by(|a, b| a.0.cmp(&b.0));
        QueryResult {
            evidence,
            truncated,
            evicted,
            dns_lookups,
            pod_losses,
        }
    }
}

/// The answer's order: most recent first, then the higher count.
fn newest_first(a: &Evidence, b: &Evidence) -> std::cmp::Ordering {
    b.last_seen.cmp(&a.last_seen).then(b.count.cmp(&a.count))
}

/// Pods whose DNS lookup counters are kept, at most (the least recently updated go first,
/// counted as [`Loss::DnsLookupsForgotten`] by their lookups).
pub const DNS_LOOKUP_PODS: usize = 8192;

/// Where records go besides memory (the persistent store, [`persist`]): told of every change,
/// in order, with the record's lasting id; [`Backend::flush`] is called every batch interval
/// and at shutdown.
pub trait Backend: Send {
    fn upsert(&mut self, id: u64, e: &Evidence);
    fn remove(&mut self, id: u64, e: &Evidence);
    fn flush(&mut self) {}
    /// Asked after each flush: how many records the backend needs evicted (its size budget is
    /// exceeded). The store evicts them fairly, as for room, and counts them.
    fn shrink(&mut self, records: usize) -> usize {
        let _ = records;
        0
    }
    /// At shutdown, after the last flush: finish writing (blocking; called off the runtime).
    fn close(self: Box<Self>) {}
    /// An owner's evictions changed (`None`: the owner is forgotten); `owner` is its name
    /// (the pod's uid, "" for the unattributed records). Told before each flush.
    fn evictions(&mut self, owner: &str, evictions: Option<&Evictions>) {
        let _ = (owner, evictions);
    }
    /// A pod's DNS lookup counters changed (`None`: the store forgot them for room); `pod` is
    /// its uid. Told before each flush.
    fn dns_lookups(&mut self, pod: &str, lookups: Option<&PodLookups>) {
        let _ = (pod, lookups);
    }
    /// A pod's kernel losses changed (`None`: the store forgot them for room); `pod` is its
    /// uid. Told before each flush.
    fn pod_losses(&mut self, pod: &str, losses: Option<&PodLossTally>) {
        let _ = (pod, losses);
    }
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Evidence>,
    /// Set when the store dropped this watcher for being too slow.
    lag: Arc<Lag>,
}

/// A watcher the store dropped for being too slow, whose missed updates are still counted.
struct Behind {
    filter: Filter,
    lag: Arc<Lag>,
}

/// How a watcher fell behind: set when the store drops it for being too slow, with the updates
/// it missed from then on (the one that did not fit and every matching one after), counted
/// until the watcher subscribes again resuming this lag ([`StoreHandle::resubscribe`]) or
/// goes away.
///
/// Who counts the missed updates as a loss: for a watch (a gRPC `Watch` stream, which ends
/// when it is dropped; the client reconnects with a new one), the store, each one as
/// [`Loss::WatchLagged`] as it is missed; for a subscriber that resumes its lag
/// ([`Lag::resumable`], the OTLP exporter), the subscriber, from [`Lag::missed`] once it
/// subscribed again (`otlp_lagged`), so no update is counted twice.
#[derive(Debug, Default)]
pub struct Lag {
    dropped: AtomicBool,
    missed: AtomicU64,
    /// The subscriber resumes this lag and counts what it missed itself.
    resumable: bool,
}

impl Lag {
    /// The lag of a subscriber that resumes it when it subscribes again and counts what it
    /// missed itself.
    pub fn resumable() -> Lag {
        Lag {
            resumable: true,
            ..Lag::default()
        }
    }

    /// Whether the store dropped the watcher for being too slow.
    pub fn is_lagged(&self) -> bool {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Updates the watcher missed since it was dropped (final once it resubscribed).
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

/// The aggregation state (synchronous, unit-tested); [`task`] owns it.
pub struct Store {
    node: Arc<str>,
    config: StoreConfig,
    records: Records,
    /// Maps keyed by pod uids and namespaces (what the cluster names, never a packet's sender)
    /// hash with foldhash: they are looked up several times per occurrence.
    owners: foldhash::HashMap<Owner, OwnerState>,
    /// The owners in eviction order.
    ranking: Ranking,
    namespaces: foldhash::HashMap<String, usize>,
    /// Last record id handed out (ids survive restarts through [`Store::restore`]).
    last_id: u64,
    expired: u64,
    counters: Arc<Counters>,
    subscribers: Vec<Subscriber>,
    /// Watchers dropped for being too slow, counting what they miss (at most
    /// [`MAX_SUBSCRIBERS`], apart from the subscribers: a dropped watcher that keeps its
    /// stream open without reading must not hold a watcher's place).
    behind: Vec<Behind>,
    backend: Option<Box<dyn Backend>>,
    /// Occurrences by kind and namespace, for the metrics.
    occurrences: foldhash::HashMap<(Kind, Arc<str>), u64>,
    metric_namespaces: foldhash::HashSet<Arc<str>>,
    /// Occurrences by node-level failure counter (at most [`FAILURE_SERIES`] label sets).
    failures: foldhash::HashMap<crate::evidence::FailureCounter, u64>,
    /// Per pod uid: the pod, its DNS lookup counters and when they last changed.
    dns_lookups: HashMap<String, (Arc<PodRef>, DnsLookups, SystemTime)>,
    /// What the kernel lost of each pod's evidence.
    pod_losses: pod_losses::PodLossBook,
    /// Owners whose evictions changed since the backend was last told.
    evictions_changed: foldhash::HashSet<Owner>,
    /// Pods (uids) whose DNS lookup counters changed since the backend was last told.
    dns_lookups_changed: HashSet<String>,
    /// Pods (uids) whose kernel losses changed (or were forgotten) since the backend was last
    /// told.
    pod_losses_changed: HashSet<String>,
}

impl Store {
    pub fn new(mut config: StoreConfig, counters: Arc<Counters>) -> Store {
        config.capacity = config.capacity.min(records::MAX_RECORDS);
        Store {
            node: config.node.as_str().into(),
            config,
            records: Records::default(),
            owners: foldhash::HashMap::default(),
            ranking: Ranking::default(),
            namespaces: foldhash::HashMap::default(),
            last_id: 0,
            expired: 0,
            counters,
            subscribers: Vec::new(),
            behind: Vec::new(),
            backend: None,
            dns_lookups: HashMap::new(),
            pod_losses: pod_losses::PodLossBook::default(),
            occurrences: foldhash::HashMap::default(),
            failures: foldhash::HashMap::default(),
            metric_namespaces: foldhash::HashSet::default(),
            evictions_changed: foldhash::HashSet::default(),
            dns_lookups_changed: HashSet::new(),
            pod_losses_changed: HashSet::new(),
        }
    }

    pub fn set_backend(&mut self, backend: Box<dyn Backend>) {
        self.backend = Some(backend);
    }

    /// The backend, taken out for [`Backend::close`] at shutdown (after a last flush).
    pub fn take_backend(&mut self) -> Option<Box<dyn Backend>> {
        self.flush_backend();
        self.backend.take()
    }

    /// What attribution found: an occurrence, or a pod's lookup counters (kept beside the
    /// records, never as one).
    pub fn add(&mut self, a: Attributed) {
        match a {
            Attributed::Occurrence(o) => self.record(o),
            Attributed::DnsLookups(l) => self.add_dns_lookups(&l.pod, &l.lookups, l.at),
            Attributed::PodLosses(l) => self.add_pod_losses(&l.pod, &l.losses, l.at),
        }
    }

    /// Adds one occurrence: a new record or one more count on an existing one.
    pub fn record(&mut self, o: Occurrence) {
        self.count_occurrence(&o);
        let mut key = Key::of(&o, false);
        let mut hash = self.records.hash(&key);
        let inbound = o.detail.folding().is_some();
        let (inbound_len, owner_len) = self
            .owners
            .get(&key.owner)
            .map_or((0, 0), |s| (s.inbound.len(), s.len()));
        let at_quota = owner_len >= self.own_quota(&key.owner);
        let mut found = self.records.find(hash, &key);
        // A new inbound record past the pod's allowance, or when the pod is at its quota (each
        // would push out the one before), is folded.
        let folded = inbound && found.is_none() && (inbound_len >= INBOUND_RECORDS || at_quota);
        if folded {
            key = Key::of(&o, true);
            hash = self.records.hash(&key);
            found = self.records.find(hash, &key);
            // A pod at its quota with its own evidence only: a new folded record would push
            // some out. The occurrence is given up instead, counted as evicted for the pod.
            if at_quota && inbound_len == 0 && found.is_none() {
                self.give_up(&key.owner, o.at);
                return;
            }
        }
        let told =
            self.backend.is_some() || !self.subscribers.is_empty() || !self.behind.is_empty();
        let updated = if let Some(i) = found {
            let state = self.owners.entry(key.owner.clone()).or_default();
            let list = match self.records.inbound(i) {
                true => &mut state.inbound,
                false => &mut state.own,
            };
            self.records.unlink(list, i);
            self.records.absorb(i, o, &self.node);
            self.records.link(list, i);
            self.ranking.file(&key.owner, state, &self.records);
            told.then(|| self.records.evidence(i, &self.node))
                .flatten()
                .zip(self.records.id(i))
        } else {
            let pod = o.subject.pod.clone();
            let evicted = self.make_room(&key.owner, pod.as_deref().map(|p| p.namespace.as_str()));
            let node = self.node.clone();
            let evidence = match folded {
                // Only inbound occurrences fold, and they all can.
                true => Evidence::first_folded(node, o),
                false => Evidence::first(node, o),
            };
            self.last_id += 1;
            let id = self.last_id;
            // The owner that made room is filed with the new record's (once when the same).
            let other = evicted.filter(|e| *e != key.owner);
            let copy = told.then(|| evidence.clone());
            self.insert(hash, &key.owner, evidence, id);
            if let Some(other) = other {
                self.file(&other);
            }
            // Nobody to tell: the record moved in without a copy.
            copy.map(|e| (e, id))
        };
        let Some((updated, id)) = updated else { return };
        if let Some(b) = &mut self.backend {
            b.upsert(id, &updated);
        }
        self.publish(&updated);
    }

    fn insert(&mut self, hash: u64, owner: &Owner, evidence: Evidence, id: u64) {
        let state = self.owners.entry(owner.clone()).or_default();
        if let Some(pod) = &evidence.subject.pod {
            match self.namespaces.get_mut(pod.namespace.as_str()) {
                Some(n) => *n += 1,
                None => {
                    self.namespaces.insert(pod.namespace.clone(), 1);
                }
            }
            let same = state.pod.as_ref().is_some_and(|p| Arc::ptr_eq(p, pod));
            if !same {
                state.pod = Some(pod.clone());
            }
        }
        let inbound = evidence.detail.folding().is_some();
        let i = self.records.insert(hash, evidence, id);
        let list = match inbound {
            true => &mut state.inbound,
            false => &mut state.own,
        };
        self.records.link(list, i);
        self.ranking.file(owner, state, &self.records);
    }

    /// Puts back a record kept by the backend before a restart, under its id; call in
    /// last-seen order, oldest first, so that if the bounds shrank the newest stay. Quotas
    /// apply as for new records (an eviction goes to the backend too); the backend is not told
    /// of the record itself, which it already holds. A second record with the same key (only
    /// possible from a damaged file) is removed from the backend.
    pub fn restore(&mut self, id: u64, evidence: Evidence) {
        self.last_id = self.last_id.max(id);
        let key = Key::of_evidence(&evidence);
        let hash = self.records.hash(&key);
        if self.records.find(hash, &key).is_some() {
            if let Some(b) = &mut self.backend {
                b.remove(id, &evidence);
            }
            return;
        }
        let evicted = self.make_room(&key.owner, evidence.pod().map(|p| p.namespace.as_str()));
        let other = evicted.filter(|e| *e != key.owner);
        self.insert(hash, &key.owner, evidence, id);
        if let Some(other) = other {
            self.file(&other);
        }
    }

    /// Puts back an owner's evictions kept by the backend before a restart (`owner` as
    /// [`Backend::evictions`] names it), added to what it counted since; call before
    /// [`Store::sweep`], which forgets those past the retention.
    pub fn restore_evictions(&mut self, owner: &str, saved: Evictions) {
        let owner = Owner::from_name(owner);
        let state = self.owners.entry(owner.clone()).or_default();
        state.evicted = state.evicted.saturating_add(saved.evicted);
        state.evicted_newest = state.evicted_newest.max(Some(saved.newest));
        if state.pod.is_none() {
            state.pod = saved.pod;
            self.ranking.file(&owner, state, &self.records);
        }
    }

    /// Puts back a pod's DNS lookup counters kept by the backend before a restart, added to
    /// what was counted since (the backend already holds them).
    pub fn restore_dns_lookups(&mut self, saved: PodLookups) {
        let uid = saved.pod.uid.clone();
        let changed = self.dns_lookups_changed.contains(&uid);
        self.add_dns_lookups(&saved.pod, &saved.lookups, saved.at);
        if !changed {
            self.dns_lookups_changed.remove(&uid);
        }
    }

    /// Puts back a pod's kernel losses kept by the backend before a restart, added to what was
    /// counted since (the backend already holds them).
    pub fn restore_pod_losses(&mut self, saved: PodLossTally) {
        let uid = saved.pod.uid.clone();
        let changed = self.pod_losses_changed.contains(&uid);
        self.add_pod_losses(&saved.pod, &saved.losses, saved.at);
        if !changed {
            self.pod_losses_changed.remove(&uid);
        }
    }

    fn add_pod_losses(&mut self, pod: &Arc<PodRef>, losses: &PodLosses, at: SystemTime) {
        let forgotten = self.pod_losses.add(pod, losses, at);
        if self.backend.is_some() {
            self.pod_losses_changed.extend(forgotten);
            self.pod_losses_changed.insert(pod.uid.clone());
        }
    }

    /// Hands the backend's pending changes over (see [`Backend::flush`]) and evicts what it
    /// asks to be evicted for its size budget.
    pub fn flush_backend(&mut self) {
        let Some(b) = &mut self.backend else { return };
        for uid in self.pod_losses_changed.drain() {
            b.pod_losses(&uid, self.pod_losses.get(&uid).as_ref());
        }
        for uid in self.dns_lookups_changed.drain() {
            let saved = self
                .dns_lookups
                .get(&uid)
                .map(|(pod, lookups, at)| PodLookups {
                    at: *at,
                    pod: pod.clone(),
                    lookups: *lookups,
                });
            b.dns_lookups(&uid, saved.as_ref());
        }
        for owner in self.evictions_changed.drain() {
            let saved = self.owners.get(&owner).and_then(|s| {
                Some(Evictions {
                    pod: s.pod.clone(),
                    evicted: s.evicted,
                    newest: s.evicted_newest.filter(|_| s.evicted > 0)?,
                })
            });
            b.evictions(owner.name(), saved.as_ref());
        }
        b.flush();
        let mut n = b.shrink(self.records.len());
        while n > 0 {
            let Some(biggest) = self.biggest_owner(None) else {
                break;
            };
            if !self.evict_oldest_of(&biggest, false) {
                break;
            }
            n -= 1;
        }
    }

    fn count_occurrence(&mut self, o: &Occurrence) {
        let namespace: Arc<str> = match &o.subject.pod {
            None => "".into(),
            Some(p) => match self.metric_namespaces.get(p.namespace.as_str()) {
                Some(ns) => ns.clone(),
                None if self.metric_namespaces.len() < METRIC_NAMESPACES => {
                    let ns: Arc<str> = p.namespace.as_str().into();
                    self.metric_namespaces.insert(ns.clone());
                    ns
                }
                None => OTHER_NAMESPACES.into(),
            },
        };
        *self.occurrences.entry((o.kind(), namespace)).or_default() += o.count.max(1);
        if let Some(mut c) = o.detail.failure_counter() {
            if let Some(n) = self.failures.get_mut(&c) {
                *n += o.count.max(1);
                return;
            }
            // Label values come from fixed sets; the bound holds even if one did not.
            if self.failures.len() >= FAILURE_SERIES {
                for (_, value) in c.labels.iter_mut().flatten() {
                    *value = crate::evidence::Label::Static(OTHER_NAMESPACES);
                }
            }
            *self.failures.entry(c).or_default() += o.count.max(1);
        }
    }

    fn add_dns_lookups(&mut self, pod: &Arc<PodRef>, lookups: &DnsLookups, at: SystemTime) {
        if !self.dns_lookups.contains_key(&pod.uid)
            && self.dns_lookups.len() >= DNS_LOOKUP_PODS
            && let Some(oldest) = self
                .dns_lookups
                .iter()
                .min_by_key(|(_, (_, _, t))| *t)
                .map(|(uid, _)| uid.clone())
        {
            // Counted in what the pod's counters held: its lookups.
            if let Some((_, forgotten, _)) = self.dns_lookups.remove(&oldest) {
                self.counters
                    .add(Loss::DnsLookupsForgotten, forgotten.lookups);
            }
            if self.backend.is_some() {
                self.dns_lookups_changed.insert(oldest);
            }
        }
        let entry = self
            .dns_lookups
            .entry(pod.uid.clone())
            .or_insert_with(|| (pod.clone(), DnsLookups::default(), at));
        entry.1.add(lookups);
        entry.2 = entry.2.max(at);
        if self.backend.is_some() {
            self.dns_lookups_changed.insert(pod.uid.clone());
        }
    }

    fn owner_len(&self, owner: &Owner) -> usize {
        self.owners.get(owner).map_or(0, OwnerState::len)
    }

    /// Before a new record of `owner` (in `namespace`) is added: evicts from whoever is over
    /// quota, oldest first.
    fn own_quota(&self, owner: &Owner) -> usize {
        match owner {
            Owner::Pod(_) => self.config.pod_quota,
            Owner::Unattributed => self.config.unattributed_quota,
        }
    }

    /// An occurrence not kept, so that the owner keeps its own evidence: counted as one
    /// record evicted for it, seen at `at`.
    fn give_up(&mut self, owner: &Owner, at: SystemTime) {
        let Some(state) = self.owners.get_mut(owner) else {
            return;
        };
        state.evicted += 1;
        state.evicted_newest = state.evicted_newest.max(Some(at));
        if self.backend.is_some() {
            self.evictions_changed.insert(owner.clone());
        }
        self.counters.add(Loss::StoreEvicted, 1);
    }

    /// Evicts one record if `owner`'s new record needs room; returns whose it was. That owner
    /// is left for the caller to file in the ranking ([`Store::file`]) once the new record is
    /// in: the two are often the same owner, filed once.
    fn make_room(&mut self, owner: &Owner, namespace: Option<&str>) -> Option<Owner> {
        let own_quota = self.own_quota(owner);
        let from = if self.owner_len(owner) >= own_quota {
            owner.clone()
        } else if let Some(ns) = namespace
            && self.namespaces.get(ns).copied().unwrap_or(0) >= self.config.namespace_quota
            && let Some(biggest) = self.biggest_owner(Some(ns))
        {
            biggest
        } else if self.records.len() >= self.config.capacity
            && let Some(biggest) = self.biggest_owner(None)
        {
            biggest
        } else {
            return None;
        };
        self.evict_oldest(&from, false, false);
        Some(from)
    }

    /// Files `owner` in the ranking as its records now stand.
    fn file(&mut self, owner: &Owner) {
        if let Some(state) = self.owners.get_mut(owner) {
            self.ranking.file(owner, state, &self.records);
        }
    }

    /// The owner with the most records (in `namespace`, when given); of equal owners, the one
    /// with the oldest record.
    fn biggest_owner(&self, namespace: Option<&str>) -> Option<Owner> {
        self.ranking.biggest(namespace).cloned()
    }

    /// Removes the owner's least recently seen record; `expired` tells age from room. For room,
    /// an inbound record goes first: what others send to a pod never pushes out its own.
    fn evict_oldest_of(&mut self, owner: &Owner, expired: bool) -> bool {
        self.evict_oldest(owner, expired, true)
    }

    /// [`Store::evict_oldest_of`]; unless `file`, the owner is left for the caller to file in
    /// the ranking before the next look at it.
    fn evict_oldest(&mut self, owner: &Owner, expired: bool, file: bool) -> bool {
        let Some(state) = self.owners.get_mut(owner) else {
            return false;
        };
        let oldest = match expired {
            false => self
                .records
                .first(&state.inbound)
                .or_else(|| self.records.first(&state.own)),
            true => state.oldest(&self.records),
        };
        let Some((i, _)) = oldest else {
            return false;
        };
        self.remove(owner, i, expired, file)
    }

    /// Removes record `i` of `owner`; `expired` tells age from room. Unless `file`, the owner
    /// is left for the caller to file in the ranking.
    fn remove(&mut self, owner: &Owner, i: u32, expired: bool, file: bool) -> bool {
        let Some(state) = self.owners.get_mut(owner) else {
            return false;
        };
        let list = match self.records.inbound(i) {
            true => &mut state.inbound,
            false => &mut state.own,
        };
        self.records.unlink(list, i);
        if file {
            self.ranking.file(owner, state, &self.records);
        }
        let hash = self.records.hash_of(i);
        let node = self.backend.is_some().then_some(&self.node);
        let Some(removed) = self.records.remove(hash, i, node) else {
            return false;
        };
        if expired {
            self.expired += 1;
        } else {
            state.evicted += 1;
            state.evicted_newest = state.evicted_newest.max(Some(removed.last_seen));
            if self.backend.is_some() {
                self.evictions_changed.insert(owner.clone());
            }
            self.counters.add(Loss::StoreEvicted, 1);
        }
        if let Some(pod) = &state.pod
            && let Some(n) = self.namespaces.get_mut(&pod.namespace)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.namespaces.remove(&pod.namespace);
            }
        }
        if let Some(b) = &mut self.backend
            && let Some(e) = &removed.evidence
        {
            b.remove(removed.id, e);
        }
        true
    }

    /// Expires records not seen within the retention, and forgets owners with nothing left to
    /// say (no records, no evictions inside the retention).
    pub fn sweep(&mut self, now: SystemTime) {
        let horizon = now
            .checked_sub(self.config.max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let before = stamp(horizon);
        let owners: Vec<Owner> = self.owners.keys().cloned().collect();
        for owner in owners {
            // In order, the oldest first while out of the window; a list out of order is
            // looked at whole.
            let mut expired = Vec::new();
            if let Some(s) = self.owners.get(&owner) {
                for list in [&s.own, &s.inbound] {
                    if !list.sorted {
                        expired.extend(
                            self.records
                                .newest_first(list)
                                .filter(|&i| self.records.place(i).is_some_and(|p| p.0 < before)),
                        );
                    }
                }
            }
            for i in expired {
                self.remove(&owner, i, true, true);
            }
            while let Some((i, _)) = self
                .owners
                .get(&owner)
                .and_then(|s| s.oldest(&self.records))
                .filter(|(_, (last_seen, _))| *last_seen < before)
            {
                self.remove(&owner, i, true, true);
            }
        }
        let changed = &mut self.evictions_changed;
        let told = self.backend.is_some();
        let ranking = &mut self.ranking;
        let records = &self.records;
        self.owners.retain(|owner, s| {
            let keep = s.len() > 0 || s.evicted_newest.is_some_and(|t| t >= horizon);
            if !keep && told && s.evicted > 0 {
                changed.insert(owner.clone());
            }
            if !keep {
                // Holds no record, so filed nowhere; made sure of.
                ranking.file(owner, s, records);
            }
            keep
        });
    }

    fn publish(&mut self, e: &Evidence) {
        // Updates dropped watches miss (not those of resumable subscribers, which count their
        // own): the one that did not fit, and every matching one until the watch is gone.
        let mut lagged = 0;
        // A dropped watcher nobody holds any more has nothing left to count for.
        self.behind.retain(|b| {
            let held = Arc::strong_count(&b.lag) > 1;
            if held && b.filter.matches(e) {
                b.lag.missed.fetch_add(1, Ordering::Relaxed);
                lagged += u64::from(!b.lag.resumable);
            }
            held
        });
        let behind = &mut self.behind;
        self.subscribers.retain(|s| {
            if !s.filter.matches(e) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(e.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lag.dropped.store(true, Ordering::Relaxed);
                    s.lag.missed.fetch_add(1, Ordering::Relaxed);
                    // Bounded apart from the watchers: a dropped watcher never holds a
                    // watcher's place (the oldest stops being counted past the bound).
                    if behind.len() >= MAX_SUBSCRIBERS {
                        behind.remove(0);
                    }
                    behind.push(Behind {
                        filter: s.filter.clone(),
                        lag: s.lag.clone(),
                    });
                    lagged += u64::from(!s.lag.resumable);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if lagged > 0 {
            self.counters.add(Loss::WatchLagged, lagged);
        }
    }

    /// Records matching `filter`, most recent first, at most `limit`.
    pub fn query(&self, filter: &Filter, limit: usize) -> QueryResult {
        self.select(filter, limit).finish()
    }

    /// The records [`Store::query`] answers with, unsorted: matches are found by reference,
    /// the newest `limit` picked in linear time, and only those cloned.
    pub fn select(&self, filter: &Filter, limit: usize) -> Selection {
        // (last_seen, count, index): what the answer's order needs, before any record is
        // built.
        let mut found: Vec<(u64, u64, u32)> = Vec::new();
        let mut evicted = 0;
        let since = filter.since.map(stamp);
        for (owner, state) in &self.owners {
            let pod = match owner {
                Owner::Unattributed => None,
                Owner::Pod(_) => state.pod.as_deref(),
            };
            if !filter.matches_pod(pod) {
                continue;
            }
            if state
                .evicted_newest
                .is_some_and(|t| filter.since.is_none_or(|since| t >= since))
            {
                evicted += state.evicted;
            }
            for list in [&state.own, &state.inbound] {
                // Newest first: stop at the window's start (when the list is in order).
                for i in self.records.newest_first(list) {
                    let Some((kind, last_seen, count)) = self.records.summary(i) else {
                        continue;
                    };
                    if since.is_some_and(|since| last_seen < since) {
                        if list.sorted {
                            break;
                        }
                        continue;
                    }
                    if filter.kinds.is_empty() || filter.kinds.contains(&kind) {
                        found.push((last_seen, count, i));
                    }
                }
            }
        }
        let truncated = found.len() > limit;
        // The newest first, then the higher count.
        let order = |a: &(u64, u64, u32), b: &(u64, u64, u32)| b.0.cmp(&a.0).then(b.1.cmp(&a.1));
        if truncated {
            // The first `limit` are then the newest, in no order.
            found.select_nth_unstable_by(limit, order);
            found.truncate(limit);
        }
        Selection {
            evidence: found
                .into_iter()
                .filter_map(|(_, _, i)| self.records.evidence(i, &self.node))
                .collect(),
            truncated,
            evicted,
            dns_lookups: self
                .dns_lookups
                .values()
                .filter(|(pod, _, _)| filter.matches_pod(Some(pod)))
                .map(|(pod, l, _)| (pod.clone(), *l))
                .collect(),
            pod_losses: self.pod_losses.select(filter),
        }
    }

    /// Adds a watcher, unless [`MAX_SUBSCRIBERS`] are already watching. `resume`: the lag of
    /// this watcher's earlier subscription, whose count of missed updates stops here when the
    /// watcher is added (final then).
    pub fn subscribe(
        &mut self,
        filter: Filter,
        tx: mpsc::Sender<Evidence>,
        lag: Arc<Lag>,
        resume: Option<&Arc<Lag>>,
    ) -> bool {
        self.subscribers.retain(|s| !s.tx.is_closed());
        self.behind.retain(|b| Arc::strong_count(&b.lag) > 1);
        let resumed = |b: &Behind| resume.is_some_and(|r| Arc::ptr_eq(r, &b.lag));
        if self.subscribers.len() >= MAX_SUBSCRIBERS {
            // Refused: a resumed lag goes on counting until the watcher gets its place.
            return false;
        }
        self.behind.retain(|b| !resumed(b));
        self.subscribers.push(Subscriber { filter, tx, lag });
        true
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            records: self.records.len() as u64,
            capacity: self.config.capacity as u64,
            // The loss counter is the one count of evictions: it continues across restarts
            // with the store on disk (persisted with the other loss counters).
            evicted: self.counters.get(Loss::StoreEvicted),
            expired: self.expired,
            subscribers: self.subscribers.len() as u64,
            occurrences: self
                .occurrences
                .iter()
                .map(|((kind, ns), n)| (*kind, ns.to_string(), *n))
                .collect(),
            failures: {
                let mut f: Vec<_> = self.failures.iter().map(|(c, n)| (c.clone(), *n)).collect();
                f.sort();
                f
            },
        }
    }
}

#[cfg(test)]
mod tests;
