use std::sync::Arc;

use super::*;
use crate::dns::packet::{Captured, Side, message, parse};
use crate::probes::dns_repeats::{RepeatChange, RepeatKey, Repeated};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn client() -> SocketAddr {
    "10.0.0.1:40000".parse().unwrap()
}
fn server() -> SocketAddr {
    "10.96.0.10:53".parse().unwrap()
}

struct Sim {
    t: Tracker,
    counters: Arc<Counters>,
}

impl Sim {
    fn new(config: TrackConfig) -> Sim {
        let counters = Arc::new(Counters::default());
        Sim {
            t: Tracker::new(config, counters.clone()),
            counters,
        }
    }

    fn send(
        &mut self,
        at: u64,
        side: Side,
        cgroup: u64,
        src: SocketAddr,
        dst: SocketAddr,
        msg: &[u8],
    ) -> Vec<Finding> {
        let c = Captured {
            boot_ns: at,
            cgroup_id: cgroup,
            side,
            protocol: Protocol::Udp,
            src,
            dst,
            wire_len: msg.len() as u32,
            payload: msg,
            server: None,
        };
        let m = parse(c.protocol, c.payload).unwrap();
        self.t.packet(&c, m, |p| p == 53)
    }

    fn ask(&mut self, at: u64, id: u16, name: &str, qtype: u16) -> Vec<Finding> {
        self.send(
            at,
            Side::Egress,
            7,
            client(),
            server(),
            &message(id, false, 0, false, name, qtype),
        )
    }

    /// `n` lookups of `name` (A), 10 us apart, each answered NXDOMAIN 5 us later.
    fn nxdomains(&mut self, n: u64, name: &str) {
        for i in 0..n {
            self.ask(i * 10_000, i as u16, name, 1);
            self.answer(i * 10_000 + 5_000, i as u16, name, 1, 3);
        }
    }

    fn answer(&mut self, at: u64, id: u16, name: &str, qtype: u16, rcode: u8) -> Vec<Finding> {
        self.send(
            at,
            Side::Ingress,
            7,
            server(),
            client(),
            &message(id, true, rcode, false, name, qtype),
        )
    }
}

#[test]
fn success_is_counted_not_reported() {
    let mut s = Sim::new(TrackConfig::default());
    assert!(s.ask(0, 1, "db.shop.svc.cluster.local", 1).is_empty());
    assert!(
        s.answer(3 * MS, 1, "db.shop.svc.cluster.local", 1, 0)
            .is_empty()
    );
    assert!(s.t.tick(10 * S).is_empty());
    let tallies = s.t.take_tallies();
    assert_eq!(tallies.len(), 1);
    assert_eq!(tallies[0].lookups.lookups, 1);
    assert_eq!(tallies[0].lookups.succeeded, 1);
    assert_eq!(tallies[0].lookups.latency_max_us, 3000);
    assert_eq!(s.t.in_flight(), 0);
}

#[test]
fn servfail_and_refused_are_findings_at_once() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "example.org", 1);
    let f = s.answer(MS, 1, "example.org", 1, 2);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::Servfail);
    assert_eq!(f[0].rcode, Some(2));
    s.ask(0, 2, "example.org", 1);
    assert_eq!(
        s.answer(MS, 2, "example.org", 1, 5)[0].outcome,
        DnsOutcome::Refused
    );
    s.ask(0, 3, "example.org", 1);
    assert_eq!(
        s.answer(MS, 3, "example.org", 1, 4)[0].outcome,
        DnsOutcome::Error
    );
}

#[test]
fn an_answer_must_match_id_name_and_type() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "a.example", 1);
    assert!(s.answer(MS, 2, "a.example", 1, 2).is_empty());
    assert!(s.answer(MS, 1, "b.example", 1, 2).is_empty());
    assert!(s.answer(MS, 1, "a.example", 28, 2).is_empty());
    assert_eq!(s.t.in_flight(), 1);
    assert_eq!(s.answer(MS, 1, "a.example", 1, 2).len(), 1);
}

