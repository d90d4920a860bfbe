//! The persistent store on real SQLite files in a temporary directory: round trips through a
//! restart, unusable files moved aside, one writer per file, unreadable rows, the size budget,
//! and the store's eviction and restore paths reaching the file.

use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    attribute::{Attributed, PodLookups, PodLossTally},
    evidence::{
        DnsLookups, Filter, PodLosses,
        fixtures::{dropped, oom_killed, pod_ref, refused, t},
    },
    store::{DEFAULT_MAX_AGE, DNS_LOOKUP_PODS, Store, StoreConfig},
};

fn config(dir: &tempfile::TempDir) -> PersistConfig {
    PersistConfig {
        path: dir.path().join("state").join("evidence.db"),
        max_bytes: DEFAULT_MAX_BYTES,
        max_pending: DEFAULT_MAX_PENDING,
    }
}

fn everything() -> Filter {
    Filter {
        include_unattributed: true,
        ..Filter::default()
    }
}

/// A store of `capacity` records writing to `config`, with what was on disk restored.
fn store_on(config: &PersistConfig, capacity: usize) -> (Store, Arc<PersistHealth>, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let opened = open(config, counters.clone()).unwrap();
    let mut store = Store::new(
        StoreConfig::new("n1", capacity, DEFAULT_MAX_AGE),
        counters.clone(),
    );
    store.set_backend(Box::new(opened.backend));
    for (owner, evictions) in opened.evictions {
        store.restore_evictions(&owner, evictions);
    }
    for lookups in opened.dns_lookups {
        store.restore_dns_lookups(lookups);
    }
    for losses in opened.pod_losses {
        store.restore_pod_losses(losses);
    }
    for (id, e) in opened.records {
        store.restore(id, e);
    }
    (store, opened.health, counters)
}

fn close(mut store: Store) {
    if let Some(b) = store.take_backend() {
        b.close();
    }
}

#[test]
fn records_survive_a_restart_with_their_counts_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, health, _) = store_on(&cfg, 100);
    store.record(refused().pod("shop", "web").at(10).occurrence());
    store.record(refused().pod("shop", "web").at(20).occurrence());
    store.record(dropped().pod("shop", "web").at(30).occurrence());
    store.record(oom_killed().pod("data", "db").at(40).occurrence());
    store.flush_backend();
    close(store);
    assert_eq!(health.get().commits, 1, "one batch, one transaction");

    let (mut store, health, _) = store_on(&cfg, 100);
    assert_eq!(health.get().restored, 3);
    let back = store.query(&everything(), 10).evidence;
    assert_eq!(back.len(), 3);
    let web = back
        .iter()
        .find(|e| e.kind() == crate::evidence::Kind::ConnectionRefused)
        .unwrap();
    assert_eq!(web.count, 2);
    assert_eq!(web.pod().unwrap().name, "web");
    // The same failure after the restart counts on the same record (same key, same id).
    store.record(refused().pod("shop", "web").at(50).occurrence());
    store.flush_backend();
    close(store);
    let on_disk = read_only(&cfg.path).unwrap();
    assert_eq!(on_disk.len(), 3, "no duplicate row for the restored record");
    let refused_rows: Vec<_> = on_disk
        .iter()
        .filter(|(_, e)| e.kind() == crate::evidence::Kind::ConnectionRefused)
        .collect();
    assert_eq!(refused_rows.len(), 1);
    assert_eq!(refused_rows[0].1.count, 3);
}

#[test]
fn evictions_and_expiry_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, _, _) = store_on(&cfg, 2);
    for (i, port) in [1u16, 2, 3].iter().enumerate() {
        store.record(
            refused()
                .pod_uid(&format!("ns{i}"), &format!("p{i}"), &format!("u{i}"))
                .dst(&format!("10.0.0.2:{port}"))
                .at(10 + i as u64)
                .occurrence(),
        );
    }
    store.flush_backend();
    close(store);
    let rows = read_only(&cfg.path).unwrap();
    assert_eq!(rows.len(), 2, "the evicted record left the file");
    let names: Vec<_> = rows
        .iter()
        .map(|(_, e)| e.pod().unwrap().name.clone())
        .collect();
    assert_eq!(names, ["p1", "p2"], "oldest first, the oldest gone");

    // Restart after the retention: everything expires, from memory and file.
    let (mut store, _, _) = store_on(&cfg, 2);
    store.sweep(t(10) + DEFAULT_MAX_AGE + Duration::from_secs(60));
    assert!(store.query(&everything(), 10).evidence.is_empty());
    store.flush_backend();
    close(store);
    assert!(read_only(&cfg.path).unwrap().is_empty());
}

