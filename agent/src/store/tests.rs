//! Store unit tests: aggregation, fairness between pods, expiry, watchers, the task.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::evidence::{
    Attribution,
    fixtures::{refused, t},
};

fn store(capacity: usize) -> Store {
    Store::new(
        StoreConfig::new("n1", capacity, DEFAULT_MAX_AGE),
        Arc::new(Counters::default()),
    )
}

fn occ(pod: &str, port: u16, at: u64) -> Occurrence {
    refused()
        .pod("ns", pod)
        .dst(&format!("10.0.0.2:{port}"))
        .at(at)
        .occurrence()
}

fn everything() -> Filter {
    Filter {
        include_unattributed: true,
        ..Filter::default()
    }
}

fn only(pod: &str) -> Filter {
    Filter {
        namespace: Some("ns".into()),
        pod: Some(pod.into()),
        ..Filter::default()
    }
}

#[test]
fn repeats_aggregate_with_first_last_and_count() {
    let mut s = store(100);
    s.record(refused().src("10.0.0.1:40000").at(10).occurrence());
    s.record(refused().src("10.0.0.1:40001").at(30).occurrence());
    s.record(refused().src("10.0.0.1:40002").at(20).occurrence()); // late arrival
    let r = s.query(&everything(), 10);
    assert_eq!(r.evidence.len(), 1);
    let e = &r.evidence[0];
    assert_eq!(e.count, 3);
    assert_eq!((e.first_seen, e.last_seen), (t(10), t(30)));
    assert_eq!(
        e.detail.connection().unwrap().src.port(),
        40001,
        "src port of the latest occurrence"
    );
    assert_eq!(&*e.node, "n1");
}

#[test]
fn different_destinations_and_pods_are_different_records() {
    let mut s = store(100);
    s.record(occ("a", 80, 1));
    s.record(occ("a", 81, 2));
    s.record(occ("b", 80, 3));
    let r = s.query(&everything(), 10);
    assert_eq!(r.evidence.len(), 3);
    assert_eq!(r.evidence[0].pod().unwrap().name, "b", "newest first");
    assert_eq!(s.query(&only("a"), 10).evidence.len(), 2);
    let limited = s.query(&everything(), 2);
    assert!(limited.truncated);
    assert_eq!(limited.evidence.len(), 2);
}

#[test]
fn a_pod_over_its_quota_loses_its_own_oldest_and_the_loss_is_counted_for_it() {
    let mut s = store(100); // pod quota 5
    s.record(occ("a", 1, 1));
    s.record(occ("a", 2, 2));
    s.record(occ("a", 1, 3)); // refresh :1
    for port in 3..=5 {
        s.record(occ("a", port, u64::from(port) + 1));
    }
    s.record(occ("a", 6, 10)); // a has 5: evicts its least recently seen (:2)
    let ports: Vec<u16> = s
        .query(&only("a"), 10)
        .evidence
        .iter()
        .map(|e| e.detail.connection().unwrap().dst.port())
        .collect();
    assert_eq!(ports, vec![6, 5, 4, 3, 1]);
    assert_eq!(s.stats().evicted, 1);
    assert_eq!(s.query(&only("a"), 10).evicted, 1);
    assert_eq!(s.query(&only("b"), 10).evicted, 0);
    let window = Filter {
        since: Some(t(3)),
        ..only("a")
    };
    assert_eq!(
        s.query(&window, 10).evicted,
        0,
        "the evicted record was last seen before the window"
    );
}

#[test]
fn one_noisy_pod_cannot_erase_other_pods_evidence() {
    let mut s = store(20_000); // pod quota 1,000
    for pod in ["quiet-1", "quiet-2", "quiet-3"] {
        for port in 0..10 {
            s.record(occ(pod, port, 1));
        }
    }
    // 30,000 distinct refusals from one pod (the measured attack).
    for i in 0..30_000u32 {
        let port = u16::try_from(i % 60_000).unwrap();
        s.record(
            refused()
                .pod("ns", "noisy")
                .dst(&format!("10.0.{}.2:{port}", i / 60_000))
                .at(2 + u64::from(i))
                .occurrence(),
        );
    }
    for pod in ["quiet-1", "quiet-2", "quiet-3"] {
        let r = s.query(&only(pod), 100);
        assert_eq!(r.evidence.len(), 10, "{pod} kept all its evidence");
        assert_eq!(r.evicted, 0);
    }
    let noisy = s.query(&only("noisy"), 10);
    assert_eq!(noisy.evicted, 29_000);
    assert_eq!(s.stats().records, 30 + 1_000);
}