#[test]
fn unanswered_times_out_once_and_resends_extend_the_deadline() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "db.data.svc.cluster.local", 1);
    assert!(s.t.tick(4 * S).is_empty());
    // The resolver's retry of the same query.
    s.ask(5 * S - MS, 1, "db.data.svc.cluster.local", 1);
    assert!(s.t.tick(6 * S).is_empty());
    let f = s.t.tick(10 * S);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::Timeout);
    assert_eq!(f[0].reached_server, Some(false));
    assert_eq!(f[0].latency, Some(Duration::from_secs(10)));
    assert!(s.t.tick(20 * S).is_empty());
    let t = s.t.take_tallies();
    assert_eq!((t[0].lookups.lookups, t[0].lookups.timeouts), (1, 1));
}

#[test]
fn a_timeout_says_whether_the_server_on_this_node_got_the_query() {
    let mut s = Sim::new(TrackConfig::default());
    let dns_pod: SocketAddr = "10.0.0.53:53".parse().unwrap();
    let q = message(9, false, 0, false, "slow.example", 1);
    s.ask(0, 9, "slow.example", 1);
    // After DNAT the server's socket sees the client's address and its own.
    s.send(MS, Side::Ingress, 99, client(), dns_pod, &q);
    let f = s.t.tick(6 * S);
    assert_eq!(f[0].reached_server, Some(true));
    assert_eq!(f[0].server_cgroup, Some(99));
    assert!(!f[0].server_answered);
}

#[test]
fn a_query_held_in_the_kernel_brings_what_the_server_did() {
    let mut s = Sim::new(TrackConfig::default());
    let q = message(4, false, 0, false, "held.example", 1);
    let held = |answered| Captured {
        boot_ns: 0,
        cgroup_id: 7,
        side: Side::Egress,
        protocol: Protocol::Udp,
        src: client(),
        dst: server(),
        wire_len: q.len() as u32,
        payload: &q,
        server: Some(crate::dns::packet::ServerSide {
            cgroup: Some(99),
            answered,
        }),
    };
    // Handed over by the kernel half a second after it was sent, with its original time.
    let c = held(true);
    s.t.packet(&c, parse(c.protocol, c.payload).unwrap(), |p| p == 53);
    let f = s.t.tick(6 * S);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].reached_server, Some(true));
    assert!(f[0].server_answered);
    assert_eq!(f[0].server_cgroup, Some(99));
    assert_eq!(f[0].latency, Some(Duration::from_secs(6)));
}

#[test]
fn lookups_the_kernel_counted_join_the_pods_counters() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "a.example", 1);
    s.answer(2 * MS, 1, "a.example", 1, 0);
    s.t.answered_in_kernel(
        7,
        client().ip(),
        40,
        Duration::from_millis(80),
        Duration::from_millis(9),
    );
    let t = s.t.take_tallies();
    assert_eq!(t.len(), 1);
    let l = t[0].lookups;
    assert_eq!((l.lookups, l.succeeded, l.failed), (41, 41, 0));
    assert_eq!(l.latency_sum_us, 82_000);
    assert_eq!(l.latency_max_us, 9_000);
}

#[test]
fn slow_answers_are_findings_and_counted_as_successes() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "a.example", 1);
    let f = s.answer(1500 * MS, 1, "a.example", 1, 0);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::Slow);
    assert_eq!(f[0].latency, Some(Duration::from_millis(1500)));
    let t = s.t.take_tallies();
    assert_eq!((t[0].lookups.succeeded, t[0].lookups.slow), (1, 1));
}

#[test]
fn search_path_walk_is_one_finding() {
    let mut s = Sim::new(TrackConfig::default());
    let names = [
        "api.example.com.shop.svc.cluster.local",
        "api.example.com.svc.cluster.local",
        "api.example.com.cluster.local",
    ];
    let mut at = 0;
    for (i, name) in names.iter().enumerate() {
        for qtype in [1, 28] {
            let id = (i * 2) as u16 + if qtype == 1 { 0 } else { 1 };
            s.ask(at, id, name, qtype);
            assert!(s.answer(at + MS, id, name, qtype, 3).is_empty());
        }
        at += 2 * MS;
    }
    s.ask(at, 100, "api.example.com", 1);
    let f = s.answer(at + MS, 100, "api.example.com", 1, 0);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].outcome, DnsOutcome::SearchExpansion);
    assert_eq!(&*f[0].query, "api.example.com");
    assert_eq!(f[0].search_nxdomains, 6);
    assert_eq!(f[0].latency, Some(Duration::from_millis(7)));
    assert!(s.t.tick(10 * S).is_empty());
}

