//! Evidence that survives restarts and upgrades: the store's records mirrored into an SQLite
//! file on the node (WAL journal, `synchronous=FULL`), written in batches off the hot path and
//! read back at startup.
//!
//! - The store tells the [`PersistBackend`] of every change (`upsert`/`remove` by the record's
//!   lasting id); changes wait keyed by id, so a record updated a thousand times in a batch
//!   interval is written once. Every [`super::BATCH_INTERVAL`] the store wakes the writer
//!   thread, which commits what waits as one transaction. A commit is the acknowledgement:
//!   `kill -9` (or a node crash) loses at most what changed since the last commit.
//! - Changes wait in one bounded backlog shared with the writer: the newest state of each
//!   record (a later upsert replaces an earlier one, a removal replaces pending upserts), at
//!   most [`PersistConfig::max_pending`] records. A record leaves it only when a commit holding
//!   its newest state succeeded, so `pending` is exactly what the disk lacks.
//! - When a commit fails (disk full, I/O error), the writer retries with backoff
//!   ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]), each time with the newest state of every
//!   record; [`PersistHealth`] says so (Status, `/readyz`, the metrics). While the disk keeps
//!   failing, changes of new records still arrive: past the bound the least recently changed
//!   record is given up (counted as `store_backlog_full`, in records), so a failing disk
//!   costs bounded memory, never an OOM kill. When the disk recovers, the newest state of every
//!   record kept is written.
//! - The file is bounded: it holds the store's records (bounded by count and age), and when its
//!   used pages exceed `max_bytes` the store evicts its oldest records fairly (counted as
//!   `store_evicted`) until it fits.
//! - What was lost is kept too, in the same transactions: the loss counters (with when each
//!   last grew and since when they count) whenever they grew, and each owner's evictions
//!   (what an answer about a pod says was evicted) whenever they changed. So are each pod's DNS
//!   lookup counters (an answer's "37 of 40 lookups succeeded") and each pod's kernel losses
//!   (what the kernel lost of the pod's evidence past its share of a table or ring) whenever
//!   they changed. At startup they are read back first, so the counters continue from where
//!   they were.
//! - At startup [`open`] reads every record back (a record that no longer decodes is removed
//!   and counted as `store_unreadable`). A file that is not this agent's store (another
//!   program's database, a damaged file, a newer schema) is moved aside with a clear error and
//!   a fresh store starts at the path: the agent never crash-loops on its own data. A second
//!   agent on the same file is refused (an advisory lock), so two never write one file.

use std::sync::atomic::Ordering::SeqCst;
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, mpsc},
    time::{Duration, Instant, SystemTime},
};

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use triage_agent_proto::v1 as pb;

use super::{Backend, Evictions, PersistHealth};
use crate::{
    attribute::{PodLookups, PodLossTally},
    codec,
    evidence::{
        Evidence, Named as _,
        wire::{pod_from_pb, pod_to_pb},
    },
    loss::{Counters, Loss, LossCounts},
};

/// `PRAGMA application_id` of a triage-agent store ("TRIA"): tells our file from any other
/// SQLite database.
const APPLICATION_ID: i32 = 0x5452_4941;
/// `PRAGMA user_version`: the schema. A file with a newer one is moved aside, not misread; an
/// older one is brought up to this one ([`MIGRATIONS`]).
const SCHEMA_VERSION: i32 = 4;
/// The records: a record's lasting id and its protobuf encoding.
const SCHEMA: &str = "CREATE TABLE evidence (id INTEGER PRIMARY KEY, record BLOB NOT NULL);";
/// Schema 2: what was lost, kept across restarts. `losses`: every loss counter by its stable
/// name, with when it last grew (Unix ms, 0 for never); `owners`: each owner's evictions for
/// room (the pod's uid, "" for the unattributed records; the pod as a protobuf `PodRef`; the
/// newest evicted record's last_seen in Unix ms); `meta`: `losses_since`, when the counters
/// began (Unix ms).
const SCHEMA_2: &str = "CREATE TABLE IF NOT EXISTS losses (name TEXT PRIMARY KEY, \
     count INTEGER NOT NULL, last_ms INTEGER NOT NULL); \
     CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, pod BLOB, \
     evicted INTEGER NOT NULL, newest_ms INTEGER NOT NULL); \
     CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);";
/// Schema 3: each pod's DNS lookup counters, kept across restarts. `dns_lookups`: the pod's
/// uid, its counters as a protobuf `DnsLookups` (the pod with them), when they last changed
/// (Unix ms).
const SCHEMA_3: &str = "CREATE TABLE IF NOT EXISTS dns_lookups (pod TEXT PRIMARY KEY, \
     lookups BLOB NOT NULL, at_ms INTEGER NOT NULL);";