#[test]
fn namespace_and_unattributed_budgets() {
    let mut cfg = StoreConfig::new("n1", 1000, DEFAULT_MAX_AGE);
    cfg.pod_quota = 100;
    cfg.namespace_quota = 4;
    cfg.unattributed_quota = 2;
    let mut s = Store::new(cfg, Arc::new(Counters::default()));
    s.record(refused().pod("other", "keep").at(1).occurrence());
    for (i, pod) in ["a", "a", "a", "b", "b"].iter().enumerate() {
        let i = u16::try_from(i).unwrap();
        s.record(occ(pod, i, u64::from(i) + 2));
    }
    // ns "ns" holds at most 4: the biggest pod in it (a) lost its oldest.
    assert_eq!(s.query(&only("a"), 10).evidence.len(), 2);
    assert_eq!(s.query(&only("b"), 10).evidence.len(), 2);
    for port in 0..5u16 {
        s.record(
            refused()
                .unattributed()
                .dst(&format!("10.9.9.9:{port}"))
                .at(10 + u64::from(port))
                .occurrence(),
        );
    }
    let unattributed = s
        .query(&everything(), 100)
        .evidence
        .iter()
        .filter(|e| e.subject.attribution == Attribution::None)
        .count();
    assert_eq!(unattributed, 2);
    let other = Filter {
        namespace: Some("other".into()),
        ..Filter::default()
    };
    assert_eq!(s.query(&other, 10).evidence.len(), 1, "untouched");
}

#[test]
fn full_store_evicts_from_the_biggest_owner() {
    let mut cfg = StoreConfig::new("n1", 6, DEFAULT_MAX_AGE);
    cfg.pod_quota = 6;
    cfg.namespace_quota = 6;
    let mut s = Store::new(cfg, Arc::new(Counters::default()));
    for port in 0..4 {
        s.record(occ("big", port, 1 + u64::from(port)));
    }
    s.record(occ("small", 0, 10));
    s.record(occ("small", 1, 11));
    s.record(occ("new", 0, 12));
    assert_eq!(s.query(&only("big"), 10).evidence.len(), 3);
    assert_eq!(s.query(&only("small"), 10).evidence.len(), 2);
    assert_eq!(s.query(&only("new"), 10).evidence.len(), 1);
}

#[test]
fn expiry_is_not_eviction() {
    let mut cfg = StoreConfig::new("n1", 10, Duration::from_secs(100));
    cfg.pod_quota = 10;
    let counters = Arc::new(Counters::default());
    let mut s = Store::new(cfg, counters.clone());
    s.record(occ("a", 1, 1));
    s.record(occ("a", 2, 150));
    s.sweep(t(200));
    assert_eq!(s.query(&everything(), 10).evidence.len(), 1);
    assert_eq!(s.stats().expired, 1);
    assert_eq!(s.stats().evicted, 0);
    assert_eq!(counters.get(Loss::StoreEvicted), 0, "expiry is no loss");
    assert_eq!(s.query(&only("a"), 10).evicted, 0);
}

#[test]
fn slow_watchers_are_dropped_and_counted_and_watchers_are_bounded() {
    let counters = Arc::new(Counters::default());
    let mut s = Store::new(
        StoreConfig::new("n1", 10, DEFAULT_MAX_AGE),
        counters.clone(),
    );
    let (tx, mut rx) = mpsc::channel(1);
    let lag = Arc::new(Lag::default());
    assert!(s.subscribe(Filter::default(), tx, lag.clone(), None));
    s.record(occ("a", 1, 1));
    s.record(occ("a", 1, 2)); // buffer full: dropped
    assert!(lag.is_lagged());
    assert_eq!(counters.get(Loss::WatchLagged), 1);
    assert_eq!(rx.try_recv().unwrap().count, 1);
    s.record(occ("a", 1, 3));
    assert!(rx.try_recv().is_err(), "unsubscribed");
    drop(lag); // the watcher went away: nothing left to count for it

    let mut keep = Vec::new();
    for _ in 0..MAX_SUBSCRIBERS {
        let (tx, rx) = mpsc::channel(1);
        keep.push(rx);
        assert!(s.subscribe(Filter::default(), tx, Arc::default(), None));
    }
    let (tx, _rx) = mpsc::channel(1);
    assert!(!s.subscribe(Filter::default(), tx, Arc::default(), None));
    keep.pop(); // a watcher that went away frees its place
    let (tx, _rx) = mpsc::channel(1);
    assert!(s.subscribe(Filter::default(), tx, Arc::default(), None));
}

#[derive(Default, Clone)]
struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);
impl Backend for Recorder {
    fn upsert(&mut self, _: u64, e: &Evidence) {
        if let Ok(mut log) = self.0.lock() {
            log.push(format!("upsert {} {}", e.kind().as_str(), e.count));
        }
    }
    fn remove(&mut self, _: u64, e: &Evidence) {
        if let Ok(mut log) = self.0.lock() {
            log.push(format!("remove {}", e.count));
        }
    }
}