#[test]
fn a_name_that_does_not_exist_is_one_nxdomain_for_the_name_asked() {
    let mut s = Sim::new(TrackConfig::default());
    let names = [
        "nosuch.shop.svc.cluster.local",
        "nosuch.svc.cluster.local",
        "nosuch.cluster.local",
        "nosuch",
    ];
    for (i, name) in names.iter().enumerate() {
        s.ask(i as u64 * MS, i as u16, name, 1);
        s.answer(i as u64 * MS + 1, i as u16, name, 1, 3);
    }
    assert!(
        s.t.tick(10 * MS).is_empty(),
        "held while the sequence may go on"
    );
    let f = s.t.tick(2 * S);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].outcome, DnsOutcome::Nxdomain);
    assert_eq!(&*f[0].query, "nosuch");
    assert_eq!(
        f[0].search_nxdomains, 3,
        "the expansions tried besides the name"
    );
}

#[test]
fn a_short_name_is_reported_as_asked_when_only_its_expansions_were_sent() {
    // glibc does not send a single-label name as it is: only its expansions.
    let mut s = Sim::new(TrackConfig::default());
    let names = [
        "nosuch.shop.svc.cluster.local",
        "nosuch.svc.cluster.local",
        "nosuch.cluster.local",
    ];
    for (i, name) in names.iter().enumerate() {
        s.ask(i as u64 * MS, i as u16, name, 1);
        s.answer(i as u64 * MS + 1, i as u16, name, 1, 3);
    }
    let f = s.t.tick(2 * S);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(&*f[0].query, "nosuch");
    assert_eq!(f[0].search_nxdomains, 2);
}

#[test]
fn two_walks_that_settle_together_are_two_lookups() {
    let mut s = Sim::new(TrackConfig::default());
    let names = [
        "nosuch.shop.svc.cluster.local",
        "nosuch.cluster.local",
        "nosuch",
    ];
    let mut id = 0;
    for walk in 0..2u64 {
        for name in names {
            for qtype in [1, 28] {
                id += 1;
                s.ask(walk * 10 * MS, id, name, qtype);
                s.answer(walk * 10 * MS + 1, id, name, qtype, 3);
            }
        }
    }
    let f = s.t.tick(2 * S);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].count, f[0].search_nxdomains), (2, 4), "{f:?}");
}

#[test]
fn unrelated_nxdomains_stay_apart() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "one.example", 1);
    s.answer(1, 1, "one.example", 1, 3);
    s.ask(0, 2, "two.example", 1);
    s.answer(1, 2, "two.example", 1, 3);
    // An unrelated success does not fold them.
    s.ask(2, 3, "other.example", 1);
    assert!(s.answer(3, 3, "other.example", 1, 0).is_empty());
    let f = s.t.tick(2 * S);
    assert_eq!(f.len(), 2);
    assert!(f.iter().all(|f| f.search_nxdomains == 0));
}

#[test]
fn cross_namespace_short_name_folds_into_its_answer() {
    assert!(expansion_of(
        "db.data.shop.svc.cluster.local",
        "db.data.svc.cluster.local"
    ));
    assert!(expansion_of("db.data.shop.svc.cluster.local", "db.data"));
    assert!(!expansion_of("db.data", "db.data"));
    assert!(!expansion_of(
        "db.shop.svc.cluster.local",
        "web.shop.svc.cluster.local"
    ));
    assert!(!expansion_of("a.b.c", "x.b.c"));
}

#[test]
fn the_table_is_bounded_per_pod_and_evictions_are_counted() {
    let mut s = Sim::new(TrackConfig {
        per_pod: 10,
        total: 15,
        ..TrackConfig::default()
    });
    for id in 0..100u16 {
        s.ask(u64::from(id), id, "flood.example", 1);
    }
    assert_eq!(s.t.in_flight(), 10);
    assert_eq!(s.counters.get(Loss::DnsInflightEvicted), 90);
    // Another pod still gets room; the total bound evicts from the biggest.
    for id in 0..10u16 {
        let c: SocketAddr = format!("10.0.0.2:{}", 1000 + id).parse().unwrap();
        s.send(
            0,
            Side::Egress,
            8,
            c,
            server(),
            &message(id, false, 0, false, "x", 1),
        );
    }
    assert_eq!(s.t.in_flight(), 15);
    assert_eq!(s.counters.get(Loss::DnsInflightEvicted), 95);
    // The rest times out: every query is accounted for.
    let timeouts = s.t.tick(10 * S).len();
    assert_eq!(timeouts, 15);
    assert_eq!(s.t.in_flight(), 0);
}