#[test]
fn a_smaller_capacity_after_an_upgrade_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, _, _) = store_on(&cfg, 100);
    for i in 0..10u64 {
        store.record(
            refused()
                .pod_uid(&format!("ns{i}"), &format!("p{i}"), &format!("u{i}"))
                .at(100 + i)
                .occurrence(),
        );
    }
    store.flush_backend();
    close(store);
    let (store, _, counters) = store_on(&cfg, 4);
    let kept: Vec<_> = store
        .query(&everything(), 10)
        .evidence
        .iter()
        .map(|e| e.pod().unwrap().name.clone())
        .collect();
    assert_eq!(kept, ["p9", "p8", "p7", "p6"]);
    assert_eq!(counters.snapshot().get(Loss::StoreEvicted), 6);
    close(store);
    assert_eq!(read_only(&cfg.path).unwrap().len(), 4);
}

#[test]
fn a_foreign_file_is_moved_aside_and_a_fresh_store_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    std::fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
    std::fs::write(&cfg.path, b"this is not a database, just someone's notes\n").unwrap();
    let (mut store, health, _) = store_on(&cfg, 10);
    let state = health.get();
    let (aside, why) = state.moved_aside.clone().unwrap();
    assert!(why.contains("not a usable evidence store"), "{why}");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        b"this is not a database, just someone's notes\n",
        "the file is kept, untouched, beside"
    );
    store.record(refused().pod("ns", "a").occurrence());
    store.flush_backend();
    close(store);
    assert_eq!(read_only(&cfg.path).unwrap().len(), 1);
}

#[test]
fn another_programs_database_and_a_newer_schema_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    std::fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
    {
        let other = Connection::open(&cfg.path).unwrap();
        other
            .execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL);")
            .unwrap();
    }
    let (store, health, _) = store_on(&cfg, 10);
    let why = health.get().moved_aside.unwrap().1;
    assert!(why.contains("another program"), "{why}");
    close(store);

    {
        let ours = Connection::open(&cfg.path).unwrap();
        ours.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let (store, health, _) = store_on(&cfg, 10);
    let why = health.get().moved_aside.unwrap().1;
    assert!(why.contains("newer triage-agent"), "{why}");
    close(store);
}

#[test]
fn a_second_agent_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let first = open(&cfg, Arc::default()).unwrap();
    let second = open(&cfg, Arc::default());
    let Err(err) = second else {
        panic!("a second writer was allowed")
    };
    assert!(matches!(err, PersistError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another triage-agent"));
    Box::new(first.backend).close();
    // Released at close: the next agent gets it.
    let third = open(&cfg, Arc::default()).unwrap();
    Box::new(third.backend).close();
}

#[test]
fn unreadable_rows_are_removed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, _, _) = store_on(&cfg, 10);
    store.record(refused().pod("ns", "a").occurrence());
    store.flush_backend();
    close(store);
    {
        let conn = Connection::open(&cfg.path).unwrap();
        conn.execute(
            "INSERT INTO evidence (id, record) VALUES (99, x'ffffffff0102')",
            [],
        )
        .unwrap();
    }
    let (store, health, counters) = store_on(&cfg, 10);
    assert_eq!(health.get().restored, 1);
    assert_eq!(counters.snapshot().get(Loss::StoreUnreadable), 1);
    close(store);
    assert_eq!(
        read_only(&cfg.path).unwrap().len(),
        1,
        "the bad row is gone"
    );
}