/// Schema 4: each pod's kernel losses, kept across restarts. `pod_losses`: the pod's uid, its
/// losses as a protobuf `PodLosses` (the pod and when they last grew with them), when they last
/// grew (Unix ms).
const SCHEMA_4: &str = "CREATE TABLE IF NOT EXISTS pod_losses (pod TEXT PRIMARY KEY, \
     losses BLOB NOT NULL, at_ms INTEGER NOT NULL);";
/// What brings a file of schema `version - 1` to `version`, in order.
const MIGRATIONS: &[(i32, &str)] = &[(2, SCHEMA_2), (3, SCHEMA_3), (4, SCHEMA_4)];
/// Default bound of the file's used size.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// When over budget, shrink to this share of it (so one eviction round does not repeat at once).
const SHRINK_TO: f64 = 0.9;
/// How long shutdown waits for the last commit.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// Default bound of the backlog: distinct records whose newest change waits for the disk.
/// Each holds a copy of its record (about 700 bytes), and the writer's attempt may hold as many
/// again, so a disk that fails for hours costs at most ~25 MiB. A healthy disk empties the
/// backlog every [`super::BATCH_INTERVAL`]: reaching the bound takes more distinct records
/// changed within a second than a store of the default capacity churns.
pub const DEFAULT_MAX_PENDING: usize = 16_384;
/// First wait before a failed commit is tried again; doubles on every failure up to
/// [`RETRY_MAX`], back to this after a success.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between two attempts at a failing disk (it is written within this of
/// recovering).
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistConfig {
    pub path: PathBuf,
    /// Most bytes the records may use in the file.
    pub max_bytes: u64,
    /// Most distinct records whose change waits for the disk ([`DEFAULT_MAX_PENDING`]).
    pub max_pending: usize,
}