#[test]
fn answered_lookups_do_not_count_against_the_bound_of_one_still_in_flight() {
    // One lookup never answered, then 1,100 answered ones (more than the per-pod bound of
    // 1,024) within the timeout: the bound counts what is in flight, so the unanswered one
    // stays and becomes its timeout.
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 0, "lost.example", 1);
    for i in 1..=1_100u64 {
        let id = u16::try_from(i).unwrap();
        s.ask(i * 4 * MS, id, "ok.example", 1);
        assert!(s.answer(i * 4 * MS + MS, id, "ok.example", 1, 0).is_empty());
    }
    assert_eq!(s.t.in_flight(), 1);
    assert_eq!(s.counters.get(Loss::DnsInflightEvicted), 0);
    // The answered keys behind the unanswered one are compacted away, not kept until it ends.
    // Live: 1; the bound is twice that plus 64, and the newest key.
    assert!(s.t.order.get(&7).map_or(0, VecDeque::len) <= 2 + 64 + 1);
    let f = s.t.tick(6 * S);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::Timeout);
    assert_eq!(&*f[0].query, "lost.example");
}

/// The key the kernel would count a failure of this lookup under (as sent by [`Sim::ask`]).
fn repeat_key(id: u16, name: &str, qtype: u16, rcode: u8) -> RepeatKey {
    let query = message(id, false, 0, false, name, qtype);
    RepeatKey {
        cgroup: 7,
        question: dns_question_hash(
            &query,
            &[10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            53,
            AF_INET,
        ),
        rcode,
    }
}

#[test]
fn the_question_hash_leaves_out_the_id_and_only_the_id() {
    assert_eq!(
        repeat_key(1, "a.example", 1, 2),
        repeat_key(2, "a.example", 1, 2)
    );
    assert_ne!(
        repeat_key(1, "a.example", 1, 2).question,
        repeat_key(1, "a.example", 28, 2).question
    );
    assert_ne!(
        repeat_key(1, "a.example", 1, 2).question,
        repeat_key(1, "b.example", 1, 2).question
    );
}

#[test]
fn names_differing_only_in_high_bytes_of_the_hashed_words_do_not_collide() {
    // Bytes at offsets 7 mod 8 of the payload: a plain xor-and-multiply step keeps their
    // differences in the hash's top bits only.
    let mut seen = std::collections::HashSet::new();
    for a in b'a'..=b'z' {
        for b in b'0'..=b'9' {
            let name = format!("sv{}-a-0000{}0x-0.example.com", a as char, b as char);
            assert!(seen.insert(repeat_key(1, &name, 1, 3).question), "{name}");
        }
    }
}

#[test]
fn a_reported_servfail_is_counted_in_the_kernel_and_its_repeats_are_evidence() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "example.org", 1);
    assert_eq!(s.answer(MS, 1, "example.org", 1, 2).len(), 1);
    let key = repeat_key(1, "example.org", 1, 2);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Count(key)]);
    // Asked and failed again: no second change.
    s.ask(2 * MS, 2, "example.org", 1);
    s.answer(3 * MS, 2, "example.org", 1, 2);
    assert!(s.t.take_repeat_changes().is_empty());
    s.t.take_tallies();
    let f = s.t.repeated_in_kernel(Repeated {
        key,
        count: 500,
        latency_sum: Duration::from_millis(1000),
        latency_max: Duration::from_millis(9),
        first_ns: S,
        last_ns: 2 * S,
    });
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::Servfail);
    assert_eq!(f[0].count, 500);
    assert_eq!(&*f[0].query, "example.org");
    assert_eq!(f[0].latency, Some(Duration::from_millis(2)));
    assert_eq!(f[0].server, server());
    let tallies = s.t.take_tallies();
    assert_eq!(tallies[0].lookups.lookups, 500);
    assert_eq!(tallies[0].lookups.failed, 500);
    assert_eq!(tallies[0].lookups.latency_max_us, 9000);
    // A key the tracker does not know is counted as lost, never guessed.
    let unknown = repeat_key(1, "other.org", 1, 2);
    assert!(
        s.t.repeated_in_kernel(Repeated {
            key: unknown,
            count: 3,
            latency_sum: Duration::ZERO,
            latency_max: Duration::ZERO,
            first_ns: S,
            last_ns: S
        })
        .is_empty()
    );
    assert_eq!(s.counters.get(Loss::DnsRepeatsLost), 3);
}