#[test]
fn backend_sees_every_change_in_order() {
    let mut cfg = StoreConfig::new("n1", 10, DEFAULT_MAX_AGE);
    cfg.pod_quota = 1;
    let mut s = Store::new(cfg, Arc::new(Counters::default()));
    let rec = Recorder::default();
    s.set_backend(Box::new(rec.clone()));
    s.record(occ("a", 1, 1));
    s.record(occ("a", 1, 2));
    s.record(occ("a", 2, 3));
    assert_eq!(
        *rec.0.lock().unwrap(),
        vec![
            "upsert connection_refused 1",
            "upsert connection_refused 2",
            "remove 2",
            "upsert connection_refused 1"
        ]
    );
}

#[tokio::test]
async fn task_answers_commands() {
    let cancel = CancellationToken::new();
    let (handle, occurrences, task) = spawn(store(10), cancel.clone());
    let task = tokio::spawn(task);
    let mut watch = handle.subscribe(Filter::default()).await.unwrap();
    // A current time: the task's retention sweep (its first tick is at once) would expire an
    // old one, racing the assertions below.
    let now = refused()
        .pod("ns", "a")
        .dst("10.0.0.2:1")
        .at_time(SystemTime::now())
        .occurrence();
    occurrences.send(Attributed::Occurrence(now)).await.unwrap();
    assert_eq!(watch.updates.recv().await.unwrap().count, 1);
    let r = handle.query(Filter::default(), 10).await.unwrap();
    assert_eq!(r.evidence.len(), 1);
    assert_eq!(handle.stats().await.unwrap().records, 1);
    cancel.cancel();
    task.await.unwrap();
    assert!(handle.query(Filter::default(), 10).await.is_err());
}

#[test]
fn colliding_key_hashes_keep_their_records_apart() {
    let mut r = Records::default();
    let node: Arc<str> = "n1".into();
    let a = refused().pod("ns", "a").evidence();
    let b = refused().pod("ns", "b").evidence();
    let (ka, kb) = (Key::of_evidence(&a), Key::of_evidence(&b));
    assert_ne!(ka, kb);
    // Both under one hash, as a collision would put them.
    let ia = r.insert(7, a, 1);
    let ib = r.insert(7, b, 2);
    assert_eq!(r.len(), 2);
    assert_eq!(r.find(7, &ka), Some(ia));
    assert_eq!(r.find(7, &kb), Some(ib));
    assert_eq!(r.evidence(ib, &node).unwrap().pod().unwrap().name, "b");
    let gone = r.remove(7, ia, Some(&node)).unwrap();
    assert_eq!(gone.id, 1);
    assert_eq!(gone.evidence.unwrap().pod().unwrap().name, "a");
    assert!(r.find(7, &ka).is_none());
    assert_eq!(r.find(7, &kb), Some(ib), "the other survives");
    assert!(r.remove(7, ib, None).is_some());
    assert_eq!(r.len(), 0);
}

/// A pod's lookup counters are kept beside the records: they add up per pod, take no record's
/// room and are answered with the pod's query.
#[test]
fn dns_lookups_add_up_beside_the_records() {
    let mut s = store(10);
    let pod = crate::evidence::fixtures::pod_ref("ns", "a");
    for at in [1, 2] {
        s.add(Attributed::DnsLookups(PodLookups {
            at: t(at),
            pod: pod.clone(),
            lookups: DnsLookups {
                lookups: 5,
                ..DnsLookups::default()
            },
        }));
    }
    s.add(occ("a", 80, 3).into());
    let r = s.query(&only("a"), 10);
    assert_eq!(r.evidence.len(), 1, "lookups are no record");
    assert_eq!(r.dns_lookups.len(), 1);
    assert_eq!(r.dns_lookups[0].1.lookups, 10);
    assert_eq!(s.stats().records, 1);
}

/// Past [`DNS_LOOKUP_PODS`] pods, the least recently updated pod's counters are forgotten and
/// counted by their lookups.
#[test]
fn forgotten_dns_lookup_counters_are_counted_by_their_lookups() {
    let counters = Arc::new(Counters::default());
    let mut s = Store::new(
        StoreConfig::new("n1", 10, DEFAULT_MAX_AGE),
        counters.clone(),
    );
    let lookups = |pod: &str, at: u64, n: u64| {
        Attributed::DnsLookups(PodLookups {
            at: t(at),
            pod: crate::evidence::fixtures::pod_ref("ns", pod),
            lookups: DnsLookups {
                lookups: n,
                ..DnsLookups::default()
            },
        })
    };
    // The oldest pod has 7 lookups in two tallies; every other pod 1.
    s.add(lookups("oldest", 1, 3));
    s.add(lookups("oldest", 2, 4));
    for i in 1..DNS_LOOKUP_PODS {
        s.add(lookups(&format!("p{i}"), 10, 1));
    }
    assert_eq!(counters.get(Loss::DnsLookupsForgotten), 0, "all fit");
    s.add(lookups("newcomer", 20, 1));
    assert_eq!(counters.get(Loss::DnsLookupsForgotten), 7);
    assert!(s.query(&only("oldest"), 10).dns_lookups.is_empty());
    assert_eq!(s.query(&only("newcomer"), 10).dns_lookups.len(), 1);
    // A pod already kept adds up without forgetting anyone.
    s.add(lookups("newcomer", 21, 1));
    assert_eq!(counters.get(Loss::DnsLookupsForgotten), 7);
}