/// Why the persistent store could not start (the agent then runs without it and says so).
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("creating the store's directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the store {path} is in use by another triage-agent process on this node (lock {lock} is held)"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("opening the store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("moving the unusable file {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An opened store: the backend to give the [`super::Store`], the records to
/// [`super::Store::restore`] (oldest first) and the health to report.
/// The loss counters kept in the file are already back in the counters given to [`open`].
pub struct Opened {
    pub backend: PersistBackend,
    pub records: Vec<(u64, Evidence)>,
    /// Each owner's evictions, for [`super::Store::restore_evictions`].
    pub evictions: Vec<(String, Evictions)>,
    /// Each pod's DNS lookup counters, for [`super::Store::restore_dns_lookups`].
    pub dns_lookups: Vec<PodLookups>,
    /// Each pod's kernel losses, for [`super::Store::restore_pod_losses`].
    pub pod_losses: Vec<PodLossTally>,
    pub health: Arc<PersistHealth>,
}

#[derive(Clone)]
enum Change {
    Upsert(Arc<Evidence>),
    Remove,
}

/// The changes the disk lacks: the newest of each record, at most `max` records.
struct Backlog {
    /// id -> (order of its latest change, the change).
    changes: HashMap<u64, (u64, Change)>,
    /// Order of latest change -> id: the least recently changed first, given up first.
    order: BTreeMap<u64, u64>,
    next: u64,
    max: usize,
    /// What the writer's current attempt holds: id -> order of the change it writes.
    in_flight: HashMap<u64, u64>,
    /// Owners whose evictions changed, by name. As many as the store has owners, so not
    /// bounded apart.
    owners: Rows<Evictions>,
    /// Pods whose DNS lookup counters changed, by uid (at most the store's
    /// [`super::DNS_LOOKUP_PODS`]).
    dns: Rows<PodLookups>,
    /// Pods whose kernel losses changed, by uid (at most the store's
    /// [`super::pod_losses::LOSS_PODS`], and those it forgot).
    pod_losses: Rows<PodLossTally>,
    /// Records given up while the attempt writing their newest state runs: lost only if it
    /// fails.
    doubtful: u64,
    /// The store handed its changes over since the writer last took them.
    flushed: bool,
    /// The store is done: one last attempt, then the writer ends.
    closed: bool,
}

impl Backlog {
    fn new(max: usize) -> Backlog {
        Backlog {
            changes: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            max: max.max(1),
            in_flight: HashMap::new(),
            owners: Rows::default(),
            dns: Rows::default(),
            pod_losses: Rows::default(),
            doubtful: 0,
            flushed: false,
            closed: false,
        }
    }

    /// Records `change` as the newest of `id`; returns how many records were given up for
    /// room (0 or 1).
    fn put(&mut self, id: u64, change: Change) -> u64 {
        self.next += 1;
        let seq = self.next;
        let mut given_up = 0;
        if let Some((old, _)) = self.changes.remove(&id) {
            self.order.remove(&old);
        } else if self.changes.len() >= self.max
            && let Some((oldest, victim)) = self.order.pop_first()
        {
            self.changes.remove(&victim);
            if self.in_flight.get(&victim) == Some(&oldest) {
                // Its newest state is being written: lost only if that attempt fails.
                self.doubtful += 1;
            } else {
                given_up = 1;
            }
        }
        self.changes.insert(id, (seq, change));
        self.order.insert(seq, id);
        given_up
    }

    fn put_owner(&mut self, owner: &str, evictions: Option<Evictions>) {
        self.next += 1;
        self.owners.put(self.next, owner, evictions);
    }

    fn put_dns(&mut self, pod: &str, lookups: Option<PodLookups>) {
        self.next += 1;
        self.dns.put(self.next, pod, lookups);
    }

    fn put_pod_losses(&mut self, pod: &str, losses: Option<PodLossTally>) {
        self.next += 1;
        self.pod_losses.put(self.next, pod, losses);
    }

    /// What an attempt writes: the newest change of every record and owner, noted as in
    /// flight.
    fn take_attempt(&mut self) -> Attempt {
        self.in_flight = self
            .changes
            .iter()
            .map(|(id, (seq, _))| (*id, *seq))
            .collect();
        Attempt {
            records: self
                .changes
                .iter()
                .map(|(id, (_, change))| (*id, change.clone()))
                .collect(),
            owners: self.owners.take_attempt(),
            dns: self.dns.take_attempt(),
            pod_losses: self.pod_losses.take_attempt(),
            losses: None,
        }
    }

    /// After an attempt: when committed, the records it wrote that did not change since leave
    /// the backlog. Returns the records lost (given up while in flight, and the attempt
    /// failed).
    fn attempt_done(&mut self, committed: bool) -> u64 {
        let in_flight = std::mem::take(&mut self.in_flight);
        let doubtful = std::mem::take(&mut self.doubtful);
        self.owners.attempt_done(committed);
        self.dns.attempt_done(committed);
        self.pod_losses.attempt_done(committed);
        if !committed {
            return doubtful;
        }
        for (id, seq) in in_flight {
            if self.changes.get(&id).is_some_and(|(s, _)| *s == seq) {
                self.changes.remove(&id);
                self.order.remove(&seq);
            }
        }
        0
    }
}

/// Rows of a table beside the records (an owner's evictions, a pod's DNS lookup counters or
/// kernel losses)
/// whose newest state the disk lacks, by key: key -> (order of the change, the newest state;
/// `None`: delete the row). A row leaves only when a commit holding its newest state succeeded.
struct Rows<T> {
    changes: HashMap<String, (u64, Option<T>)>,
    /// The changes the current attempt writes: key -> order.
    in_flight: HashMap<String, u64>,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Rows {
            changes: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }
}

impl<T: Clone> Rows<T> {
    fn put(&mut self, seq: u64, key: &str, state: Option<T>) {
        self.changes.insert(key.to_owned(), (seq, state));
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The newest state of every row, noted as in flight.
    fn take_attempt(&mut self) -> Vec<(String, Option<T>)> {
        self.in_flight = self
            .changes
            .iter()
            .map(|(key, (seq, _))| (key.clone(), *seq))
            .collect();
        self.changes
            .iter()
            .map(|(key, (_, state))| (key.clone(), state.clone()))
            .collect()
    }

    /// After an attempt: when committed, the rows it wrote that did not change since leave.
    fn attempt_done(&mut self, committed: bool) {
        let in_flight = std::mem::take(&mut self.in_flight);
        if !committed {
            return;
        }
        for (key, seq) in in_flight {
            if self.changes.get(&key).is_some_and(|(s, _)| *s == seq) {
                self.changes.remove(&key);
            }
        }
    }
}

/// One transaction's worth: the records', owners', pods' DNS counters' and pods' kernel losses'
/// newest changes, and the loss counters when they changed since the last commit.
struct Attempt {
    records: Vec<(u64, Change)>,
    owners: Vec<(String, Option<Evictions>)>,
    dns: Vec<(String, Option<PodLookups>)>,
    pod_losses: Vec<(String, Option<PodLossTally>)>,
    losses: Option<LossCounts>,
}

impl Attempt {
    fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.owners.is_empty()
            && self.dns.is_empty()
            && self.pod_losses.is_empty()
            && self.losses.is_none()
    }
}

/// The backlog and the writer's wake-up, shared by the store's side and the writer thread.
struct Shared {
    backlog: Mutex<Backlog>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Backlog> {
        // A panic elsewhere while holding the lock leaves a consistent backlog (every update
        // is a few map operations): keep going with it.
        self.backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The store's side: puts changes in the backlog and wakes the writer thread.
pub struct PersistBackend {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    health: Arc<PersistHealth>,
    counters: Arc<Counters>,
    /// The loss counters at the last flush.
    losses_flushed: LossCounts,
    max_bytes: u64,
}

impl PersistBackend {
    fn put(&mut self, id: u64, change: Change) {
        let (given_up, len) = {
            let mut b = self.shared.lock();
            let given_up = b.put(id, change);
            (given_up, b.changes.len())
        };
        self.counters.add(Loss::StoreBacklogFull, given_up);
        self.health.queued.store(len as u64, SeqCst);
    }
}

impl Backend for PersistBackend {
    fn upsert(&mut self, id: u64, e: &Evidence) {
        self.put(id, Change::Upsert(Arc::new(e.clone())));
    }

    fn remove(&mut self, id: u64, _: &Evidence) {
        self.put(id, Change::Remove);
    }

    fn flush(&mut self) {
        // Also without changed records when the loss counters grew since the last flush.
        let losses = self.counters.snapshot();
        let grew = losses != self.losses_flushed;
        self.losses_flushed = losses;
        let mut b = self.shared.lock();
        if grew
            || !b.changes.is_empty()
            || !b.owners.is_empty()
            || !b.dns.is_empty()
            || !b.pod_losses.is_empty()
        {
            b.flushed = true;
            self.shared.wake.notify_one();
        }
    }

    fn evictions(&mut self, owner: &str, evictions: Option<&Evictions>) {
        self.shared.lock().put_owner(owner, evictions.cloned());
    }

    fn dns_lookups(&mut self, pod: &str, lookups: Option<&PodLookups>) {
        self.shared.lock().put_dns(pod, lookups.cloned());
    }

    fn pod_losses(&mut self, pod: &str, losses: Option<&PodLossTally>) {
        self.shared.lock().put_pod_losses(pod, losses.cloned());
    }

    fn shrink(&mut self, records: usize) -> usize {
        let used = self.health.get().used_bytes;
        if used <= self.max_bytes || used == 0 {
            return 0;
        }
        let keep = self.max_bytes as f64 * SHRINK_TO / used as f64;
        let n = (records as f64 * (1.0 - keep)).ceil() as usize;
        // The next commit measures again; forget this measure so one is acted on once.
        self.health.update(|s| s.used_bytes = 0);
        n.min(records)
    }

    fn close(mut self: Box<Self>) {
        {
            let mut b = self.shared.lock();
            b.closed = true;
            self.shared.wake.notify_one();
        }
        if let Some(writer) = self.writer.take() {
            let (done_tx, done_rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = done_tx.send(writer.join().is_ok());
            });
            if done_rx.recv_timeout(CLOSE_DEADLINE).is_err() {
                tracing::warn!(
                    "the evidence store's last batch was not written within {CLOSE_DEADLINE:?}"
                );
            }
        }
    }
}

/// Opens (or creates) the store at `config.path`, reads its records back and starts the
/// writer thread.
pub fn open(config: &PersistConfig, counters: Arc<Counters>) -> Result<Opened, PersistError> {
    let path = config.path.clone();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| PersistError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
    }
    let lock = lock(&path)?;
    let mut moved_aside = None;
    let conn = match open_ours(&path) {
        Ok(conn) => conn,
        Err(why) => {
            let aside = move_aside(&path)?;
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                "{why}; moved it aside and started a fresh evidence store"
            );
            moved_aside = Some((aside, why));
            open_ours(&path).map_err(|why| PersistError::Io {
                path: path.clone(),
                source: std::io::Error::other(why),
            })?
        }
    };
    let sqlite = |source| PersistError::Sqlite {
        path: path.clone(),
        source,
    };
    // The counters first: what read_back counts adds to them.
    let saved = read_losses(&conn).map_err(sqlite)?;
    counters.restore(&saved);
    let evictions = read_owners(&conn).map_err(sqlite)?;
    let dns_lookups = read_dns_lookups(&conn).map_err(sqlite)?;
    let pod_losses = read_pod_losses(&conn).map_err(sqlite)?;
    let records = read_back(&conn, &counters, true).map_err(sqlite)?;
    let health = Arc::new(PersistHealth::default());
    health.update(|s| {
        s.path = path.clone();
        s.restored = records.len() as u64;
        s.moved_aside = moved_aside;
        s.max_bytes = config.max_bytes;
        s.used_bytes = used_bytes(&conn).unwrap_or(0);
    });
    let shared = Arc::new(Shared {
        backlog: Mutex::new(Backlog::new(config.max_pending)),
        wake: Condvar::new(),
    });
    let writer = {
        let health = health.clone();
        let shared = shared.clone();
        let counters = counters.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_batches(conn, &shared, &health, &counters, lock))
            .map_err(|source| PersistError::Io {
                path: path.clone(),
                source,
            })?
    };
    Ok(Opened {
        backend: PersistBackend {
            shared,
            writer: Some(writer),
            health: health.clone(),
            counters,
            losses_flushed: LossCounts::default(),
            max_bytes: config.max_bytes,
        },
        records,
        evictions,
        dns_lookups,
        pod_losses,
        health,
    })
}

fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn time_of_ms(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok().filter(|ms| *ms > 0)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// The loss counters kept in the file (names this version does not know are skipped, as are
/// values out of range).
fn read_losses(conn: &Connection) -> rusqlite::Result<LossCounts> {
    let mut out = LossCounts::default();
    let mut stmt = conn.prepare("SELECT name, count, last_ms FROM losses")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (Ok(name), Ok(count), Ok(last)) = (
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        ) else {
            continue;
        };
        if let Ok(loss) = Loss::from_name(&name) {
            out.set(loss, u64::try_from(count).unwrap_or(0));
            out.set_last(loss, time_of_ms(last));
        }
    }
    let since: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'losses_since'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    out.set_since(since.and_then(time_of_ms));
    Ok(out)
}

/// Each owner's evictions kept in the file.
fn read_owners(conn: &Connection) -> rusqlite::Result<Vec<(String, Evictions)>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare("SELECT owner, pod, evicted, newest_ms FROM owners")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (Ok(owner), Ok(evicted), Ok(newest)) = (
            row.get::<_, String>(0),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
        ) else {
            continue;
        };
        let pod = row
            .get::<_, Vec<u8>>(1)
            .ok()
            .and_then(|b| pb::PodRef::decode(b.as_slice()).ok())
            .map(pod_from_pb);
        let (Ok(evicted), Some(newest)) = (u64::try_from(evicted), time_of_ms(newest)) else {
            continue;
        };
        // A pod's evictions without its pod could never match a query: skip them.
        if evicted == 0 || (!owner.is_empty() && pod.as_ref().is_none_or(|p| p.uid != owner)) {
            continue;
        }
        out.push((
            owner,
            Evictions {
                pod,
                evicted,
                newest,
            },
        ));
    }
    Ok(out)
}