#[test]
fn a_flood_of_one_missing_name_is_counted_in_the_kernel_and_stays_one_finding() {
    let mut s = Sim::new(TrackConfig::default());
    let name = "missing.bench.svc.cluster.local";
    for i in 0..NX_REPEATS_TO_COUNT {
        let id = i as u16;
        s.ask(i * 10_000, id, name, 1);
        assert!(s.answer(i * 10_000 + 5_000, id, name, 1, 3).is_empty());
        let changes = s.t.take_repeat_changes();
        if i + 1 < NX_REPEATS_TO_COUNT {
            assert!(
                changes.is_empty(),
                "counted in the kernel after {i} NXDOMAINs"
            );
        } else {
            assert_eq!(
                changes,
                vec![RepeatChange::Count(repeat_key(0, name, 1, 3))]
            );
        }
    }
    // The kernel's repeats join the same held lookup.
    let key = repeat_key(0, name, 1, 3);
    assert!(
        s.t.repeated_in_kernel(Repeated {
            key,
            count: 10_000,
            latency_sum: Duration::from_millis(50),
            latency_max: Duration::from_millis(1),
            first_ns: MS,
            last_ns: 900 * MS
        })
        .is_empty()
    );
    // Still answered NXDOMAIN while held: one finding, every lookup counted.
    let f = s.t.tick(2 * S);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::Nxdomain);
    assert_eq!(f[0].count, NX_REPEATS_TO_COUNT + 10_000);
    assert_eq!(f[0].search_nxdomains, 0);
    let tallies = s.t.take_tallies();
    assert_eq!(tallies[0].lookups.failed, NX_REPEATS_TO_COUNT + 10_000);
}

#[test]
fn a_search_expansion_folded_by_its_answer_stops_being_counted_in_the_kernel() {
    let mut s = Sim::new(TrackConfig::default());
    let expansion = "db.shop.svc.cluster.local";
    s.nxdomains(NX_REPEATS_TO_COUNT, expansion);
    let key = repeat_key(0, expansion, 1, 3);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Count(key)]);
    // Then the name it expands is answered: the NXDOMAINs were a walk's expansions.
    s.ask(MS, 999, "db.shop", 1);
    let f = s.answer(2 * MS, 999, "db.shop", 1, 0);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::SearchExpansion);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Stop(key)]);
    // Repeats counted before the stop still arrive and are still known; then it is forgotten.
    s.t.age_repeats();
    assert!(
        s.t.repeated_in_kernel(Repeated {
            key,
            count: 2,
            latency_sum: Duration::ZERO,
            latency_max: Duration::ZERO,
            first_ns: S,
            last_ns: S
        })
        .is_empty()
    );
    assert_eq!(s.counters.get(Loss::DnsRepeatsLost), 0);
    for _ in 0..4 {
        s.t.age_repeats();
    }
    assert!(
        s.t.repeated_in_kernel(Repeated {
            key,
            count: 1,
            latency_sum: Duration::ZERO,
            latency_max: Duration::ZERO,
            first_ns: S,
            last_ns: S
        })
        .is_empty()
    );
    assert_eq!(s.counters.get(Loss::DnsRepeatsLost), 1);
}

#[test]
fn failures_without_repeats_stop_being_counted_in_the_kernel() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "example.org", 1);
    s.answer(MS, 1, "example.org", 1, 5);
    let key = repeat_key(1, "example.org", 1, 5);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Count(key)]);
    for _ in 0..=repeats::REPEAT_IDLE_DRAINS {
        s.t.age_repeats();
    }
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Stop(key)]);
    // Failing again: counted in the kernel again.
    s.ask(2 * MS, 2, "example.org", 1);
    s.answer(3 * MS, 2, "example.org", 1, 5);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Count(key)]);
}