/// What a scan and a flood send a pod: `n` inbound occurrences, each from `sender(i)` to
/// `port(i)`, starting at second `at`.
fn inbound(
    s: &mut Store,
    b: fn() -> crate::evidence::fixtures::Builder,
    n: u32,
    at: u64,
    sender: impl Fn(u32) -> String,
    port: impl Fn(u32) -> u16,
) {
    for i in 0..n {
        s.record(
            b().pod("ns", "victim")
                .direction(crate::evidence::Direction::Inbound)
                .src(&format!("{}:{}", sender(i), 30_000 + i % 1000))
                .dst(&format!("10.0.0.9:{}", port(i)))
                .at(at + u64::from(i) / 1000)
                .occurrence(),
        );
    }
}

#[test]
fn a_scan_and_a_flood_against_a_pod_fold_and_never_push_out_its_own_evidence() {
    use crate::evidence::fixtures::{dropped, oom_killed};
    // 2,000 records: a pod may hold 100.
    let mut s = store(2000);
    let victim = |b: crate::evidence::fixtures::Builder| b.pod("ns", "victim");
    s.record(victim(oom_killed()).at(1).occurrence());
    s.record(victim(refused()).dst("10.0.0.7:5432").at(2).occurrence());
    // 40,000 closed ports scanned from one address; 40,000 dropped datagrams from 200.
    inbound(
        &mut s,
        refused,
        40_000,
        10,
        |_| "10.0.0.66".into(),
        |i| 1 + i as u16,
    );
    inbound(
        &mut s,
        dropped,
        40_000,
        60,
        |i| format!("10.1.{}.{}", i % 200 / 100, i % 100),
        |i| 10_000 + (i % 30_000) as u16,
    );
    let r = s.query(&only("victim"), 1000);
    let of = |kind: Kind| r.evidence.iter().filter(move |e| e.kind() == kind);
    assert_eq!(of(Kind::OomKill).count(), 1, "the OOM kill stays");
    assert!(
        of(Kind::ConnectionRefused).any(|e| e.detail.connection().unwrap().dst.port() == 5432
            && e.detail.endpoints().unwrap().0 == crate::evidence::Direction::Outbound),
        "the outbound refusal stays"
    );
    assert_eq!(r.evicted, 0, "nothing of the victim's was lost");
    // Each attack: 32 single records at most, then one folded record; counts are exact.
    for kind in [Kind::ConnectionRefused, Kind::PacketDrop] {
        let inbound: Vec<&Evidence> = of(kind).filter(|e| e.detail.folding().is_some()).collect();
        assert!(
            inbound.len() <= INBOUND_RECORDS + 1,
            "{kind}: {}",
            inbound.len()
        );
        assert_eq!(
            inbound.iter().map(|e| e.count).sum::<u64>(),
            40_000,
            "{kind}"
        );
        let folded: Vec<&Evidence> = inbound
            .iter()
            .copied()
            .filter(|e| e.folded.is_some())
            .collect();
        assert_eq!(folded.len(), 1, "{kind}");
        let f = folded[0].folded.as_deref().unwrap();
        assert!(f.ports_more);
        let named: u64 = f.senders.iter().map(|(_, n)| n).sum();
        assert_eq!(named + f.other_senders_count, folded[0].count, "{kind}");
    }
    let scan = of(Kind::ConnectionRefused)
        .find(|e| e.folded.is_some())
        .unwrap();
    let f = scan.folded.as_deref().unwrap();
    assert_eq!(f.senders, vec![("10.0.0.66".parse().unwrap(), 40_000 - 32)]);
    assert_eq!((f.port_min, f.port_max), (33, 40_000));
    assert_eq!(
        scan.detail_cells()[1..3],
        ["10.0.0.66".to_owned(), "10.0.0.9:33-40000".to_owned()]
    );
}

#[test]
fn a_pod_over_its_quota_loses_inbound_records_before_its_own() {
    // 200 records: a pod may hold 10.
    let mut s = store(200);
    for port in 0..8 {
        s.record(occ("victim", 5000 + port, u64::from(port)));
    }
    inbound(&mut s, refused, 5, 100, |i| format!("10.2.0.{i}"), |_| 22);
    let r = s.query(&only("victim"), 100);
    assert_eq!(r.evidence.len(), 10);
    assert_eq!(
        own_records(&r),
        8,
        "the pod's own 8 outlive newer inbound records"
    );
    // Two kept whole fill the quota; the third folds (pushing out the older inbound record),
    // the last two count into the folded one.
    assert_eq!(r.evicted, 1);
    let folded = r.evidence.iter().find(|e| e.folded.is_some()).unwrap();
    assert_eq!(folded.count, 3);
}