/// Each pod's DNS lookup counters kept in the file (a row that does not decode, or names no
/// pod or another pod than its key, is skipped).
fn read_dns_lookups(conn: &Connection) -> rusqlite::Result<Vec<PodLookups>> {
    let mut out = Vec::new();
    // Oldest first, as the store takes them back (the newest stay, were its bound smaller).
    let mut stmt = conn.prepare("SELECT pod, lookups, at_ms FROM dns_lookups ORDER BY at_ms")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (Ok(uid), Ok(bytes), Ok(at)) = (
            row.get::<_, String>(0),
            row.get::<_, Vec<u8>>(1),
            row.get::<_, i64>(2),
        ) else {
            continue;
        };
        let Some((pod, lookups)) = pb::DnsLookups::decode(bytes.as_slice())
            .ok()
            .and_then(codec::dns_lookups_from_pb)
        else {
            continue;
        };
        let Some(at) = time_of_ms(at) else {
            continue;
        };
        if pod.uid != uid {
            continue;
        }
        out.push(PodLookups { at, pod, lookups });
    }
    Ok(out)
}

/// Each pod's kernel losses kept in the file, oldest first (a row that does not decode, or
/// names no pod or another pod than its key, is skipped).
fn read_pod_losses(conn: &Connection) -> rusqlite::Result<Vec<PodLossTally>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare("SELECT pod, losses, at_ms FROM pod_losses ORDER BY at_ms")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (Ok(uid), Ok(bytes), Ok(at)) = (
            row.get::<_, String>(0),
            row.get::<_, Vec<u8>>(1),
            row.get::<_, i64>(2),
        ) else {
            continue;
        };
        let Some((pod, losses, _)) = pb::PodLosses::decode(bytes.as_slice())
            .ok()
            .and_then(codec::pod_losses_from_pb)
        else {
            continue;
        };
        let Some(at) = time_of_ms(at) else {
            continue;
        };
        if pod.uid != uid {
            continue;
        }
        out.push(PodLossTally { at, pod, losses });
    }
    Ok(out)
}