#[test]
fn over_the_size_budget_the_store_evicts_until_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    cfg.max_bytes = 64 * 1024;
    let (mut store, health, counters) = store_on(&cfg, 10_000);
    for i in 0..2000u64 {
        store.record(
            refused()
                .pod_uid("ns", &format!("pod-{i}"), &format!("uid-{i}"))
                .at(1000 + i)
                .occurrence(),
        );
    }
    // The first flush writes everything and measures; the next acts on the measure.
    store.flush_backend();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health.get().commits == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(health.get().used_bytes > cfg.max_bytes);
    store.flush_backend();
    let evicted = counters.snapshot().get(Loss::StoreEvicted);
    assert!(evicted > 0, "nothing evicted");
    let left = store.stats().records;
    assert_eq!(left + evicted, 2000);
    close(store);
    let rows = read_only(&cfg.path).unwrap();
    assert_eq!(rows.len() as u64, left);
    // The newest stayed.
    assert!(
        rows.iter()
            .any(|(_, e)| e.pod().unwrap().name == "pod-1999")
    );
}

#[test]
fn a_directory_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let cfg = PersistConfig {
        path: file.join("evidence.db"),
        max_bytes: DEFAULT_MAX_BYTES,
        max_pending: DEFAULT_MAX_PENDING,
    };
    let Err(err) = open(&cfg, Arc::default()) else {
        panic!("opened under a plain file")
    };
    assert!(
        err.to_string().contains("creating the store's directory"),
        "{err}"
    );
}

#[test]
fn pending_counts_every_change_until_it_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, health, _) = store_on(&cfg, 100);
    store.record(refused().pod("shop", "web").at(10).occurrence());
    store.record(dropped().pod("shop", "web").at(20).occurrence());
    // Recorded, not handed over yet: pending already says so (Status reads it at any time).
    assert_eq!(health.get().pending, 2);
    store.flush_backend();
    // Handed to the writer: pending until the writer has committed them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = health.get();
        if s.pending == 0 {
            assert_eq!(s.commits, 1, "0 pending only after the commit: {s:?}");
            break;
        }
        assert_eq!(s.commits, 0, "{s:?}");
        assert!(Instant::now() < deadline, "never committed: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    close(store);
}

#[test]
fn the_backlog_keeps_the_newest_change_of_each_record_within_its_bound() {
    let e = || Change::Upsert(Arc::new(refused().pod("ns", "a").evidence()));
    let mut b = Backlog::new(3);
    assert_eq!(b.put(1, e()), 0);
    assert_eq!(b.put(1, e()), 0, "a later upsert replaces the pending one");
    assert_eq!(b.put(2, e()), 0);
    assert_eq!(
        b.put(1, Change::Remove),
        0,
        "a removal replaces the upserts"
    );
    assert_eq!(b.changes.len(), 2);
    assert_eq!(b.put(3, e()), 0);
    // Full: the least recently changed record (2) is given up for the new one.
    assert_eq!(b.put(4, e()), 1);
    let mut ids: Vec<_> = b.changes.keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 3, 4]);
    assert!(matches!(b.changes.get(&1), Some((_, Change::Remove))));

    // Given up while its newest state is being written: lost only if that attempt fails.
    assert_eq!(b.take_attempt().records.len(), 3);
    assert_eq!(b.put(5, e()), 0, "1 is in flight: not counted yet");
    assert_eq!(b.attempt_done(false), 1, "the attempt failed: 1 is lost");
    assert_eq!(b.changes.len(), 3);
    assert_eq!(b.take_attempt().records.len(), 3);
    assert_eq!(b.put(6, e()), 0);
    assert_eq!(b.put(4, e()), 0, "changed again while in flight");
    assert_eq!(
        b.attempt_done(true),
        0,
        "3 was written before it was given up"
    );
    // Committed records leave; 4 changed since its attempt and stays, as does the new 6.
    let mut ids: Vec<_> = b.changes.keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, [4, 6]);
    assert_eq!(b.order.len(), 2);
}