#[test]
fn a_selection_is_the_newest_records_and_finish_orders_them() {
    let mut s = store(1000);
    // Five pods, 40 records each, times interleaved across pods; one tie on time broken by
    // count.
    for i in 0..200u64 {
        let pod = format!("p{}", i % 5);
        s.record(occ(&pod, u16::try_from(i).unwrap(), 1000 + i));
    }
    s.record(occ("p0", 10_000, 1199));
    s.record(occ("p0", 10_000, 1199));
    let all = s.query(&everything(), 1000).evidence;
    assert_eq!(all.len(), 201);

    let selection = s.select(&everything(), 25);
    assert_eq!(selection.len(), 25);
    let r = selection.finish();
    assert!(r.truncated);
    assert_eq!(
        r.evidence,
        all[..25],
        "the newest 25, in the full answer's order"
    );
    assert_eq!(
        r.evidence[0].count, 2,
        "of equal times, the higher count first"
    );
    assert!(
        r.evidence
            .windows(2)
            .all(|w| w[0].last_seen >= w[1].last_seen)
    );

    // Not cut: everything, not truncated; a limit of 0 is an empty, truncated answer.
    assert!(!s.select(&everything(), 201).finish().truncated);
    let none = s.select(&everything(), 0).finish();
    assert!(none.evidence.is_empty() && none.truncated);
}

#[tokio::test]
async fn at_shutdown_every_occurrence_already_sent_is_recorded_before_the_backend_closes() {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut s = store(100);
    s.set_backend(Box::new(Recorder(log.clone())));
    let cancel = CancellationToken::new();
    let (_handle, occurrences, task) = spawn(s, cancel.clone());
    for port in 0..20 {
        let o = refused()
            .pod("ns", "a")
            .dst(&format!("10.0.0.2:{port}"))
            .at_time(SystemTime::now())
            .occurrence();
        occurrences.send(Attributed::Occurrence(o)).await.unwrap();
    }
    // Shutdown before the task ran; then attribution (the sender) ends.
    cancel.cancel();
    drop(occurrences);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the store ends once attribution is gone");
    let upserts = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("upsert"))
        .count();
    assert_eq!(upserts, 20);
}

/// A dropped watcher's missed updates are counted, by update, until it subscribes again
/// resuming its lag; updates of other pods than its filter's are not.
#[test]
fn a_dropped_watcher_learns_how_many_updates_it_missed() {
    let mut s = store(100);
    let (tx, mut rx) = mpsc::channel(1);
    let lag = Arc::new(Lag::default());
    assert!(s.subscribe(only("a"), tx, lag.clone(), None));
    s.record(occ("a", 1, 1)); // delivered
    s.record(occ("a", 1, 2)); // did not fit: dropped, 1 missed
    assert!(lag.is_lagged());
    s.record(occ("a", 2, 3)); // missed
    s.record(occ("b", 1, 4)); // not its filter's
    s.record(occ("a", 1, 5)); // missed
    assert_eq!(rx.try_recv().unwrap().count, 1);
    assert!(rx.try_recv().is_err());
    let (tx, mut rx) = mpsc::channel(4);
    let next = Arc::new(Lag::default());
    assert!(s.subscribe(only("a"), tx, next.clone(), Some(&lag)));
    assert_eq!(lag.missed(), 3);
    s.record(occ("a", 1, 6));
    assert_eq!(lag.missed(), 3, "counting stopped at the new subscription");
    assert_eq!(rx.try_recv().unwrap().count, 4);
    assert_eq!(next.missed(), 0);
}

/// A dropped watch's missed updates are `watch_lagged`, each as it is missed (the one that did
/// not fit, and every matching one while the watch is held), not one per watcher; a resumable
/// subscriber's (the OTLP exporter's) are its own to count, not `watch_lagged`.
#[test]
fn watch_lagged_counts_every_update_a_dropped_watch_missed() {
    let counters = Arc::new(Counters::default());
    let mut s = Store::new(
        StoreConfig::new("n1", 100, DEFAULT_MAX_AGE),
        counters.clone(),
    );
    let (tx, _watch_rx) = mpsc::channel(1);
    let watch = Arc::new(Lag::default());
    assert!(s.subscribe(only("a"), tx, watch.clone(), None));
    let (tx, _otlp_rx) = mpsc::channel(1);
    let otlp = Arc::new(Lag::resumable());
    assert!(s.subscribe(everything(), tx, otlp.clone(), None));
    s.record(occ("a", 1, 1)); // delivered to both
    s.record(occ("a", 1, 2)); // fits neither: both dropped
    assert!(watch.is_lagged() && otlp.is_lagged());
    assert_eq!(counters.get(Loss::WatchLagged), 1);
    s.record(occ("a", 2, 3)); // missed by both
    s.record(occ("b", 1, 4)); // not the watch's filter: missed by the exporter only
    s.record(occ("a", 1, 5)); // missed by both
    assert_eq!(watch.missed(), 3);
    assert_eq!(otlp.missed(), 4);
    assert_eq!(
        counters.get(Loss::WatchLagged),
        3,
        "the watch's missed updates, none of the exporter's"
    );
    // The watch's stream ended: nothing more is counted for it.
    drop(watch);
    s.record(occ("a", 1, 6));
    assert_eq!(counters.get(Loss::WatchLagged), 3);
    assert_eq!(otlp.missed(), 5);
}