/// Takes the advisory lock beside the file (`<path>.lock`), held for the writer's life.
fn lock(path: &Path) -> Result<File, PersistError> {
    let lock_path = sibling(path, ".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| PersistError::Io {
            path: lock_path.clone(),
            source,
        })?;
    // SAFETY: flock on a file descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(PersistError::Locked {
                path: path.to_owned(),
                lock: lock_path,
            });
        }
        return Err(PersistError::Io {
            path: lock_path,
            source: err,
        });
    }
    Ok(file)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens the file as our store, creating the schema in a new or empty file. `Err` says why the
/// file is not usable as ours.
fn open_ours(path: &Path) -> Result<Connection, String> {
    let conn =
        Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let check = || -> rusqlite::Result<Result<(), String>> {
        // The first read of the header: a file that is not SQLite fails here.
        let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if app == 0 && version == 0 && tables == 0 {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} {SCHEMA_2} {SCHEMA_3} {SCHEMA_4} COMMIT;"
            ))?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            return Ok(Ok(()));
        }
        if app != APPLICATION_ID {
            return Ok(Err(format!(
                "{} is not a triage-agent evidence store (a database of another program)",
                path.display()
            )));
        }
        if version > SCHEMA_VERSION {
            return Ok(Err(format!(
                "{} was written by a newer triage-agent (schema {version}, this one reads {SCHEMA_VERSION})",
                path.display()
            )));
        }
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Ok(Err(format!("{} is damaged ({ok})", path.display())));
        }
        // An older agent's file: brought up to this schema, one version at a time, each in
        // the transaction that records it (the old tables are kept as they are).
        for (to, migration) in MIGRATIONS.iter().filter(|(to, _)| *to > version) {
            conn.execute_batch(&format!(
                "BEGIN; {migration} PRAGMA user_version = {to}; COMMIT;"
            ))?;
        }
        Ok(Ok(()))
    };
    match check() {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Err(why),
        Err(e) => {
            return Err(format!(
                "{} is not a usable evidence store ({e})",
                path.display()
            ));
        }
    }
    let setup = || -> rusqlite::Result<()> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A committed batch is on disk when the commit returns, also across a node crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(1))?;
        Ok(())
    };
    setup().map_err(|e| format!("{} is not a usable evidence store ({e})", path.display()))?;
    Ok(conn)
}

