//! Evidence that survives restarts and upgrades: the store's records mirrored into an SQLite
//! file on the node (WAL journal, `synchronous=FULL`), written in batches off the hot path and
//! read back at startup.
//!
//! - The store tells the [`PersistBackend`] of every change (`upsert`/`remove` by the record's
//!   lasting id); changes wait in a map keyed by id, so a record updated a thousand times in a
//!   batch interval is written once. Every [`super::BATCH_INTERVAL`] the map goes to the writer
//!   thread, which commits it as one transaction. A commit is the acknowledgement: `kill -9`
//!   (or a node crash) loses at most what changed since the last commit.
//! - When the writer is still busy, changes keep accumulating and go with the next batch; when
//!   a commit fails (disk full, I/O error) the batch is kept and retried with the next one, and
//!   [`PersistHealth`] says so (Status, `/readyz`, the metrics).
//! - The file is bounded: it holds the store's records (bounded by count and age), and when its
//!   used pages exceed `max_bytes` the store evicts its oldest records fairly (counted as
//!   `store_evicted`) until it fits.
//! - At startup [`open`] reads every record back (a record that no longer decodes is removed
//!   and counted as `store_unreadable`). A file that is not this agent's store (another
//!   program's database, a damaged file, a newer schema) is moved aside with a clear error and
//!   a fresh store starts at the path: the agent never crash-loops on its own data. A second
//!   agent on the same file is refused (an advisory lock), so two never write one file.

use std::sync::atomic::Ordering::SeqCst;
use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, SystemTime},
};

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use triage_agent_proto::v1 as pb;

use super::{Backend, PersistHealth};
use crate::{
    codec,
    evidence::Evidence,
    loss::{Counters, Loss},
};

/// `PRAGMA application_id` of a triage-agent store ("TRIA"): tells our file from any other
/// SQLite database.
const APPLICATION_ID: i32 = 0x5452_4941;
/// `PRAGMA user_version`: the schema. A file with a newer one is moved aside, not misread.
const SCHEMA_VERSION: i32 = 1;
/// Default bound of the file's used size.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// When over budget, shrink to this share of it (so one eviction round does not repeat at once).
const SHRINK_TO: f64 = 0.9;
/// How long shutdown waits for the last commit.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistConfig {
    pub path: PathBuf,
    /// Most bytes the records may use in the file.
    pub max_bytes: u64,
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
pub struct Opened {
    pub backend: PersistBackend,
    pub records: Vec<(u64, Evidence)>,
    pub health: Arc<PersistHealth>,
}

enum Change {
    Upsert(Box<Evidence>),
    Remove,
}

/// The store's side: collects changes and hands them to the writer thread.
pub struct PersistBackend {
    pending: HashMap<u64, Change>,
    batches: Option<mpsc::SyncSender<HashMap<u64, Change>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    health: Arc<PersistHealth>,
    max_bytes: u64,
}

impl Backend for PersistBackend {
    fn upsert(&mut self, id: u64, e: &Evidence) {
        self.pending.insert(id, Change::Upsert(Box::new(e.clone())));
        self.health.queued.store(self.pending.len() as u64, SeqCst);
    }

    fn remove(&mut self, id: u64, _: &Evidence) {
        self.pending.insert(id, Change::Remove);
        self.health.queued.store(self.pending.len() as u64, SeqCst);
    }

    fn flush(&mut self) {
        if !self.pending.is_empty()
            && let Some(tx) = &self.batches
        {
            let batch = std::mem::take(&mut self.pending);
            let n = batch.len() as u64;
            // Counted as in the writer before it leaves the queue (see PersistHealth::get).
            self.health.in_writer.fetch_add(n, SeqCst);
            match tx.try_send(batch) {
                Ok(()) => {}
                // The writer is still on the previous batch: these go with the next one.
                Err(mpsc::TrySendError::Full(batch) | mpsc::TrySendError::Disconnected(batch)) => {
                    self.pending = batch;
                    self.health.in_writer.fetch_sub(n, SeqCst);
                }
            }
        }
        self.health.queued.store(self.pending.len() as u64, SeqCst);
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
        self.flush();
        if !self.pending.is_empty()
            && let Some(tx) = &self.batches
        {
            let batch = std::mem::take(&mut self.pending);
            let _ = tx.send(batch);
        }
        drop(self.batches.take());
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
    let records = read_back(&conn, &counters, true).map_err(|source| PersistError::Sqlite {
        path: path.clone(),
        source,
    })?;
    let health = Arc::new(PersistHealth::default());
    health.update(|s| {
        s.path = path.clone();
        s.restored = records.len() as u64;
        s.moved_aside = moved_aside;
        s.max_bytes = config.max_bytes;
        s.used_bytes = used_bytes(&conn).unwrap_or(0);
    });
    let (tx, rx) = mpsc::sync_channel(1);
    let writer = {
        let health = health.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_batches(conn, rx, &health, lock))
            .map_err(|source| PersistError::Io {
                path: path.clone(),
                source,
            })?
    };
    Ok(Opened {
        backend: PersistBackend {
            pending: HashMap::new(),
            batches: Some(tx),
            writer: Some(writer),
            health: health.clone(),
            max_bytes: config.max_bytes,
        },
        records,
        health,
    })
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
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE evidence (id INTEGER PRIMARY KEY, record BLOB NOT NULL);
                 COMMIT;",
            )?;
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

/// Bytes in pages holding data (the file may be larger: freed pages are reused, not returned).
fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok((pages.saturating_sub(free).max(0) as u64).saturating_mul(size.max(0) as u64))
}

/// The writer thread: one transaction per batch; a failed batch is retried with the next.
fn write_batches(
    conn: Connection,
    batches: mpsc::Receiver<HashMap<u64, Change>>,
    health: &PersistHealth,
    _lock: File,
) {
    let mut carried: HashMap<u64, Change> = HashMap::new();
    // Changes received since the last commit (as counted into `in_writer`).
    let mut received = 0u64;
    while let Ok(batch) = batches.recv() {
        received += batch.len() as u64;
        if carried.is_empty() {
            carried = batch;
        } else {
            carried.extend(batch);
        }
        match commit(&conn, &carried) {
            Ok(()) => {
                carried.clear();
                let used = used_bytes(&conn).unwrap_or(0);
                health.update(|s| {
                    s.last_commit = Some(SystemTime::now());
                    s.commits += 1;
                    s.used_bytes = used;
                    s.error = None;
                });
                // After the commit is on record: 0 pending always comes with its commit.
                health.in_writer.fetch_sub(received, SeqCst);
                received = 0;
            }
            Err(e) => {
                let error = format!("writing a batch of {} changes: {e}", carried.len());
                if health.get().error.is_none() {
                    tracing::error!("evidence store: {error}; retrying with the next batch");
                }
                health.update(|s| s.error = Some(error));
            }
        }
    }
    // Shutdown: the store sent its last batch; one more try for anything carried.
    if !carried.is_empty()
        && let Err(e) = commit(&conn, &carried)
    {
        tracing::error!(
            "evidence store: {} changes not written at shutdown: {e}",
            carried.len()
        );
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!("closing the evidence store: {e}");
    }
}

fn commit(conn: &Connection, changes: &HashMap<u64, Change>) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
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
