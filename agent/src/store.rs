//! The evidence store: a single owner task that aggregates repeats of the same failure into
//! one record (count, first and last seen), bounded by record count and age. Evictions are
//! counted. Readers reach it through [`StoreHandle`] commands; watchers get updates through
//! bounded channels and are dropped, not waited for, when they fall behind.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::evidence::{Direction, Evidence, Filter, Kind, Occurrence, Protocol};

/// Default record capacity: at ~400 bytes a record, 20,000 records stay under 10 MB.
pub const DEFAULT_CAPACITY: usize = 20_000;
/// Default retention: long enough to answer "what went wrong during last night's incident".
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default answer size of a query.
pub const DEFAULT_QUERY_LIMIT: usize = 1000;
/// Updates a watcher may have in flight before it is considered too slow and dropped.
pub const WATCH_BUFFER: usize = 1024;
/// How often records older than the retention are evicted.
const AGE_SWEEP: Duration = Duration::from_secs(10);

/// What makes two occurrences "the same failure". Client ports are ephemeral, so the source
/// is keyed by IP only; the destination keeps its port (it names the service).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    pod_uid: Option<String>,
    container: Option<String>,
    direction: Direction,
    protocol: Protocol,
    src_ip: IpAddr,
    dst: SocketAddr,
    reason: Option<String>,
}

impl Key {
    fn of(o: &Occurrence) -> Key {
        Key {
            kind: o.kind,
            pod_uid: o.pod.as_ref().map(|p| p.uid.clone()),
            container: o.container.clone(),
            direction: o.direction,
            protocol: o.protocol,
            src_ip: o.src.ip(),
            dst: o.dst,
            reason: o.reason.clone(),
        }
    }
}

/// Store counters for Status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub records: u64,
    pub capacity: u64,
    pub evicted: u64,
    pub watch_lagged: u64,
}

/// A query's answer.
#[derive(Clone, Debug, Default)]
pub struct QueryResult {
    pub evidence: Vec<Evidence>,
    pub truncated: bool,
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Evidence>,
    lagged: Arc<AtomicBool>,
}

/// The aggregation state (synchronous, unit-tested); [`run`] owns it.
pub struct Store {
    node: String,
    capacity: usize,
    max_age: Duration,
    records: HashMap<Key, (Evidence, u64)>,
    /// (last_seen, sequence) -> key: the eviction order, oldest first.
    order: BTreeMap<(SystemTime, u64), Key>,
    seq: u64,
    evicted: u64,
    watch_lagged: u64,
    subscribers: Vec<Subscriber>,
}

impl Store {
    pub fn new(node: String, capacity: usize, max_age: Duration) -> Store {
        Store {
            node,
            capacity: capacity.max(1),
            max_age,
            records: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            evicted: 0,
            watch_lagged: 0,
            subscribers: Vec::new(),
        }
    }

    /// Adds one occurrence: a new record or one more count on an existing one.
    pub fn record(&mut self, o: Occurrence) {
        let key = Key::of(&o);
        self.seq += 1;
        let seq = self.seq;
        let updated = match self.records.get_mut(&key) {
            Some((e, old_seq)) => {
                self.order.remove(&(e.last_seen, *old_seq));
                e.count = e.count.saturating_add(1);
                e.first_seen = e.first_seen.min(o.at);
                if o.at >= e.last_seen {
                    e.last_seen = o.at;
                    e.src = o.src;
                    e.process = o.process.or(e.process.take());
                    e.peer = o.peer.or(e.peer.take());
                }
                *old_seq = seq;
                e.clone()
            }
            None => {
                let e = Evidence {
                    kind: o.kind,
                    node: self.node.clone(),
                    pod: o.pod,
                    container: o.container,
                    process: o.process,
                    first_seen: o.at,
                    last_seen: o.at,
                    count: 1,
                    attribution: o.attribution,
                    direction: o.direction,
                    src: o.src,
                    dst: o.dst,
                    protocol: o.protocol,
                    reason: o.reason,
                    peer: o.peer,
                };
                self.records.insert(key.clone(), (e.clone(), seq));
                e
            }
        };
        self.order.insert((updated.last_seen, seq), key);
        while self.records.len() > self.capacity {
            if !self.evict_oldest() {
                break;
            }
        }
        self.publish(&updated);
    }