/// Renames the file (and its journal files) to `<path>.unusable-<unix seconds>`.
fn move_aside(path: &Path) -> Result<PathBuf, PersistError> {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = sibling(path, &format!(".unusable-{stamp}"));
    std::fs::rename(path, &aside).map_err(|source| PersistError::MoveAside {
        path: path.to_owned(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let from = sibling(path, suffix);
        if from.exists() {
            let _ = std::fs::rename(&from, sibling(&aside, suffix));
        }
    }
    Ok(aside)
}

/// Every record, oldest last-seen first; undecodable rows are deleted (with `repair`) and
/// counted.
fn read_back(
    conn: &Connection,
    counters: &Counters,
    repair: bool,
) -> rusqlite::Result<Vec<(u64, Evidence)>> {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT id, record FROM evidence")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let bytes: Vec<u8> = row.get(1).unwrap_or_default();
            let decoded = pb::Evidence::decode(bytes.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|p| codec::evidence_from_pb(p).map_err(|e| e.to_string()));
            match decoded {
                Ok(e) if id > 0 => records.push((id as u64, e)),
                Ok(_) => bad.push((id, "id out of range".to_owned())),
                Err(why) => bad.push((id, why)),
            }
        }
    }
    if !bad.is_empty() {
        tracing::warn!(
            records = bad.len(),
            first_error = %bad.first().map(|b| b.1.as_str()).unwrap_or_default(),
            "evidence records in the store could not be read back; removed"
        );
        counters.add(Loss::StoreUnreadable, bad.len() as u64);
    }
    if repair && !bad.is_empty() {
        let tx = conn.unchecked_transaction()?;
        for (id, _) in &bad {
            tx.execute("DELETE FROM evidence WHERE id = ?1", [id])?;
        }
        tx.commit()?;
    }
    records.sort_by_key(|(id, e)| (e.last_seen, *id));
    Ok(records)
}