#[test]
fn losses_and_evictions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let first_start = t(1);
    let (mut store, _, counters) = store_on(&cfg, 40);
    counters.begin(first_start);
    counters.add(Loss::PipelineFull, 5);
    counters.add(Loss::DnsRingFull, 2);
    // A pod's quota is 2 of 40: its third and fourth records evict its oldest two.
    for port in 1..=4u16 {
        store.record(
            refused()
                .pod_uid("shop", "web", "uid-web")
                .dst(&format!("10.0.0.2:{port}"))
                .at(10 + u64::from(port))
                .occurrence(),
        );
    }
    store.record(
        oom_killed()
            .pod_uid("data", "db", "uid-db")
            .at(20)
            .occurrence(),
    );
    assert_eq!(counters.get(Loss::StoreEvicted), 2);
    assert_eq!(store.stats().evicted, 2);
    let web = Filter {
        pod: Some("web".into()),
        namespace: Some("shop".into()),
        ..Filter::default()
    };
    assert_eq!(store.query(&web, 10).evicted, 2);
    store.flush_backend();
    close(store);

    // The next start: the counters continue, and an answer about the pod still says what was
    // evicted before the restart.
    let (mut store, _, counters) = store_on(&cfg, 40);
    counters.begin(t(5000));
    let s = counters.snapshot();
    assert_eq!(s.get(Loss::PipelineFull), 5);
    assert_eq!(s.get(Loss::DnsRingFull), 2);
    assert_eq!(s.get(Loss::StoreEvicted), 2);
    assert_eq!(
        store.stats().evicted,
        2,
        "the store's count of evictions continues too"
    );
    assert!(s.last(Loss::PipelineFull).is_some());
    assert_eq!(
        s.since(),
        Some(first_start),
        "they count since the first start"
    );
    let answer = store.query(&web, 10);
    assert_eq!(answer.evicted, 2);
    assert_eq!(answer.evidence.len(), 2);
    let db = Filter {
        pod: Some("db".into()),
        ..Filter::default()
    };
    assert_eq!(store.query(&db, 10).evicted, 0);

    // More losses after the restart add up, and the next start sees the sum.
    counters.add(Loss::PipelineFull, 1);
    store.record(
        refused()
            .pod_uid("shop", "web", "uid-web")
            .dst("10.0.0.2:9")
            .at(30)
            .occurrence(),
    );
    store.flush_backend();
    close(store);
    let (store, _, counters) = store_on(&cfg, 40);
    assert_eq!(counters.get(Loss::PipelineFull), 6);
    assert_eq!(counters.get(Loss::StoreEvicted), 3);
    assert_eq!(store.stats().evicted, 3);
    assert_eq!(store.query(&web, 10).evicted, 3);
    close(store);
}

#[test]
fn evictions_past_the_retention_leave_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, _, _) = store_on(&cfg, 20);
    for port in 1..=2u16 {
        store.record(
            refused()
                .pod_uid("shop", "web", "uid-web")
                .dst(&format!("10.0.0.2:{port}"))
                .at(10 + u64::from(port))
                .occurrence(),
        );
    }
    store.flush_backend();
    close(store);
    let (mut store, _, _) = store_on(&cfg, 20);
    assert_eq!(store.query(&everything(), 10).evicted, 1);
    store.sweep(t(10) + DEFAULT_MAX_AGE + Duration::from_secs(60));
    store.flush_backend();
    close(store);
    let (store, _, _) = store_on(&cfg, 20);
    assert_eq!(store.query(&everything(), 10).evicted, 0);
    close(store);
}

#[test]
fn a_file_of_the_first_schema_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    std::fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
    {
        let old = Connection::open(&cfg.path).unwrap();
        old.execute_batch(SCHEMA).unwrap();
        old.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        let e = refused().pod("shop", "web").at(10).evidence();
        old.execute(
            "INSERT INTO evidence (id, record) VALUES (1, ?1)",
            [codec::evidence_to_pb(&e).encode_to_vec()],
        )
        .unwrap();
    }
    let (store, health, counters) = store_on(&cfg, 10);
    assert!(health.get().moved_aside.is_none(), "{:?}", health.get());
    assert_eq!(store.query(&everything(), 10).evidence.len(), 1);
    counters.add(Loss::DecodeErrors, 1);
    close(store);
    let version: i32 = Connection::open(&cfg.path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let (store, _, counters) = store_on(&cfg, 10);
    assert_eq!(counters.get(Loss::DecodeErrors), 1);
    close(store);
}