#[test]
fn repeats_counted_before_a_fold_stopped_them_do_not_restart_kernel_counting() {
    let mut s = Sim::new(TrackConfig::default());
    let expansion = "db.shop.svc.cluster.local";
    s.nxdomains(NX_REPEATS_TO_COUNT, expansion);
    let key = repeat_key(0, expansion, 1, 3);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Count(key)]);
    s.ask(MS, 999, "db.shop", 1);
    s.answer(2 * MS, 999, "db.shop", 1, 0);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Stop(key)]);
    // The kernel's last drain for it: many, but it stays stopped.
    let r = Repeated {
        key,
        count: 5 * NX_REPEATS_TO_COUNT,
        latency_sum: Duration::ZERO,
        latency_max: Duration::ZERO,
        first_ns: 3 * MS,
        last_ns: 500 * MS,
    };
    assert!(s.t.repeated_in_kernel(r).is_empty());
    assert!(s.t.take_repeat_changes().is_empty());
    // The next answer of the walk folds them.
    s.ask(600 * MS, 1000, "db.shop", 1);
    let f = s.answer(601 * MS, 1000, "db.shop", 1, 0);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::SearchExpansion);
    assert_eq!(u64::from(f[0].search_nxdomains), 5 * NX_REPEATS_TO_COUNT);
}

#[test]
fn an_answered_name_stops_kernel_counting_of_its_expansions_even_when_none_is_held() {
    let mut s = Sim::new(TrackConfig::default());
    let expansion = "db.shop.svc.cluster.local";
    s.nxdomains(NX_REPEATS_TO_COUNT, expansion);
    let key = repeat_key(0, expansion, 1, 3);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Count(key)]);
    // Settled as NXDOMAIN (nothing answered within the hold)...
    assert_eq!(s.t.tick(3 * S)[0].outcome, DnsOutcome::Nxdomain);
    // ...then the name it expands starts to exist: its expansions must come up again.
    s.ask(4 * S, 999, "db.shop", 1);
    s.answer(4 * S + MS, 999, "db.shop", 1, 0);
    assert_eq!(s.t.take_repeat_changes(), vec![RepeatChange::Stop(key)]);
    // An unrelated answered name stops nothing.
    let mut s = Sim::new(TrackConfig::default());
    s.nxdomains(NX_REPEATS_TO_COUNT, expansion);
    s.t.take_repeat_changes();
    s.ask(4 * S, 999, "api.example.org", 1);
    s.answer(4 * S + MS, 999, "api.example.org", 1, 0);
    assert!(s.t.take_repeat_changes().is_empty());
}

#[test]
fn a_slow_walk_is_not_settled_while_its_last_expansion_is_recent() {
    let mut s = Sim::new(TrackConfig::default());
    s.ask(0, 1, "db.shop.svc.cluster.local", 1);
    s.answer(100 * MS, 1, "db.shop.svc.cluster.local", 1, 3);
    s.ask(200 * MS, 2, "db.svc.cluster.local", 1);
    s.answer(700 * MS, 2, "db.svc.cluster.local", 1, 3);
    // The final query leaves at 0.7 s and waits in the kernel, unseen here: 1.0 s is too
    // early to call the walk NXDOMAIN.
    assert!(s.t.tick(S).is_empty());
    s.ask(700 * MS, 3, "db.cluster.local", 1);
    let f = s.answer(1200 * MS, 3, "db.cluster.local", 1, 0);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, DnsOutcome::SearchExpansion);
    assert_eq!(f[0].search_nxdomains, 2);
}

#[test]
fn a_flood_of_distinct_missing_names_holds_a_bounded_number() {
    let mut s = Sim::new(TrackConfig::default());
    let mut settled = 0;
    for i in 0..(HELD_NAMES_MAX as u64 + 44) {
        let name = format!("n{i}.example.org");
        s.ask(i * MS, i as u16, &name, 1);
        settled += s.answer(i * MS + 1, i as u16, &name, 1, 3).len();
    }
    assert_eq!(settled, 44);
    let rest = s.t.tick(100 * S);
    assert_eq!(rest.len(), HELD_NAMES_MAX);
    assert!(
        rest.iter()
            .all(|f| f.outcome == DnsOutcome::Nxdomain && f.count == 1)
    );
}