/// How a row holds its record in [`read_back_rows`]: SQLite keeps any type in any column, so
/// a damaged or foreign file can have text or a number where a blob belongs.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub enum StoredValue {
    Blob(Vec<u8>),
    Text(String),
    Integer(i64),
    Null,
}

/// Rows as a store file could hold them, read back as at startup, repairs included (in an
/// in-memory database with the store's schema): the fuzz target's way into [`read_back`].
/// Returns the records read and the rows left in the table after the repair.
#[doc(hidden)]
pub fn read_back_rows(
    rows: &[(i64, StoredValue)],
    counters: &Counters,
) -> rusqlite::Result<(Vec<(u64, Evidence)>, u64)> {
    let conn = Connection::open_in_memory()?;
    // Without NOT NULL, so a null record can be stored, as a damaged file could hold it.
    conn.execute_batch(&SCHEMA.replace(" NOT NULL", ""))?;
    {
        let mut insert =
            conn.prepare("INSERT OR REPLACE INTO evidence (id, record) VALUES (?1, ?2)")?;
        for (id, value) in rows {
            match value {
                StoredValue::Blob(b) => insert.execute(params![id, b])?,
                StoredValue::Text(t) => insert.execute(params![id, t])?,
                StoredValue::Integer(n) => insert.execute(params![id, n])?,
                StoredValue::Null => insert.execute(params![id, rusqlite::types::Null])?,
            };
        }
    }
    let records = read_back(&conn, counters, true)?;
    let left: i64 = conn.query_row("SELECT count(*) FROM evidence", [], |r| r.get(0))?;
    Ok((records, u64::try_from(left).unwrap_or(0)))
}

/// Bytes in pages holding data (the file may be larger: freed pages are reused, not returned).
fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok((pages.saturating_sub(free).max(0) as u64).saturating_mul(size.max(0) as u64))
}