/// A pod's DNS lookup tally as attribution hands it to the store.
fn tally(pod: &str, at: u64, lookups: u64, succeeded: u64) -> Attributed {
    Attributed::DnsLookups(PodLookups {
        at: t(at),
        pod: pod_ref("shop", pod),
        lookups: DnsLookups {
            lookups,
            succeeded,
            failed: lookups - succeeded,
            latency_sum_us: 1000 * lookups,
            latency_max_us: 900 + at,
            ..DnsLookups::default()
        },
    })
}

fn pod(name: &str) -> Filter {
    Filter {
        namespace: Some("shop".into()),
        pod: Some(name.into()),
        ..Filter::default()
    }
}

fn lookups_of(store: &Store, name: &str) -> Option<DnsLookups> {
    let r = store.query(&pod(name), 10);
    assert!(r.dns_lookups.len() <= 1, "{:?}", r.dns_lookups);
    r.dns_lookups.first().map(|(p, l)| {
        assert_eq!(p.name, name);
        *l
    })
}

#[test]
fn dns_lookup_counters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, _, _) = store_on(&cfg, 100);
    store.add(tally("web", 10, 30, 28));
    store.add(tally("web", 20, 10, 9));
    store.add(tally("api", 15, 5, 5));
    store.flush_backend();
    close(store);

    // After the restart the pods' answers still have their counts, and new tallies add up.
    let (mut store, _, _) = store_on(&cfg, 100);
    let web = lookups_of(&store, "web").unwrap();
    assert_eq!((web.lookups, web.succeeded, web.failed), (40, 37, 3));
    assert_eq!(web.latency_sum_us, 40_000);
    assert_eq!(web.latency_max_us, 920);
    assert_eq!(lookups_of(&store, "api").unwrap().lookups, 5);
    store.add(tally("web", 30, 2, 2));
    store.flush_backend();
    close(store);
    let (store, _, _) = store_on(&cfg, 100);
    let web = lookups_of(&store, "web").unwrap();
    assert_eq!((web.lookups, web.succeeded), (42, 39));
    assert_eq!(lookups_of(&store, "api").unwrap().lookups, 5);
    close(store);
}

#[test]
fn dns_lookup_counters_forgotten_for_room_leave_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, _, counters) = store_on(&cfg, 100);
    store.add(tally("oldest", 1, 7, 7));
    for i in 1..DNS_LOOKUP_PODS {
        store.add(tally(&format!("p{i}"), 10, 1, 1));
    }
    store.flush_backend();
    // One pod more than the store keeps counters of: the least recently updated is forgotten.
    store.add(tally("newcomer", 20, 1, 1));
    assert_eq!(counters.get(Loss::DnsLookupsForgotten), 7);
    store.flush_backend();
    close(store);
    let rows: i64 = Connection::open(&cfg.path)
        .unwrap()
        .query_row("SELECT count(*) FROM dns_lookups", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, DNS_LOOKUP_PODS as i64);
    let (store, _, counters) = store_on(&cfg, 100);
    assert!(lookups_of(&store, "oldest").is_none(), "forgotten for good");
    assert_eq!(lookups_of(&store, "newcomer").unwrap().lookups, 1);
    assert_eq!(counters.get(Loss::DnsLookupsForgotten), 7);
    close(store);
}