/// Through the task, as the OTLP exporter does: a subscription that is never read is dropped,
/// and resubscribing resuming its lag tells how many updates it missed in all.
#[tokio::test]
async fn a_resubscribing_watcher_is_told_every_update_it_missed() {
    let cancel = CancellationToken::new();
    let (handle, occurrences, task) = spawn(store(100_000), cancel.clone());
    let task = tokio::spawn(task);
    let sub = handle.subscribe_resumable(everything()).await.unwrap();
    let sent = WATCH_BUFFER as u64 + 10;
    for i in 0..sent {
        occurrences
            .send(occ("a", (i % 60_000) as u16 + 1, i).into())
            .await
            .unwrap();
    }
    // A query is answered after every occurrence sent before it.
    handle.query(everything(), 1).await.unwrap();
    assert!(sub.lag.is_lagged());
    let lag = sub.lag.clone();
    drop(sub);
    let next = handle.resubscribe(everything(), lag.clone()).await.unwrap();
    assert_eq!(lag.missed(), sent - WATCH_BUFFER as u64);
    assert!(!next.lag.is_lagged());
    cancel.cancel();
    task.await.unwrap();
}

/// The pod's own records in an answer (not inbound ones).
fn own_records(r: &QueryResult) -> usize {
    r.evidence
        .iter()
        .filter(|e| e.detail.folding().is_none())
        .count()
}

/// A store of 200 records (a pod may hold 10) with `own` records of the victim's own, then a
/// 500-port scan of it from one address.
fn scanned_at_quota(own: u16) -> QueryResult {
    let mut s = store(200);
    for port in 0..own {
        s.record(occ("victim", 5000 + port, u64::from(port)));
    }
    inbound(
        &mut s,
        refused,
        500,
        100,
        |_| "10.2.0.9".into(),
        |i| 1 + i as u16,
    );
    s.query(&only("victim"), 100)
}

#[test]
fn a_scan_against_a_pod_at_its_quota_folds_and_never_pushes_out_its_own() {
    // Ten of its own: nothing of the scan could be kept without pushing one out; given up,
    // counted once per occurrence.
    let r = scanned_at_quota(10);
    assert_eq!(own_records(&r), 10, "all its own records stay");
    assert_eq!(r.evidence.len(), 10);
    assert_eq!(r.evicted, 500);

    // Nine: the scan's first record fills the quota, the rest fold into one record beside it.
    let r = scanned_at_quota(9);
    assert_eq!(own_records(&r), 9);
    let inbound_counts: u64 = r
        .evidence
        .iter()
        .filter(|e| e.detail.folding().is_some())
        .map(|e| e.count)
        .sum();
    assert_eq!(
        inbound_counts + r.evicted,
        500,
        "every occurrence kept or counted"
    );
    assert!(r.evidence.iter().any(|e| e.folded.is_some()));
}

/// The (last_seen, id) of an owner's oldest record (of its two lists' oldest, the one seen
/// first), by a walk of its records; checks that its lists are in last-seen order and of the
/// length they say.
fn oldest_by_scan(s: &Store, state: &OwnerState) -> Option<(u64, u64)> {
    let mut heads = Vec::new();
    for list in [&state.own, &state.inbound] {
        let places: Vec<(u64, u64)> = s
            .records
            .newest_first(list)
            .map(|i| s.records.place(i).unwrap())
            .collect();
        assert_eq!(places.len(), list.len());
        assert!(list.sorted);
        assert!(places.windows(2).all(|w| w[0].0 >= w[1].0), "in order");
        heads.extend(places.last());
    }
    heads.into_iter().min()
}

/// The biggest owner by a scan of every owner (what [`Ranking`] answers in O(log owners)): the
/// most records (in `namespace`, of the owner's pod, when given), of equal counts the one
/// holding the oldest record.
fn biggest_by_scan(s: &Store, namespace: Option<&str>) -> Option<Owner> {
    let mut best: Option<(&Owner, usize, (u64, u64))> = None;
    for (owner, state) in &s.owners {
        let Some(oldest) = oldest_by_scan(s, state) else {
            continue;
        };
        if namespace.is_some_and(|ns| state.pod.as_ref().is_none_or(|p| p.namespace != ns)) {
            continue;
        }
        let len = state.len();
        let better = match best {
            None => true,
            Some((_, most, best_oldest)) => len > most || (len == most && oldest < best_oldest),
        };
        if better {
            best = Some((owner, len, oldest));
        }
    }
    best.map(|(owner, _, _)| owner.clone())
}

