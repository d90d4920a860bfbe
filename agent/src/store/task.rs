//! The store as a task: the single owner of [`Store`], fed occurrences through a bounded
//! channel and reached by readers through [`StoreHandle`] commands. [`spawn`] makes the
//! channels and returns the handle, the occurrence sender and the task to run, so the wiring
//! and the tests never build the plumbing by hand.
//!
//! The task does the least work per command that keeps the store consistent: a query's
//! selection is made here, its sorting is the caller's ([`Selection::finish`]); liveness reads
//! the task's [`Heartbeat`] and never queues a command.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Lag, QueryResult, Selection, Store, StoreStats, WATCH_BUFFER};
use crate::{
    attribute::Attributed,
    evidence::{Evidence, Filter},
};

/// Capacity of the occurrence channel into the store: a few seconds of a heavy burst.
pub const OCCURRENCES_CHANNEL: usize = 8192;
/// Capacity of the command channel (queries, subscriptions, stats).
const COMMANDS_CHANNEL: usize = 64;
/// How often records older than the retention expire. Measured on the monotonic clock
/// (tokio's interval), so a wall-clock step does not change the pace.
const AGE_SWEEP: Duration = Duration::from_secs(10);
/// How often changed records go to the [`super::Backend`] (the persistent store writes each
/// batch in one transaction): the most a `kill -9` can lose is what changed since the last one.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);

/// When the store task's loop last turned. The loop turns for every occurrence and command and
/// at least every [`BATCH_INTERVAL`] when idle, so a beat older than a few intervals means the
/// task is stuck or starved: what liveness reads, at the cost of an atomic load (a health check
/// that queued a command would wait behind every scrape and query in the queue).
#[derive(Debug)]
pub struct Heartbeat {
    /// The monotonic clock's origin for `last`.
    origin: Instant,
    /// Milliseconds from `origin` to the last beat.
    last: AtomicU64,
}

impl Heartbeat {
    fn new() -> Heartbeat {
        Heartbeat {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// Requests to the store task.
pub enum Command {
    /// The records a query answers with, unsorted ([`Selection::finish`] sorts them).
    Query {
        filter: Filter,
        limit: usize,
        reply: oneshot::Sender<Selection>,
    },
    /// `ready` is answered once the subscription is in place (or refused: `false`), so nothing
    /// recorded after `subscribe` returns is missed.
    Subscribe {
        filter: Filter,
        tx: mpsc::Sender<Evidence>,
        lag: Arc<Lag>,
        /// The lag of the watcher's earlier subscription: its count stops here.
        resume: Option<Arc<Lag>>,
        ready: oneshot::Sender<bool>,
    },
    Stats {
        reply: oneshot::Sender<StoreStats>,
    },
}

/// The store task is gone (agent shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the evidence store is shutting down")]
pub struct StoreGone;

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Gone(#[from] StoreGone),
    #[error("too many watchers (at most {max})", max = super::MAX_SUBSCRIBERS)]
    TooMany,
}

/// A live stream of updated records.
pub struct Subscription {
    pub updates: mpsc::Receiver<Evidence>,
    /// Whether the store dropped this watcher for being too slow, and what it missed since.
    pub lag: Arc<Lag>,
}

/// Cloneable access to the store task.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
    heartbeat: Arc<Heartbeat>,
}

impl StoreHandle {
    /// Records matching `filter`, most recent first, at most `limit`: the store task selects
    /// them, this (the caller's) task sorts them.
    pub async fn query(&self, filter: Filter, limit: usize) -> Result<QueryResult, StoreGone> {
        Ok(self.select(filter, limit).await?.finish())
    }

    /// The records of a query, unsorted: for callers that sort them off the runtime's workers
    /// (a large answer).
    pub async fn select(&self, filter: Filter, limit: usize) -> Result<Selection, StoreGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Query {
                filter,
                limit,
                reply,
            })
            .await
            .map_err(|_| StoreGone)?;
        rx.await.map_err(|_| StoreGone)
    }

    /// Updated records matching `filter`, from now on: a watch, whose updates missed when the
    /// store drops it for being too slow the store counts as `watch_lagged` (see [`Lag`]).
    pub async fn subscribe(&self, filter: Filter) -> Result<Subscription, SubscribeError> {
        self.subscribe_resuming(filter, Lag::default(), None).await
    }