#[test]
fn a_file_of_schema_2_is_brought_up_to_date_with_what_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    std::fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
    {
        // As the previous agent left it: records, loss counters and an owner's evictions.
        let old = Connection::open(&cfg.path).unwrap();
        old.execute_batch(&format!("{SCHEMA} {SCHEMA_2}")).unwrap();
        old.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        old.pragma_update(None, "user_version", 2).unwrap();
        let e = refused().pod("shop", "web").at(10).evidence();
        old.execute(
            "INSERT INTO evidence (id, record) VALUES (1, ?1)",
            [codec::evidence_to_pb(&e).encode_to_vec()],
        )
        .unwrap();
        old.execute(
            "INSERT INTO losses (name, count, last_ms) VALUES ('store_evicted', 4, ?1)",
            [ms_of(t(5))],
        )
        .unwrap();
        old.execute(
            "INSERT INTO owners (owner, pod, evicted, newest_ms) VALUES ('uid-web', ?1, 4, ?2)",
            params![
                pod_to_pb(&pod_ref("shop", "web")).encode_to_vec(),
                ms_of(t(5))
            ],
        )
        .unwrap();
    }
    let (mut store, health, counters) = store_on(&cfg, 10);
    assert!(health.get().moved_aside.is_none(), "{:?}", health.get());
    assert_eq!(store.query(&everything(), 10).evidence.len(), 1);
    assert_eq!(counters.get(Loss::StoreEvicted), 4);
    assert_eq!(store.stats().evicted, 4);
    assert_eq!(store.query(&pod("web"), 10).evicted, 4);
    assert!(lookups_of(&store, "web").is_none(), "none were kept before");
    store.add(tally("web", 20, 3, 2));
    store.flush_backend();
    close(store);
    let version: i32 = Connection::open(&cfg.path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let (store, health, _) = store_on(&cfg, 10);
    assert!(health.get().moved_aside.is_none());
    assert_eq!(lookups_of(&store, "web").unwrap().lookups, 3);
    assert_eq!(store.query(&everything(), 10).evidence.len(), 1);
    close(store);
}

/// What the kernel lost of a pod's evidence in one drain, as attribution hands it to the store.
fn kernel_lost(pod: &str, at: u64, connects: u64, dns_packets: u64) -> Attributed {
    Attributed::PodLosses(PodLossTally {
        at: t(at),
        pod: pod_ref("shop", pod),
        losses: PodLosses {
            connects,
            occurrences: 1,
            dns_packets,
        },
    })
}

fn pod_losses_of(store: &Store, name: &str) -> Option<(PodLosses, SystemTime)> {
    let r = store.query(&pod(name), 10);
    assert!(r.pod_losses.len() <= 1, "{:?}", r.pod_losses);
    r.pod_losses.first().map(|(p, l, at)| {
        assert_eq!(p.name, name);
        assert_eq!(p.uid, format!("uid-{name}"));
        (*l, *at)
    })
}

#[test]
fn pod_losses_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, _, _) = store_on(&cfg, 100);
    store.add(kernel_lost("noisy", 10, 2_000, 30));
    store.add(kernel_lost("noisy", 20, 48, 0));
    store.add(kernel_lost("other", 15, 1, 0));
    store.flush_backend();
    close(store);

    // After the restart the pod's answer still says what the kernel lost of it, and when.
    let (mut store, _, _) = store_on(&cfg, 100);
    let (noisy, last) = pod_losses_of(&store, "noisy").unwrap();
    assert_eq!(
        noisy,
        PodLosses {
            connects: 2_048,
            occurrences: 2,
            dns_packets: 30,
        }
    );
    assert_eq!(last, t(20));
    assert_eq!(pod_losses_of(&store, "other").unwrap().0.connects, 1);
    assert!(pod_losses_of(&store, "quiet").is_none());
    // What the kernel loses after the restart adds up, and the next start sees the sum.
    store.add(kernel_lost("noisy", 30, 2, 5));
    store.flush_backend();
    close(store);
    let (store, _, _) = store_on(&cfg, 100);
    let (noisy, last) = pod_losses_of(&store, "noisy").unwrap();
    assert_eq!(
        (noisy.connects, noisy.occurrences, noisy.dns_packets),
        (2_050, 3, 35)
    );
    assert_eq!(last, t(30));
    assert_eq!(pod_losses_of(&store, "other").unwrap().0.connects, 1);
    close(store);
}