/// The ranking holds exactly every owner with records, at its rank, over all and under its
/// pod's namespace, and answers as a scan does.
fn assert_ranking_is_true(s: &Store, namespaces: &[&str]) {
    type Set = BTreeMap<Rank, Owner>;
    let mut all = Set::new();
    let mut by_namespace: foldhash::HashMap<String, Set> = foldhash::HashMap::default();
    for (owner, state) in &s.owners {
        let Some(oldest) = oldest_by_scan(s, state) else {
            continue;
        };
        let rank = Rank {
            most: std::cmp::Reverse(state.len()),
            oldest,
        };
        assert!(
            all.insert(rank, owner.clone()).is_none(),
            "ranks are unique"
        );
        if let Some(pod) = &state.pod {
            by_namespace
                .entry(pod.namespace.clone())
                .or_default()
                .insert(rank, owner.clone());
        }
    }
    assert_eq!(s.ranking.all, all);
    assert_eq!(s.ranking.by_namespace, by_namespace);
    assert_eq!(s.biggest_owner(None), biggest_by_scan(s, None));
    for ns in namespaces {
        assert_eq!(
            s.biggest_owner(Some(ns)),
            biggest_by_scan(s, Some(ns)),
            "{ns}"
        );
    }
}

#[test]
fn of_owners_of_equal_size_the_one_holding_the_oldest_record_loses_it() {
    let mut cfg = StoreConfig::new("n1", 6, DEFAULT_MAX_AGE);
    cfg.pod_quota = 6;
    cfg.namespace_quota = 6;
    let mut s = Store::new(cfg, Arc::new(Counters::default()));
    // a: seen at 3 and 4; b: at 1 and 5; c: at 2 and 6.
    for (pod, port, at) in [
        ("b", 1, 1),
        ("c", 1, 2),
        ("a", 1, 3),
        ("a", 2, 4),
        ("b", 2, 5),
        ("c", 2, 6),
    ] {
        s.record(occ(pod, port, at));
    }
    assert_ranking_is_true(&s, &["ns"]);
    assert_eq!(s.biggest_owner(None), Some(Owner::from_name("uid-b")));
    // b's oldest is seen again: c now holds the oldest record.
    s.record(occ("b", 1, 7));
    assert_ranking_is_true(&s, &["ns"]);
    s.record(occ("d", 1, 8));
    assert_eq!(s.query(&only("c"), 10).evidence.len(), 1);
    assert_eq!(s.query(&only("c"), 10).evicted, 1);
    assert_eq!(s.query(&only("b"), 10).evidence.len(), 2);
    // Now a and b hold two each, a the oldest (3).
    s.record(occ("d", 2, 9));
    assert_eq!(s.query(&only("a"), 10).evidence.len(), 1);
    assert_eq!(s.query(&only("b"), 10).evidence.len(), 2);
    assert_ranking_is_true(&s, &["ns"]);
}