    /// As [`StoreHandle::subscribe`], for a subscriber that resumes its lag when dropped
    /// ([`StoreHandle::resubscribe`]) and counts what it missed itself (the OTLP exporter).
    pub async fn subscribe_resumable(
        &self,
        filter: Filter,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_resuming(filter, Lag::resumable(), None)
            .await
    }

    /// A resumable subscriber the store dropped for being too slow subscribes again: once this
    /// succeeds, `lag.missed()` is every matching update it missed in between (refused, the
    /// lag goes on counting: resume it again).
    pub async fn resubscribe(
        &self,
        filter: Filter,
        lag: Arc<Lag>,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_resuming(filter, Lag::resumable(), Some(lag))
            .await
    }

    async fn subscribe_resuming(
        &self,
        filter: Filter,
        lag: Lag,
        resume: Option<Arc<Lag>>,
    ) -> Result<Subscription, SubscribeError> {
        let (tx, updates) = mpsc::channel(WATCH_BUFFER);
        let lag = Arc::new(lag);
        let (ready, ack) = oneshot::channel();
        self.tx
            .send(Command::Subscribe {
                filter,
                tx,
                lag: lag.clone(),
                resume,
                ready,
            })
            .await
            .map_err(|_| StoreGone)?;
        match ack.await.map_err(|_| StoreGone)? {
            true => Ok(Subscription { updates, lag }),
            false => Err(SubscribeError::TooMany),
        }
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats { reply })
            .await
            .map_err(|_| StoreGone)?;
        rx.await.map_err(|_| StoreGone)
    }

    /// Time since the store task's loop last turned (see [`Heartbeat`]); no command is sent.
    pub fn heartbeat_age(&self) -> Duration {
        self.heartbeat.age()
    }
}

/// Makes the store's channels: returns the handle for readers, the sender for occurrences and
/// the task, which runs until cancelled or until every sender is gone.
pub fn spawn(
    store: Store,
    cancel: CancellationToken,
) -> (
    StoreHandle,
    mpsc::Sender<Attributed>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (occ_tx, occ_rx) = mpsc::channel(OCCURRENCES_CHANNEL);
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS_CHANNEL);
    let heartbeat = Arc::new(Heartbeat::new());
    (
        StoreHandle {
            tx: cmd_tx,
            heartbeat: heartbeat.clone(),
        },
        occ_tx,
        run(store, occ_rx, cmd_rx, heartbeat, cancel),
    )
}

/// How long the store waits at shutdown for attribution to hand over its last occurrences
/// (attribution's own drain, plus time to flush what waits for metadata).
pub const DRAIN: Duration = Duration::from_secs(4);

async fn run(
    mut store: Store,
    mut occurrences: mpsc::Receiver<Attributed>,
    mut commands: mpsc::Receiver<Command>,
    heartbeat: Arc<Heartbeat>,
    cancel: CancellationToken,
) {
    let mut sweep = tokio::time::interval(AGE_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = tokio::time::interval(BATCH_INTERVAL);
    batch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At shutdown, attribution drains first (its producers' events, then what waits for
    // metadata) and hands every occurrence here; the store records them until attribution is
    // gone (at most DRAIN), then what is left in the channel, then closes the backend.
    let drain = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(drain);
    let mut draining = false;
    let mut commands_open = true;
    loop {
        heartbeat.beat();
        tokio::select! {
            () = cancel.cancelled(), if !draining => {
                draining = true;
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            () = &mut drain, if draining => break,
            o = occurrences.recv() => match o {
                Some(a) => store.add(a),
                None => break,
            },
            c = commands.recv(), if commands_open => match c {
                Some(Command::Query { filter, limit, reply }) => {
                    let _ = reply.send(store.select(&filter, limit));
                }
                Some(Command::Subscribe { filter, tx, lag, resume, ready }) => {
                    let _ = ready.send(store.subscribe(filter, tx, lag, resume.as_ref()));
                }
                Some(Command::Stats { reply }) => {
                    let _ = reply.send(store.stats());
                }
                None => commands_open = false,
            },
            // Retention is about evidence times, which are wall-clock times.
            _ = sweep.tick() => store.sweep(SystemTime::now()),
            _ = batch.tick() => store.flush_backend(),
        }
    }
    occurrences.close();
    while let Ok(a) = occurrences.try_recv() {
        store.add(a);
    }
    if let Some(backend) = store.take_backend() {
        // Writing the last batch blocks (a database commit): off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || backend.close()).await;
    }
}