    fn evict_oldest(&mut self) -> bool {
        match self.order.pop_first() {
            Some((_, key)) => {
                self.records.remove(&key);
                self.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// Evicts records not seen within the retention.
    pub fn sweep(&mut self, now: SystemTime) {
        let horizon = now
            .checked_sub(self.max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        while let Some((&(last_seen, _), _)) = self.order.first_key_value() {
            if last_seen >= horizon || !self.evict_oldest() {
                break;
            }
        }
    }

    fn publish(&mut self, e: &Evidence) {
        let mut lagged = 0;
        self.subscribers.retain(|s| {
            if !s.filter.matches(e) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(e.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::Relaxed);
                    lagged += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.watch_lagged += lagged;
    }

    /// Records matching `filter`, most recent first, at most `limit`.
    pub fn query(&self, filter: &Filter, limit: usize) -> QueryResult {
        let mut evidence: Vec<Evidence> = self
            .records
            .values()
            .map(|(e, _)| e)
            .filter(|e| filter.matches(e))
            .cloned()
            .collect();
        evidence.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(b.count.cmp(&a.count)));
        let truncated = evidence.len() > limit;
        evidence.truncate(limit);
        QueryResult {
            evidence,
            truncated,
        }
    }

    pub fn subscribe(
        &mut self,
        filter: Filter,
        tx: mpsc::Sender<Evidence>,
        lagged: Arc<AtomicBool>,
    ) {
        self.subscribers.push(Subscriber { filter, tx, lagged });
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            records: self.records.len() as u64,
            capacity: self.capacity as u64,
            evicted: self.evicted,
            watch_lagged: self.watch_lagged,
        }
    }
}

/// Requests to the store task.
pub enum Command {
    Query {
        filter: Filter,
        limit: usize,
        reply: oneshot::Sender<QueryResult>,
    },
    /// `ready` is answered once the subscription is in place, so nothing recorded after
    /// `subscribe` returns is missed.
    Subscribe {
        filter: Filter,
        tx: mpsc::Sender<Evidence>,
        lagged: Arc<AtomicBool>,
        ready: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<StoreStats>,
    },
}

/// The store task is gone (agent shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the evidence store is shutting down")]
pub struct StoreGone;

/// Cloneable access to the store task.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
}

impl StoreHandle {
    pub fn new(tx: mpsc::Sender<Command>) -> Self {
        StoreHandle { tx }
    }

    pub async fn query(&self, filter: Filter, limit: usize) -> Result<QueryResult, StoreGone> {
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

    /// A stream of updated records matching `filter`; `lagged` is set if the store dropped it
    /// for being too slow.
    pub async fn subscribe(
        &self,
        filter: Filter,
    ) -> Result<(mpsc::Receiver<Evidence>, Arc<AtomicBool>), StoreGone> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let (ready, ack) = oneshot::channel();
        self.tx
            .send(Command::Subscribe {
                filter,
                tx,
                lagged: lagged.clone(),
                ready,
            })
            .await
            .map_err(|_| StoreGone)?;
        ack.await.map_err(|_| StoreGone)?;
        Ok((rx, lagged))
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats { reply })
            .await
            .map_err(|_| StoreGone)?;
        rx.await.map_err(|_| StoreGone)
    }
}

/// Runs the store until cancelled or its inputs close.
pub async fn run(
    mut store: Store,
    mut occurrences: mpsc::Receiver<Occurrence>,
    mut commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
) {
    let mut sweep = tokio::time::interval(AGE_SWEEP);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            o = occurrences.recv() => match o {
                Some(o) => store.record(o),
                None => break,
            },
            c = commands.recv() => match c {
                Some(Command::Query { filter, limit, reply }) => {
                    let _ = reply.send(store.query(&filter, limit));
                }
                Some(Command::Subscribe { filter, tx, lagged, ready }) => {
                    store.subscribe(filter, tx, lagged);
                    let _ = ready.send(());
                }
                Some(Command::Stats { reply }) => {
                    let _ = reply.send(store.stats());
                }
                None => break,
            },
            _ = sweep.tick() => store.sweep(SystemTime::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Attribution, PodRef, Process};

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn occ(pod: &str, dst: &str, sport: u16, at: u64) -> Occurrence {
        Occurrence {
            kind: Kind::ConnectionRefused,
            at: t(at),
            pod: Some(PodRef {
                namespace: "ns".into(),
                name: pod.into(),
                uid: format!("uid-{pod}"),
            }),
            container: Some("app".into()),
            process: Some(Process {
                pid: u32::from(sport),
                comm: "curl".into(),
            }),
            attribution: Attribution::Cgroup,
            direction: Direction::Outbound,
            src: SocketAddr::new("10.0.0.1".parse().unwrap(), sport),
            dst: dst.parse().unwrap(),
            protocol: Protocol::Tcp,
            reason: None,
            peer: None,
        }
    }

    fn everything() -> Filter {
        Filter {
            include_unattributed: true,
            ..Filter::default()
        }
    }

    #[test]
    fn repeats_aggregate_with_first_last_and_count() {
        let mut s = Store::new("n1".into(), 100, DEFAULT_MAX_AGE);
        s.record(occ("a", "10.0.0.2:80", 40000, 10));
        s.record(occ("a", "10.0.0.2:80", 40001, 30));
        s.record(occ("a", "10.0.0.2:80", 40002, 20)); // late arrival
        let r = s.query(&everything(), 10);
        assert_eq!(r.evidence.len(), 1);
        let e = &r.evidence[0];
        assert_eq!(e.count, 3);
        assert_eq!((e.first_seen, e.last_seen), (t(10), t(30)));
        assert_eq!(e.src.port(), 40001, "src port of the latest occurrence");
        assert_eq!(e.node, "n1");
    }

    #[test]
    fn different_destinations_and_pods_are_different_records() {
        let mut s = Store::new("n1".into(), 100, DEFAULT_MAX_AGE);
        s.record(occ("a", "10.0.0.2:80", 1, 1));
        s.record(occ("a", "10.0.0.2:81", 1, 2));
        s.record(occ("b", "10.0.0.2:80", 1, 3));
        let r = s.query(&everything(), 10);
        assert_eq!(r.evidence.len(), 3);
        assert_eq!(
            r.evidence[0].pod.as_ref().unwrap().name,
            "b",
            "newest first"
        );
        let only_a = Filter {
            pod: Some("a".into()),
            namespace: Some("ns".into()),
            ..Filter::default()
        };
        assert_eq!(s.query(&only_a, 10).evidence.len(), 2);
        let limited = s.query(&everything(), 2);
        assert!(limited.truncated);
        assert_eq!(limited.evidence.len(), 2);
    }

    #[test]
    fn capacity_evicts_least_recently_seen_and_counts() {
        let mut s = Store::new("n1".into(), 2, DEFAULT_MAX_AGE);
        s.record(occ("a", "10.0.0.2:1", 1, 1));
        s.record(occ("a", "10.0.0.2:2", 1, 2));
        s.record(occ("a", "10.0.0.2:1", 1, 3)); // refresh :1
        s.record(occ("a", "10.0.0.2:3", 1, 4)); // evicts :2
        let ports: Vec<u16> = s
            .query(&everything(), 10)
            .evidence
            .iter()
            .map(|e| e.dst.port())
            .collect();
        assert_eq!(ports, vec![3, 1]);
        assert_eq!(s.stats().evicted, 1);
        assert_eq!(s.stats().records, 2);
    }

    #[test]
    fn age_sweep_evicts_old_records() {
        let mut s = Store::new("n1".into(), 10, Duration::from_secs(100));
        s.record(occ("a", "10.0.0.2:1", 1, 1));
        s.record(occ("a", "10.0.0.2:2", 1, 150));
        s.sweep(t(200));
        assert_eq!(s.query(&everything(), 10).evidence.len(), 1);
        assert_eq!(s.stats().evicted, 1);
    }

    #[test]
    fn slow_watchers_are_dropped_and_counted() {
        let mut s = Store::new("n1".into(), 10, DEFAULT_MAX_AGE);
        let (tx, mut rx) = mpsc::channel(1);
        let lagged = Arc::new(AtomicBool::new(false));
        s.subscribe(Filter::default(), tx, lagged.clone());
        s.record(occ("a", "10.0.0.2:1", 1, 1));
        s.record(occ("a", "10.0.0.2:1", 1, 2)); // buffer full: dropped
        assert!(lagged.load(Ordering::Relaxed));
        assert_eq!(s.stats().watch_lagged, 1);
        assert_eq!(rx.try_recv().unwrap().count, 1);
        s.record(occ("a", "10.0.0.2:1", 1, 3));
        assert!(rx.try_recv().is_err(), "unsubscribed");
    }

    #[tokio::test]
    async fn task_answers_commands() {
        let (otx, orx) = mpsc::channel(8);
        let (ctx, crx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            Store::new("n1".into(), 10, DEFAULT_MAX_AGE),
            orx,
            crx,
            cancel.clone(),
        ));
        let handle = StoreHandle::new(ctx);
        let (mut watch, _) = handle.subscribe(Filter::default()).await.unwrap();
        otx.send(occ("a", "10.0.0.2:1", 1, 1)).await.unwrap();
        assert_eq!(watch.recv().await.unwrap().count, 1);
        let r = handle.query(Filter::default(), 10).await.unwrap();
        assert_eq!(r.evidence.len(), 1);
        assert_eq!(handle.stats().await.unwrap().records, 1);
        cancel.cancel();
        task.await.unwrap();
        assert!(handle.query(Filter::default(), 10).await.is_err());
    }
}
