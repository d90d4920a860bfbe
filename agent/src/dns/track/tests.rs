use std::sync::Arc;

use super::*;
use crate::dns::packet::{Captured, Side, message, parse};

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