/// The writer thread: one transaction per attempt, holding the newest state of every record
/// in the backlog; after a failure, the next attempt waits [`RETRY_FIRST`], doubling up to
/// [`RETRY_MAX`].
fn write_batches(
    conn: Connection,
    shared: &Shared,
    health: &PersistHealth,
    counters: &Counters,
    _lock: File,
) {
    // When the last attempt failed: when to try again, and the wait after that.
    let mut retry: Option<(Instant, Duration)> = None;
    // The loss counters as last committed: none yet, so the first commit writes them all.
    let mut losses_written = LossCounts::default();
    loop {
        let (attempt, closing) = {
            let mut b = shared.lock();
            loop {
                if b.closed {
                    break;
                }
                let now = Instant::now();
                match retry {
                    // A failed attempt is retried when due, without waiting for a flush.
                    Some((at, _)) if now >= at => break,
                    Some((at, _)) => {
                        b = shared
                            .wake
                            .wait_timeout(b, at - now)
                            .map_or_else(|e| e.into_inner().0, |(b, _)| b);
                    }
                    None if b.flushed => break,
                    None => {
                        b = shared
                            .wake
                            .wait(b)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                }
            }
            b.flushed = false;
            (b.take_attempt(), b.closed)
        };
        let mut attempt = attempt;
        let losses = counters.snapshot();
        if losses != losses_written {
            attempt.losses = Some(losses);
        }
        if attempt.is_empty() {
            shared.lock().attempt_done(true);
            retry = None;
            if closing {
                break;
            }
            continue;
        }
        let result = commit(&conn, &attempt);
        let committed_losses = attempt.losses.take();
        drop(attempt);
        match &result {
            Ok(()) => {
                if let Some(l) = committed_losses {
                    losses_written = l;
                }
                let used = used_bytes(&conn).unwrap_or(0);
                health.update(|s| {
                    s.last_commit = Some(SystemTime::now());
                    s.commits += 1;
                    s.used_bytes = used;
                    s.error = None;
                });
                retry = None;
            }
            Err(e) => {
                let error = format!(
                    "writing {} changed records: {e}",
                    shared.lock().changes.len()
                );
                let wait = retry.map_or(RETRY_FIRST, |(_, wait)| (wait * 2).min(RETRY_MAX));
                if health.get().error.is_none() {
                    tracing::error!("evidence store: {error}; retrying with backoff");
                }
                health.update(|s| s.error = Some(error));
                retry = Some((Instant::now() + wait, wait));
            }
        }
        // After the commit is on record: 0 pending always comes with its commit.
        let (lost, left) = {
            let mut b = shared.lock();
            let lost = b.attempt_done(result.is_ok());
            (lost, b.changes.len())
        };
        counters.add(Loss::StoreBacklogFull, lost);
        health.queued.store(left as u64, SeqCst);
        if closing {
            if left > 0 {
                // Shutdown with the disk still failing: what is left is given up.
                tracing::error!("evidence store: {left} changed records not written at shutdown");
                counters.add(Loss::StoreBacklogFull, left as u64);
            }
            break;
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!("closing the evidence store: {e}");
    }
}

/// Writes a table of per-pod counters (`pod` key, one encoded `column`, `at_ms`): the newest
/// state of each pod that changed, or its removal (`None`: forgotten for room).
fn write_per_pod<T>(
    tx: &Connection,
    table: &str,
    column: &str,
    rows: &[(String, Option<T>)],
    encode: impl Fn(&T) -> (Vec<u8>, i64),
) -> rusqlite::Result<()> {
    let mut put = tx.prepare_cached(&format!(
        "INSERT INTO {table} (pod, {column}, at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (pod) DO UPDATE SET {column} = excluded.{column}, at_ms = excluded.at_ms"
    ))?;
    let mut forget = tx.prepare_cached(&format!("DELETE FROM {table} WHERE pod = ?1"))?;
    for (pod, row) in rows {
        match row {
            Some(r) => {
                let (value, at_ms) = encode(r);
                put.execute(params![pod, value, at_ms])?;
            }
            None => {
                forget.execute([pod])?;
            }
        }
    }
    Ok(())
}

fn commit(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<()> {
    let changes = &attempt.records;
    let tx = conn.unchecked_transaction()?;
    if let Some(losses) = &attempt.losses {
        let mut put = tx.prepare_cached(
            "INSERT INTO losses (name, count, last_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET count = excluded.count, last_ms = excluded.last_ms",
        )?;
        for (loss, count) in losses.iter().filter(|(_, n)| *n > 0) {
            put.execute(params![
                loss.as_str(),
                i64::try_from(count).unwrap_or(i64::MAX),
                losses.last(loss).map_or(0, ms_of),
            ])?;
        }
        if let Some(since) = losses.since() {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('losses_since', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [ms_of(since)],
            )?;
        }
    }
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO owners (owner, pod, evicted, newest_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (owner) DO UPDATE SET pod = excluded.pod, evicted = excluded.evicted,
             newest_ms = excluded.newest_ms",
        )?;
        let mut forget = tx.prepare_cached("DELETE FROM owners WHERE owner = ?1")?;
        for (owner, evictions) in &attempt.owners {
            match evictions {
                Some(e) => {
                    put.execute(params![
                        owner,
                        e.pod.as_deref().map(|p| pod_to_pb(p).encode_to_vec()),
                        i64::try_from(e.evicted).unwrap_or(i64::MAX),
                        ms_of(e.newest),
                    ])?;
                }
                None => {
                    forget.execute([owner])?;
                }
            }
        }
    }
    write_per_pod(&tx, "dns_lookups", "lookups", &attempt.dns, |l| {
        (
            codec::dns_lookups_to_pb(&l.pod, &l.lookups).encode_to_vec(),
            ms_of(l.at),
        )
    })?;
    write_per_pod(&tx, "pod_losses", "losses", &attempt.pod_losses, |l| {
        (
            codec::pod_losses_to_pb(&l.pod, &l.losses, l.at).encode_to_vec(),
            ms_of(l.at),
        )
    })?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO evidence (id, record) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
        )?;
        let mut remove = tx.prepare_cached("DELETE FROM evidence WHERE id = ?1")?;
        for (id, change) in changes {
            let id = i64::try_from(*id).unwrap_or(i64::MAX);
            match change {
                Change::Upsert(e) => {
                    upsert.execute(params![id, codec::evidence_to_pb(e).encode_to_vec()])?;
                }
                Change::Remove => {
                    remove.execute([id])?;
                }
            }
        }
    }
    tx.commit()
}

/// The records in the file at `path`, for tests and tools (opens read-only, takes no lock).
pub fn read_only(path: &Path) -> Result<Vec<(u64, Evidence)>, String> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let counters = Counters::default();
    let app: Option<i32> = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .optional()
        .map_err(|e| e.to_string())?;
    if app != Some(APPLICATION_ID) {
        return Err(format!("{} is not a triage-agent store", path.display()));
    }
    read_back(&conn, &counters, false).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