#[test]
fn pod_losses_forgotten_for_room_leave_the_file() {
    use crate::store::pod_losses::LOSS_PODS;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (mut store, _, _) = store_on(&cfg, 100);
    store.add(kernel_lost("oldest", 1, 7, 0));
    for i in 1..LOSS_PODS {
        store.add(kernel_lost(&format!("p{i}"), 10, 1, 0));
    }
    store.flush_backend();
    // One pod more than the store keeps the losses of: the least recently grown is forgotten.
    store.add(kernel_lost("newcomer", 20, 1, 0));
    assert!(pod_losses_of(&store, "oldest").is_none());
    store.flush_backend();
    close(store);
    let rows: i64 = Connection::open(&cfg.path)
        .unwrap()
        .query_row("SELECT count(*) FROM pod_losses", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, LOSS_PODS as i64, "the bound holds in the file too");
    let (store, _, _) = store_on(&cfg, 100);
    assert!(
        pod_losses_of(&store, "oldest").is_none(),
        "forgotten for good"
    );
    assert_eq!(pod_losses_of(&store, "newcomer").unwrap().0.connects, 1);
    assert_eq!(
        store.query(&Filter::default(), 10).pod_losses.len(),
        LOSS_PODS
    );
    close(store);
}

#[test]
fn a_file_of_schema_3_is_brought_up_to_date_with_what_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    std::fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
    {
        // As the previous agent left it: records, loss counters, an owner's evictions and a
        // pod's DNS lookup counters; no table of pods' kernel losses.
        let old = Connection::open(&cfg.path).unwrap();
        old.execute_batch(&format!("{SCHEMA} {SCHEMA_2} {SCHEMA_3}"))
            .unwrap();
        old.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        old.pragma_update(None, "user_version", 3).unwrap();
        let e = refused().pod("shop", "web").at(10).evidence();
        old.execute(
            "INSERT INTO evidence (id, record) VALUES (1, ?1)",
            [codec::evidence_to_pb(&e).encode_to_vec()],
        )
        .unwrap();
        old.execute(
            "INSERT INTO losses (name, count, last_ms) VALUES ('connect_table_full', 9, ?1)",
            [ms_of(t(5))],
        )
        .unwrap();
        old.execute(
            "INSERT INTO owners (owner, pod, evicted, newest_ms) VALUES ('uid-web', ?1, 4, ?2)",
            params![
                pod_to_pb(&pod_ref("shop", "web")).encode_to_vec(),
                ms_of(t(5))
            ],
        )
        .unwrap();
        let lookups = DnsLookups {
            lookups: 40,
            succeeded: 37,
            failed: 3,
            ..DnsLookups::default()
        };
        old.execute(
            "INSERT INTO dns_lookups (pod, lookups, at_ms) VALUES ('uid-web', ?1, ?2)",
            params![
                codec::dns_lookups_to_pb(&pod_ref("shop", "web"), &lookups).encode_to_vec(),
                ms_of(t(6))
            ],
        )
        .unwrap();
    }
    let (mut store, health, counters) = store_on(&cfg, 10);
    assert!(health.get().moved_aside.is_none(), "{:?}", health.get());
    assert_eq!(store.query(&everything(), 10).evidence.len(), 1);
    assert_eq!(counters.get(Loss::ConnectTableFull), 9);
    assert_eq!(store.query(&pod("web"), 10).evicted, 4);
    let web = lookups_of(&store, "web").unwrap();
    assert_eq!((web.lookups, web.succeeded), (40, 37));
    assert!(
        pod_losses_of(&store, "web").is_none(),
        "none were kept before"
    );
    let version: i32 = Connection::open(&cfg.path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION, "brought up to date at the start");
    store.add(kernel_lost("web", 20, 3, 2));
    store.flush_backend();
    close(store);
    let (store, health, counters) = store_on(&cfg, 10);
    assert!(health.get().moved_aside.is_none());
    let (web_lost, _) = pod_losses_of(&store, "web").unwrap();
    assert_eq!((web_lost.connects, web_lost.dns_packets), (3, 2));
    assert_eq!(lookups_of(&store, "web").unwrap().lookups, 40);
    assert_eq!(counters.get(Loss::ConnectTableFull), 9);
    assert_eq!(store.query(&everything(), 10).evidence.len(), 1);
    close(store);
}