#[test]
fn an_owner_forgotten_or_moved_leaves_its_place_in_the_ranking() {
    let mut cfg = StoreConfig::new("n1", 8, Duration::from_secs(100));
    cfg.pod_quota = 8;
    cfg.namespace_quota = 3;
    let mut s = Store::new(cfg, Arc::new(Counters::default()));
    for port in 0..3 {
        s.record(occ("old", port, 1 + u64::from(port)));
    }
    s.record(occ("young", 0, 150));
    assert_eq!(s.biggest_owner(None), Some(Owner::from_name("uid-old")));
    // old's records expire and it is forgotten: it no longer ranks anywhere.
    s.sweep(t(160));
    assert!(!s.owners.contains_key(&Owner::from_name("uid-old")));
    assert_ranking_is_true(&s, &["ns"]);
    assert_eq!(s.biggest_owner(None), Some(Owner::from_name("uid-young")));
    // The same pod uid seen in another namespace is filed there, not under "ns".
    s.record(
        refused()
            .pod_uid("elsewhere", "young", "uid-young")
            .dst("10.0.0.2:9")
            .at(161)
            .occurrence(),
    );
    assert_ranking_is_true(&s, &["ns", "elsewhere"]);
    assert_eq!(s.biggest_owner(Some("ns")), None);
    assert_eq!(
        s.biggest_owner(Some("elsewhere")),
        Some(Owner::from_name("uid-young"))
    );
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Asks the store to evict one record for its size budget after every flush.
struct Shrinking;
impl Backend for Shrinking {
    fn upsert(&mut self, _: u64, _: &Evidence) {}
    fn remove(&mut self, _: u64, _: &Evidence) {}
    fn shrink(&mut self, records: usize) -> usize {
        usize::from(records > 4)
    }
}

#[test]
fn the_ranking_answers_as_a_scan_of_every_owner_after_random_operations() {
    let namespaces = ["a", "b", "c"];
    for seed in 1..=4u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut cfg = StoreConfig::new("n1", 40, Duration::from_secs(400));
        cfg.pod_quota = 8;
        cfg.namespace_quota = 20;
        cfg.unattributed_quota = 6;
        let mut s = Store::new(cfg, Arc::new(Counters::default()));
        s.set_backend(Box::new(Shrinking));
        let mut now = 1000u64;
        for step in 0..6000 {
            now += rng.below(3);
            match rng.below(100) {
                // A new or repeated occurrence, at times out of order too.
                0..=79 => {
                    let at = now - rng.below(50);
                    let port = u16::try_from(rng.below(12)).unwrap_or(0);
                    let pod = rng.below(14);
                    let b = match rng.below(4) {
                        0 => crate::evidence::fixtures::dropped(),
                        _ => refused(),
                    };
                    let b = if rng.below(5) == 0 {
                        b.direction(crate::evidence::Direction::Inbound)
                            .src(&format!("10.3.0.{}:4000", rng.below(40)))
                    } else {
                        b
                    };
                    let b = match pod {
                        13 => b.unattributed(),
                        // Pod 12's uid turns up in every namespace.
                        12 => b.pod_uid(
                            namespaces[usize::try_from(rng.below(3)).unwrap_or(0)],
                            "wanderer",
                            "uid-wanderer",
                        ),
                        p => b.pod(
                            namespaces[usize::try_from(p % 3).unwrap_or(0)],
                            &format!("p{p}"),
                        ),
                    };
                    s.record(b.dst(&format!("10.0.0.2:{port}")).at(at).occurrence());
                }
                // Quotas change (as between restarts with other bounds).
                80..=83 => {
                    s.config.pod_quota = 1 + usize::try_from(rng.below(10)).unwrap_or(0);
                    s.config.namespace_quota = 1 + usize::try_from(rng.below(30)).unwrap_or(0);
                    s.config.capacity = 5 + usize::try_from(rng.below(50)).unwrap_or(0);
                }
                84..=88 => s.sweep(t(now)),
                89..=93 => s.flush_backend(),
                94..=96 => {
                    let p = rng.below(13);
                    let pod = crate::evidence::fixtures::pod_ref(
                        namespaces[usize::try_from(p % 3).unwrap_or(0)],
                        &format!("p{p}"),
                    );
                    s.restore_evictions(
                        &pod.uid,
                        Evictions {
                            pod: Some(pod.clone()),
                            evicted: 1,
                            newest: t(now),
                        },
                    );
                }
                _ => {
                    let e = refused()
                        .pod(
                            namespaces[usize::try_from(rng.below(3)).unwrap_or(0)],
                            "restored",
                        )
                        .dst(&format!("10.0.0.3:{}", rng.below(5)))
                        .at(now - rng.below(100))
                        .evidence();
                    s.restore(1_000_000 + step, e);
                }
            }
            assert_ranking_is_true(&s, &namespaces);
        }
        assert!(
            s.stats().evicted > 0,
            "seed {seed}: evictions were exercised"
        );
    }
}

#[test]
fn a_key_hashed_through_the_buffer_hashes_as_written_field_by_field() {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    let state = std::hash::RandomState::new();
    let long = "r".repeat(600); // past the buffer: the bytes stream on
    for e in [
        refused().pod("ns", "a").evidence(),
        refused().unattributed().reason(&long).evidence(),
        crate::evidence::fixtures::dropped()
            .pod("ns", "b")
            .evidence(),
    ] {
        let key = Key::of_evidence(&e);
        let mut buffered = Buffered {
            inner: state.build_hasher(),
            buf: [0; 256],
            len: 0,
        };
        key.hash(&mut buffered);
        assert_eq!(buffered.finish(), state.hash_one(&key));
    }
}

#[test]
fn a_pods_records_share_one_context_let_go_with_the_last_of_them() {
    let mut s = store(1000);
    for port in 0..20 {
        s.record(occ("a", port, 10));
    }
    s.record(occ("b", 1, 11));
    assert_eq!(s.records.len(), 21);
    assert_eq!(s.records.contexts(), 2, "one for a's records, one for b's");
    // Every record reads back as it went in (its detail packed in place).
    let got = s.query(&only("a"), 100).evidence;
    assert_eq!(got.len(), 20);
    assert!(got.contains(&{
        let mut e = Evidence::first(s.node.clone(), occ("a", 7, 10));
        e.folded = None;
        e
    }));
    s.sweep(t(11) + DEFAULT_MAX_AGE);
    assert_eq!(
        (s.records.len(), s.records.contexts()),
        (1, 1),
        "b's is left"
    );
    s.sweep(t(12) + DEFAULT_MAX_AGE);
    assert_eq!((s.records.len(), s.records.contexts()), (0, 0));
}
