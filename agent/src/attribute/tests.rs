//! Attribution unit tests: fixtures of pods, cgroup paths and events.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{
    pods::tests::{info, t},
    *,
};
use crate::{
    event::{Flow, TaskInfo},
    evidence::{Cause, Connection, Detail, Direction},
};

/// Both clocks `secs` after a fixed base, as the agent would read them.
fn now(secs: u64) -> Now {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    Now {
        wall: t(secs),
        mono: *BASE.get_or_init(Instant::now) + Duration::from_secs(secs),
    }
}

fn conn(o: &Occurrence) -> &Connection {
    o.detail.connection().unwrap()
}

const UID_A: &str = "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
const UID_B: &str = "1f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";

struct MapPaths(HashMap<u64, String>);
impl CgroupPaths for MapPaths {
    fn path(&mut self, id: u64) -> PathLookup {
        match id {
            // A walk still under way.
            555 => PathLookup::Pending,
            _ => self
                .0
                .get(&id)
                .cloned()
                .map_or(PathLookup::Missing, PathLookup::Found),
        }
    }
}

fn attributor() -> (Attributor, Arc<Counters>) {
    attributor_with(None)
}

fn attributor_with(
    symbols: Option<Arc<crate::kernel::kallsyms::Symbols>>,
) -> (Attributor, Arc<Counters>) {
    let cid = "c0ffee".repeat(2);
    let paths = MapPaths(HashMap::from([
        (
            100,
            format!("/sys/fs/cgroup/kubepods/burstable/pod{UID_A}/{cid}"),
        ),
        (
            200,
            "/sys/fs/cgroup/system.slice/kubelet.service".to_owned(),
        ),
        (300, format!("/sys/fs/cgroup/kubepods/pod{UID_B}/{cid}")),
    ]));
    let counters = Arc::new(Counters::default());
    let a = Attributor::new(
        Box::new(paths),
        KernelNames {
            reset: HashMap::from([(1, "NO_SOCKET".to_owned())]),
            drop: HashMap::from([(12, "NETFILTER_DROP".to_owned())]),
            sees_stack_refusals: true,
            symbols,
        },
        counters.clone(),
    );
    (a, counters)
}

fn flow(kind: FlowKind) -> Flow {
    Flow {
        kind,
        count: 1,
        first_ns: 0,
        last_ns: 0,
        src: "10.0.0.1:40000".parse().unwrap(),
        dst: "10.0.0.2:8080".parse().unwrap(),
        protocol: 6,
        tcp_flags: 0,
        reason: None,
        icmp_errno: None,
        cgroup_id: None,
        task: None,
        ingress_netns: None,
        ingress_cgroups: Vec::new(),
        syn_retransmits: 0,
        location: None,
    }
}

fn timed(f: Flow, at: u64) -> TimedEvent {
    TimedEvent {
        at: t(at),
        first_at: t(at),
        event: RawEvent::Flow(f),
    }
}

fn connect_refused(cgroup_id: u64, at: u64) -> TimedEvent {
    let mut f = flow(FlowKind::ConnectRefused);
    f.cgroup_id = Some(cgroup_id);
    f.task = Some(TaskInfo {
        pid: 8,
        tgid: 7,
        comm: "curl".into(),
    });
    timed(f, at)
}

fn syn_refused(at: u64) -> TimedEvent {
    let mut f = flow(FlowKind::SynRefused);
    f.reason = Some(1);
    timed(f, at)
}

fn drop_of(src: &str, dst: &str, cgroup: Option<u64>, at: u64) -> TimedEvent {
    let mut f = flow(FlowKind::PacketDrop);
    f.src = src.parse().unwrap();
    f.dst = dst.parse().unwrap();
    f.reason = Some(12);
    f.tcp_flags = 0x02;
    f.cgroup_id = cgroup;
    f.count = 500;
    timed(f, at)
}

fn synced_with_pods(a: &mut Attributor) {
    a.update(MetaUpdate::RelistStarted, now(0));
    a.update(
        MetaUpdate::Apply(info("client", UID_A, "10.0.0.1", 0)),
        now(0),
    );
    a.update(
        MetaUpdate::Apply(info("server", UID_B, "10.0.0.2", 0)),
        now(0),
    );
    a.update(MetaUpdate::RelistDone, now(0));
}

#[test]
fn connector_side_by_cgroup_with_container_and_peer() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let occ = one(a.event(connect_refused(100, 5), now(5)));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "client");
    assert_eq!(occ.subject.container.as_deref(), Some("app"));
    assert_eq!(occ.subject.attribution, Attribution::Cgroup);
    assert_eq!(conn(&occ).direction, Direction::Outbound);
    assert_eq!(conn(&occ).peer.as_ref().unwrap().name, "server");
    assert_eq!(
        occ.subject.process.clone().unwrap(),
        Process {
            pid: 7,
            comm: "curl".into()
        }
    );
}

#[test]
fn records_of_one_process_name_share_one_copy_of_it() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let first = one(a.event(connect_refused(100, 5), now(5)));
    let second = one(a.event(connect_refused(100, 6), now(6)));
    let comm = |o: &Occurrence| o.subject.process.clone().unwrap().comm;
    assert_eq!(&*comm(&first), "curl");
    assert!(Arc::ptr_eq(&comm(&first), &comm(&second)));
}

#[test]
fn refuser_side_by_ip_with_reason_name() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let occ = one(a.event(syn_refused(5), now(5)));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "server");
    assert_eq!(occ.subject.attribution, Attribution::Ip);
    assert_eq!(conn(&occ).direction, Direction::Inbound);
    assert_eq!(conn(&occ).peer.as_ref().unwrap().name, "client");
    assert_eq!(conn(&occ).reason.as_deref(), Some("NO_SOCKET"));
}

#[test]
fn host_process_is_node_level_at_once() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let occ = one(a.event(connect_refused(200, 5), now(5)));
    assert_eq!(occ.subject.pod, None);
    assert_eq!(occ.subject.attribution, Attribution::None);
}

#[test]
fn gone_cgroup_falls_back_to_ip() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let occ = one(a.event(connect_refused(999, 5), now(5)));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "client");
    assert_eq!(occ.subject.attribution, Attribution::Ip);
}

#[test]
fn events_wait_for_metadata_and_are_attributed_when_it_arrives() {
    let (mut a, counters) = attributor();
    // API server down: nothing known yet.
    assert!(a.event(connect_refused(100, 5), now(5)).is_empty());
    assert!(a.event(syn_refused(6), now(6)).is_empty());
    assert_eq!(a.pending_len(), 2);
    // Not synced: the long deadline applies, a tick after the short grace keeps them.
    assert!(
        a.tick(later(now(6), PENDING_GRACE + Duration::from_secs(1)))
            .is_empty()
    );
    a.update(MetaUpdate::RelistStarted, now(50));
    let mut out = a.update(
        MetaUpdate::Apply(info("client", UID_A, "10.0.0.1", 0)),
        now(50),
    );
    out.extend(a.update(
        MetaUpdate::Apply(info("server", UID_B, "10.0.0.2", 0)),
        now(50),
    ));
    assert!(
        out.is_empty(),
        "waiting events are retried once, at the end of the list"
    );
    out.extend(a.update(MetaUpdate::RelistDone, now(50)));
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|o| o.subject.pod.is_some()));
    assert_eq!(a.pending_len(), 0);
    assert_eq!(counters.get(Loss::AttributionExpired), 0);
}

#[test]
fn unknown_ip_expires_unattributed_and_is_counted() {
    let (mut a, counters) = attributor();
    synced_with_pods(&mut a);
    let mut ev = syn_refused(5);
    let RawEvent::Flow(c) = &mut ev.event else {
        unreachable!("a flow")
    };
    c.dst = "192.168.1.1:22".parse().unwrap();
    assert!(a.event(ev, now(5)).is_empty());
    assert!(a.tick(now(6)).is_empty(), "still within grace");
    let out = a.tick(later(now(5), PENDING_GRACE));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].subject.attribution, Attribution::None);
    assert_eq!(counters.get(Loss::AttributionExpired), 1);
}

#[test]
fn full_queue_stores_the_oldest_unattributed() {
    let (mut a, counters) = attributor();
    for i in 0..PENDING_CAPACITY {
        assert!(a.event(syn_refused(i as u64), now(0)).is_empty());
    }
    let evicted = one(a.event(syn_refused(1), now(0)));
    assert_eq!(evicted.subject.attribution, Attribution::None);
    assert_eq!(a.pending_len(), PENDING_CAPACITY);
    assert_eq!(counters.get(Loss::AttributionExpired), 1);
}

#[test]
fn an_event_pushed_out_of_a_full_queue_that_finds_its_pod_is_not_counted_as_expired() {
    // Not synced: events about unknown pods wait.
    let (mut a, counters) = attributor();
    for i in 0..PENDING_CAPACITY {
        assert!(a.event(syn_refused(i as u64), now(0)).is_empty());
    }
    // The pods arrive in a list (waiting events are retried at its end, not before).
    a.update(MetaUpdate::RelistStarted, now(1));
    a.update(
        MetaUpdate::Apply(info("client", UID_A, "10.0.0.1", 0)),
        now(1),
    );
    a.update(
        MetaUpdate::Apply(info("server", UID_B, "10.0.0.2", 0)),
        now(1),
    );
    // A new event about an unknown address waits and pushes the oldest out: its last
    // attempt finds its pod.
    let mut unknown = syn_refused(1);
    let RawEvent::Flow(c) = &mut unknown.event else {
        unreachable!("a flow")
    };
    c.dst = "192.168.1.1:22".parse().unwrap();
    let pushed_out = one(a.event(unknown, now(1)));
    assert!(pushed_out.subject.pod.is_some(), "{pushed_out:?}");
    assert_eq!(counters.get(Loss::AttributionExpired), 0);
}

#[test]
fn relist_after_outage_deletes_vanished_pods() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    a.set_synced(false, t(0));
    a.update(MetaUpdate::RelistStarted, now(100));
    a.update(
        MetaUpdate::Apply(info("client", UID_A, "10.0.0.1", 0)),
        now(100),
    );
    a.update(MetaUpdate::RelistDone, now(100));
    assert_eq!(a.index().live_pods(), 1);
    // Before the relist the server still held its IP.
    let occ = one(a.event(syn_refused(99), now(101)));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "server");
}

#[test]
fn watch_updates_outside_a_relist_retry_at_once() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let mut ev = syn_refused(5);
    let RawEvent::Flow(c) = &mut ev.event else {
        unreachable!("a flow")
    };
    c.dst = "10.0.0.9:8080".parse().unwrap();
    assert!(a.event(ev, now(5)).is_empty());
    let out = a.update(
        MetaUpdate::Apply(info("late", "u-late", "10.0.0.9", 0)),
        now(6),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].subject.pod.as_ref().unwrap().name, "late");
}

fn later(n: Now, by: Duration) -> Now {
    Now {
        wall: n.wall + by,
        mono: n.mono + by,
    }
}

#[test]
fn pending_cgroup_waits_instead_of_settling_for_the_ip() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    assert!(a.event(connect_refused(555, 5), now(5)).is_empty());
    assert_eq!(a.pending_len(), 1);
    let out = a.tick(later(now(5), PENDING_GRACE));
    assert_eq!(out.len(), 1, "at its deadline it takes the IP");
    assert_eq!(out[0].subject.attribution, Attribution::Ip);
}

#[test]
fn gone_cgroups_are_not_asked_again_while_the_answer_is_fresh() {
    use std::sync::atomic::{AtomicU32, Ordering};
    struct Counting(Arc<AtomicU32>);
    impl CgroupPaths for Counting {
        fn path(&mut self, _: u64) -> PathLookup {
            self.0.fetch_add(1, Ordering::Relaxed);
            PathLookup::Missing
        }
    }
    let asked = Arc::new(AtomicU32::new(0));
    let counters = Arc::new(Counters::default());
    let mut a = Attributor::new(
        Box::new(Counting(asked.clone())),
        KernelNames::default(),
        counters,
    );
    for i in 0..100 {
        assert!(a.event(connect_refused(999, i), now(1)).is_empty());
    }
    a.tick(now(2));
    a.tick(now(3));
    // One lookup for the first event; the other 99 and two retries of all 100 hit the cache.
    assert_eq!(asked.load(Ordering::Relaxed), 1);
}

fn one(mut occs: Vec<Occurrence>) -> Occurrence {
    assert_eq!(occs.len(), 1, "{occs:?}");
    occs.remove(0)
}

#[test]
fn drop_between_two_pods_of_the_node_is_evidence_on_both() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let occs = a.event(
        drop_of("10.0.0.1:40000", "10.0.0.2:5432", Some(100), 5),
        now(5),
    );
    assert_eq!(occs.len(), 2, "{occs:?}");
    let out = &occs[0];
    assert_eq!(out.subject.pod.as_ref().unwrap().name, "client");
    assert_eq!(
        out.subject.attribution,
        Attribution::Cgroup,
        "by socket cgroup"
    );
    assert_eq!(out.count, 500);
    let Detail::PacketDrop(d) = &out.detail else {
        panic!("{out:?}")
    };
    assert_eq!(d.direction, Direction::Outbound);
    assert_eq!(d.peer.as_ref().unwrap().name, "server");
    assert_eq!(&*d.reason, "NETFILTER_DROP");
    assert_eq!(d.tcp_flags, Some(0x02));
    let inb = &occs[1];
    assert_eq!(inb.subject.pod.as_ref().unwrap().name, "server");
    assert_eq!(inb.subject.attribution, Attribution::Ip);
    let Detail::PacketDrop(d) = &inb.detail else {
        panic!("{inb:?}")
    };
    assert_eq!(d.direction, Direction::Inbound);
    assert_eq!(d.peer.as_ref().unwrap().name, "client");
}

/// A drop on a kernel without reasons: freed at `location`, with these TCP flags.
fn unreasoned_drop(dst: &str, at: u64, tcp_flags: u8, location: u64) -> TimedEvent {
    let mut e = drop_of("10.0.0.1:40000", dst, Some(100), at);
    if let RawEvent::Flow(f) = &mut e.event {
        f.reason = None;
        f.tcp_flags = tcp_flags;
        f.location = Some(location);
    }
    e
}

#[test]
fn drops_without_a_reason_carry_where_the_kernel_freed_them() {
    let symbols = crate::kernel::kallsyms::Symbols::parse(
        "ffffffff81a00000 t nf_hook_slow\nffffffff81b00000 T tcp_v4_rcv\n",
    );
    let (mut a, _) = attributor_with(Some(Arc::new(symbols)));
    synced_with_pods(&mut a);
    let dropped = unreasoned_drop("10.0.0.2:5432", 5, 0x02, 0xffff_ffff_81a0_008c);
    let occs = a.event(dropped, now(5));
    assert_eq!(occs.len(), 2, "{occs:?}");
    let Detail::PacketDrop(d) = &occs[0].detail else {
        panic!("{occs:?}")
    };
    assert_eq!(&*d.reason, "UNKNOWN");
    assert_eq!(d.location.as_deref(), Some("nf_hook_slow+0x8c"));
    // A SYN freed where TCP found no socket is a refusal (the refusal probes report it), as
    // NO_SOCKET drops are where reasons exist.
    let refused = unreasoned_drop("10.0.0.2:5433", 6, 0x02, 0xffff_ffff_81b0_0044);
    assert!(a.event(refused, now(6)).is_empty());
    // A SYN|ACK freed there is a drop (only the bare SYN is a refusal).
    let synack = unreasoned_drop("10.0.0.2:5433", 7, 0x12, 0xffff_ffff_81b0_0044);
    assert_eq!(a.event(synack, now(7)).len(), 2);
    // Without symbols (kptr_restrict), no location: never the raw address (KASLR).
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let dropped = unreasoned_drop("10.0.0.2:5432", 5, 0x02, 0xffff_ffff_81a0_008c);
    let occs = a.event(dropped, now(5));
    let Detail::PacketDrop(d) = &occs[0].detail else {
        panic!("{occs:?}")
    };
    assert_eq!(d.location, None);
    assert_eq!(&*d.reason, "UNKNOWN");
}

#[test]
fn drop_to_the_outside_is_evidence_on_the_sender_and_unknown_ends_wait() {
    let (mut a, counters) = attributor();
    synced_with_pods(&mut a);
    let occs = a.event(drop_of("10.0.0.1:40000", "192.0.2.9:443", None, 5), now(5));
    assert_eq!(occs.len(), 1);
    // No socket and no way in: named by its source address, unverified.
    assert_eq!(occs[0].subject.attribution, Attribution::Unverified);
    // Neither end known: waits, then is stored unattributed with its whole count.
    assert!(
        a.event(drop_of("192.0.2.1:1", "192.0.2.9:443", None, 5), now(5))
            .is_empty()
    );
    let out = a.tick(later(now(5), PENDING_GRACE));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].subject.attribution, Attribution::None);
    assert_eq!(counters.get(Loss::AttributionExpired), 500);
}

#[test]
fn refusal_cause_tells_the_stack_from_a_firewall() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    // No stack refusal seen for this flow: a reset from a local pod's IP that its stack did
    // not send came from a firewall.
    let occ = one(a.event(connect_refused(100, 5), now(5)));
    assert_eq!(conn(&occ).cause, Some(Cause::Rejected));
    // The destination's stack refused: nothing listens.
    assert_eq!(
        conn(&one(a.event(syn_refused(6), now(6)))).cause,
        Some(Cause::NoListener)
    );
    let occ = one(a.event(connect_refused(100, 7), now(7)));
    assert_eq!(conn(&occ).cause, Some(Cause::NoListener));
    // A destination on another node: cannot tell.
    let mut ev = connect_refused(100, 8);
    let RawEvent::Flow(f) = &mut ev.event else {
        unreachable!("a flow")
    };
    f.dst = "10.9.9.9:80".parse().unwrap();
    assert_eq!(conn(&one(a.event(ev, now(8)))).cause, Some(Cause::Unknown));
    // Refused by ICMP: a firewall, with the ICMP kind as the reason.
    let mut ev = connect_refused(100, 9);
    let RawEvent::Flow(f) = &mut ev.event else {
        unreachable!("a flow")
    };
    f.icmp_errno = Some(113);
    let occ = one(a.event(ev, now(9)));
    assert_eq!(conn(&occ).cause, Some(Cause::Rejected));
    assert_eq!(conn(&occ).reason.as_deref(), Some("ICMP_HOST_UNREACHABLE"));
}

#[test]
fn timeouts_are_never_refusals() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let mut ev = connect_refused(100, 5);
    let RawEvent::Flow(f) = &mut ev.event else {
        unreachable!("a flow")
    };
    f.kind = FlowKind::ConnectTimeout;
    f.syn_retransmits = 3;
    let occ = one(a.event(ev, now(5)));
    let Detail::ConnectionTimeout(c) = &occ.detail else {
        panic!("{occ:?}")
    };
    assert_eq!(c.syn_retransmits, 3);
    assert_eq!(c.cause, None);
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "client");
}

mod oom {
    use super::*;
    use crate::{
        cgroup::ContainerRef,
        event::{OomCounts, OomVictim, Sample},
        evidence::{OomKill, OomSource},
    };

    fn victim(at: u64, main: bool) -> TimedEvent {
        TimedEvent {
            at: t(at),
            first_at: t(at),
            event: RawEvent::OomVictim(OomVictim {
                boot_ns: 0,
                pid: 41,
                tgid: 41,
                comm: "worker".into(),
                uid: 0,
                cgroup_id: Some(100),
                main_process: Some(main),
                memcg_usage_bytes: Some(64 << 20),
                memcg_limit_bytes: Some(64 << 20),
                rss_bytes: Some(60 << 20),
                oom_score_adj: 0,
                oom_group: None,
            }),
        }
    }

    fn counted(at: u64, kills: u64) -> TimedEvent {
        TimedEvent {
            at: t(at),
            first_at: t(at),
            event: RawEvent::Sample(Sample::OomKills(OomCounts {
                container: ContainerRef {
                    pod_uid: UID_A.into(),
                    container_id: "c0ffee".repeat(2).into(),
                },
                kills,
                group_kills: 0,
                limit_bytes: Some(64 << 20),
                usage_bytes: Some(63 << 20),
                group: Some(true),
            })),
        }
    }

    fn oom(o: &Occurrence) -> &OomKill {
        match &o.detail {
            Detail::OomKill(k) => k,
            other => panic!("not an OOM kill: {other:?}"),
        }
    }

    #[test]
    fn a_kill_seen_by_the_kernel_and_then_the_counter_is_one_record() {
        let (mut a, _) = attributor();
        synced_with_pods(&mut a);
        let occ = one(a.event(victim(5, false), now(5)));
        assert_eq!(
            occ.subject.process.as_ref().unwrap().comm.as_ref(),
            "worker"
        );
        assert_eq!(occ.subject.container.as_deref(), Some("app"));
        assert_eq!(oom(&occ).source, OomSource::Kernel);
        assert_eq!(oom(&occ).main_process, Some(false));
        assert!(a.event(counted(6, 1), now(6)).is_empty());
        assert!(a.tick(now(20)).is_empty(), "confirmed: nothing more");
    }

    #[test]
    fn a_counter_seen_first_waits_for_the_kernel_event_and_joins_it() {
        let (mut a, _) = attributor();
        synced_with_pods(&mut a);
        assert!(a.event(counted(5, 1), now(5)).is_empty());
        let occ = one(a.event(victim(5, true), now(6)));
        assert_eq!(
            oom(&occ).group_kill,
            Some(true),
            "the counter's knowledge joins"
        );
        assert!(a.tick(now(20)).is_empty());
    }

    #[test]
    fn a_kill_only_the_counter_saw_is_still_recorded() {
        let (mut a, _) = attributor();
        synced_with_pods(&mut a);
        // One kill the kernel saw, three counted: two are the counter's alone.
        one(a.event(victim(5, false), now(5)));
        assert!(a.event(counted(6, 3), now(6)).is_empty());
        assert!(a.tick(now(7)).is_empty(), "held for a late kernel event");
        let occ = one(a.tick(now(10)));
        assert_eq!(occ.count, 2);
        assert!(occ.subject.process.is_none());
        assert_eq!(occ.subject.attribution, Attribution::Cgroup);
        let k = oom(&occ);
        assert_eq!(
            (k.source, k.main_process, k.memory_limit_bytes),
            (OomSource::Counter, None, Some(64 << 20))
        );
    }

    #[test]
    fn throttling_samples_name_their_container_directly() {
        let (mut a, _) = attributor();
        synced_with_pods(&mut a);
        let ev = TimedEvent {
            at: t(5),
            first_at: t(5),
            event: RawEvent::Sample(Sample::Throttled {
                container: ContainerRef {
                    pod_uid: UID_A.into(),
                    container_id: "c0ffee".repeat(2).into(),
                },
                throttling: crate::evidence::CpuThrottling {
                    throttled_periods: 9,
                    total_periods: 10,
                    throttled_us: 900_000,
                    limit_millicores: Some(100),
                    interval_ms: 1000,
                    cpu_pressure_some_avg10: None,
                },
            }),
        };
        let occ = one(a.event(ev, now(5)));
        assert_eq!(occ.subject.pod.as_ref().unwrap().uid, UID_A);
        assert_eq!(occ.subject.container.as_deref(), Some("app"));
        assert_eq!(occ.subject.attribution, Attribution::Cgroup);
    }
}

#[test]
fn events_of_an_outage_wait_for_the_relist_and_go_to_the_pod_that_held_the_ip() {
    const UID_C: &str = "2f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    let (mut a, counters) = attributor();
    synced_with_pods(&mut a);
    a.set_synced(false, t(10));
    // Unseen by us: the server was deleted and a new pod started on its IP at 15. A refusal
    // at 20 must not be pinned on the server from the stale history.
    assert!(a.event(syn_refused(20), now(20)).is_empty());
    assert!(a.event(connect_refused(100, 21), now(21)).is_empty());
    assert!(a.tick(now(25)).is_empty(), "still waiting");
    assert_eq!(a.pending_len(), 2);
    // Events from before the outage are not held.
    assert_eq!(
        one(a.event(syn_refused(5), now(26)))
            .subject
            .pod
            .as_ref()
            .unwrap()
            .name,
        "server"
    );
    a.update(MetaUpdate::RelistStarted, now(30));
    a.update(
        MetaUpdate::Apply(info("client", UID_A, "10.0.0.1", 0)),
        now(30),
    );
    a.update(
        MetaUpdate::Apply(info("new", UID_C, "10.0.0.2", 15)),
        now(30),
    );
    let out = a.update(MetaUpdate::RelistDone, now(30));
    assert_eq!(out.len(), 2, "{out:?}");
    let inbound = out
        .iter()
        .find(|o| conn(o).direction == Direction::Inbound)
        .unwrap();
    assert_eq!(inbound.subject.pod.as_ref().unwrap().name, "new");
    let outbound = out
        .iter()
        .find(|o| conn(o).direction == Direction::Outbound)
        .unwrap();
    assert_eq!(outbound.subject.pod.as_ref().unwrap().name, "client");
    assert_eq!(conn(outbound).peer.as_ref().unwrap().name, "new");
    assert_eq!(counters.get(Loss::AttributionExpired), 0);
}

/// A pod's successful lookups are no record: attribution hands them over as counters, named
/// by the asking cgroup, and lookups of no pod are counted as such.
#[test]
fn dns_lookups_are_counters_beside_the_records() {
    let (mut a, counters) = attributor();
    synced_with_pods(&mut a);
    let tally = |cgroup_id, ip: &str| TimedEvent {
        at: t(5),
        first_at: t(5),
        event: RawEvent::DnsLookups(crate::event::Tally {
            cgroup_id,
            client_ip: ip.parse().unwrap(),
            lookups: DnsLookups {
                lookups: 12,
                ..DnsLookups::default()
            },
        }),
    };
    assert!(a.event(tally(100, "10.0.0.1"), now(5)).is_empty());
    let taken = a.take_lookups();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].pod.name, "client");
    assert_eq!(taken[0].lookups.lookups, 12);
    assert!(a.take_lookups().is_empty(), "taken once");
    // A host process's lookups: nobody to name, counted by its lookups.
    assert_eq!(counters.get(Loss::DnsLookupsUnattributed), 0);
    assert!(a.event(tally(200, "10.9.9.9"), now(6)).is_empty());
    assert!(a.take_lookups().is_empty());
    assert_eq!(counters.get(Loss::DnsLookupsUnattributed), 12);
}

/// What the kernel lost of a cgroup's evidence goes to its pod's counters; a host process's
/// stays in the node-wide counters only (where the kernel's counters already put it).
#[test]
fn kernel_losses_of_a_cgroup_go_to_its_pod() {
    let (mut a, _counters) = attributor();
    synced_with_pods(&mut a);
    let losses = |cgroup_id| TimedEvent {
        at: t(5),
        first_at: t(5),
        event: RawEvent::CgroupLosses(crate::event::CgroupLosses {
            cgroup_id,
            losses: PodLosses {
                connects: 3,
                dns_packets: 2,
                ..Default::default()
            },
        }),
    };
    assert!(a.event(losses(100), now(5)).is_empty());
    let taken = a.take_pod_losses();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].pod.name, "client");
    assert_eq!(taken[0].losses.connects, 3);
    assert_eq!(taken[0].losses.dns_packets, 2);
    assert!(a.take_pod_losses().is_empty(), "taken once");
    assert!(a.event(losses(200), now(6)).is_empty());
    assert!(a.take_pod_losses().is_empty(), "a host process has no pod");
}

#[tokio::test]
async fn what_the_store_channel_cannot_take_is_counted_by_its_occurrences() {
    let (mut a, counters) = attributor();
    synced_with_pods(&mut a);
    // Nobody reads the store's end: the first occurrence fills the channel.
    let (store, _unread) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let (inputs, _stats, task) = spawn(a, store, cancel.clone());
    let task = tokio::spawn(task);
    for at in [5, 6] {
        let drop = drop_of("10.0.0.1:40000", "192.0.2.9:443", None, at);
        inputs.events.send(drop).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counters.get(Loss::StoreChannelFull) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The second flow's 500 drops, not one.
    assert_eq!(counters.get(Loss::StoreChannelFull), 500);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn at_shutdown_what_was_sent_and_what_waits_for_metadata_reaches_the_store() {
    // Not synced: a drop from the pod's cgroup waits for the pod's metadata (minutes).
    let (a, counters) = attributor();
    let (store, mut stored) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let (inputs, _stats, task) = spawn(a, store, cancel.clone());
    for at in [5, 6] {
        let drop = drop_of("10.0.0.1:40000", "192.0.2.9:443", Some(100), at);
        inputs.events.send(drop).await.unwrap();
    }
    // Shutdown before the task ran at all; the producers stop (their senders go).
    cancel.cancel();
    drop(inputs);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("attribution ends once its producers are gone, not at the drain deadline");
    let mut total = 0;
    while let Ok(Attributed::Occurrence(o)) = stored.try_recv() {
        total += o.count;
    }
    assert_eq!(total, 1000, "both flows' 500 drops reached the store");
    assert_eq!(counters.get(Loss::StoreChannelFull), 0);
}

/// kind's node: kubelet's root `/kubelet` with the systemd driver, given to the agent.
fn attributor_under_kinds_root() -> Attributor {
    let cid = "c0ffee".repeat(2);
    let (a_, b_) = (UID_A.replace('-', "_"), UID_B.replace('-', "_"));
    let kind = |qos: &str, u: &str| {
        format!(
            "/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-{qos}.slice/kubelet-kubepods-{qos}-pod{u}.slice/cri-containerd-{cid}.scope"
        )
    };
    let paths = MapPaths(HashMap::from([
        (100, kind("burstable", &a_)),
        // The client's container made cgroups named like the server's pod inside its own.
        (
            101,
            format!(
                "{}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{b_}.slice/cri-containerd-{cid}.scope",
                kind("burstable", &a_)
            ),
        ),
        (
            102,
            format!(
                "{}/kubepods/besteffort/pod{UID_B}/{cid}",
                kind("burstable", &a_)
            ),
        ),
        // Outside kubelet's root: not a pod, whatever it is named.
        (
            103,
            format!("/sys/fs/cgroup/system.slice/kubepods/pod{UID_B}/{cid}"),
        ),
        (
            200,
            "/sys/fs/cgroup/system.slice/kubelet.service".to_owned(),
        ),
    ]));
    let root = crate::cgroup::path::KubeletRoot::new(std::path::Path::new("/kubelet"));
    Attributor::new(
        Box::new(paths),
        KernelNames {
            reset: HashMap::new(),
            drop: HashMap::new(),
            sees_stack_refusals: true,
            symbols: None,
        },
        Arc::new(Counters::default()),
    )
    .with_layout(KubeletLayout::under(&root, ["/sys/fs/cgroup"]))
}

#[test]
fn under_kinds_root_pods_are_named_by_cgroup_and_forged_pods_are_not_believed() {
    let mut a = attributor_under_kinds_root();
    synced_with_pods(&mut a);
    for cgroup in [100, 101, 102] {
        let occ = one(a.event(connect_refused(cgroup, 5), now(5)));
        assert_eq!(occ.subject.pod.as_ref().unwrap().name, "client", "{cgroup}");
        assert_eq!(occ.subject.container.as_deref(), Some("app"), "{cgroup}");
        assert_eq!(occ.subject.attribution, Attribution::Cgroup, "{cgroup}");
    }
    // Not a pod (as a host process always was): node-level at once, not the IP.
    for cgroup in [103, 200] {
        let occ = one(a.event(connect_refused(cgroup, 5), now(5)));
        assert_eq!(occ.subject.pod, None, "{cgroup}");
        assert_eq!(occ.subject.attribution, Attribution::None, "{cgroup}");
    }
    // A cgroup gone, or still being looked up at the last chance: the IP, as before.
    let occ = one(a.event(connect_refused(999, 5), now(5)));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "client");
    assert_eq!(occ.subject.attribution, Attribution::Ip);
    assert!(a.event(connect_refused(555, 5), now(5)).is_empty());
    let occ = one(a.tick(later(now(5), PENDING_GRACE)));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "client");
    assert_eq!(occ.subject.attribution, Attribution::Ip);
}

/// The server terminates until 105 (its object still lists the address); a new pod
/// (startTime 50) is seen on its IP at 100, when the network plugin has given it the address.
#[test]
fn a_reused_ip_is_the_new_pods_from_when_it_is_seen_with_it_not_from_its_start() {
    const UID_C: &str = "2f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    a.update(
        MetaUpdate::Apply(info("new", UID_C, "10.0.0.2", 50)),
        now(100),
    );
    a.update(MetaUpdate::Delete { uid: UID_B.into() }, now(105));
    for (at, pod) in [(60, "server"), (99, "server"), (102, "new"), (106, "new")] {
        let occ = one(a.event(syn_refused(at), now(107)));
        assert_eq!(occ.subject.pod.as_ref().unwrap().name, pod, "at {at}");
        assert_eq!(occ.subject.attribution, Attribution::Ip);
    }
}

/// A dropped packet with no socket is the sender's by the network namespace it came from; by
/// its source address only when that cannot be told, and then said to be unverified.
#[test]
fn a_drop_without_a_socket_is_credited_by_where_it_came_from_not_its_source_address() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let drop_from = |ingress: Option<Vec<u64>>| {
        let mut e = drop_of("10.0.0.1:40000", "10.9.9.9:53", None, 5);
        if let RawEvent::Flow(f) = &mut e.event {
            f.ingress_netns = ingress.as_ref().map(|_| 7);
            f.ingress_cgroups = ingress.unwrap_or_default();
        }
        e
    };
    // The server's namespace, the client's address: the server wrote it.
    let occ = one(a.event(drop_from(Some(vec![300])), now(5)));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "server");
    assert_eq!(occ.subject.attribution, Attribution::Cgroup);
    assert_eq!(occ.subject.container.as_deref(), Some("app"));
    // Unknown, shared by two pods, or only a host process's (the node's): not a pod's own
    // namespace, so the address is all there is, unverified.
    for cgroups in [Some(vec![]), Some(vec![100, 300]), Some(vec![200]), None] {
        let occ = one(a.event(drop_from(cgroups.clone()), now(6)));
        assert_eq!(
            occ.subject.pod.as_ref().unwrap().name,
            "client",
            "{cgroups:?}"
        );
        assert_eq!(
            occ.subject.attribution,
            Attribution::Unverified,
            "{cgroups:?}"
        );
    }
    // The client's own namespace: verified, its own; a host process that dialled inside it (a
    // port-forward) does not make it the node's.
    for cgroups in [vec![100], vec![200, 100]] {
        let occ = one(a.event(drop_from(Some(cgroups.clone())), now(7)));
        assert_eq!(
            occ.subject.pod.as_ref().unwrap().name,
            "client",
            "{cgroups:?}"
        );
        assert_eq!(occ.subject.attribution, Attribution::Cgroup, "{cgroups:?}");
    }
    // A deleted pod's namespace number may be a new pod's now: its cgroups do not decide.
    a.update(MetaUpdate::Delete { uid: UID_B.into() }, now(8));
    let occ = one(a.event(drop_from(Some(vec![300])), now(9)));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "client");
    assert_eq!(occ.subject.attribution, Attribution::Unverified);
}

fn runtime_pod(name: &str, uid: &str, containers: &[(&str, &str)]) -> pods::RuntimePod {
    pods::RuntimePod {
        pod: PodRef {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
        },
        containers: containers
            .iter()
            .map(|(id, name)| pods::RuntimeContainer {
                id: (*id).to_owned(),
                name: (*name).to_owned(),
                image: "registry.example/app:1".to_owned(),
                restart_count: 0,
                cgroup: None,
            })
            .collect(),
    }
}

fn runtime(pods: Vec<pods::RuntimePod>) -> MetaUpdate {
    MetaUpdate::Runtime(Arc::new(pods))
}

#[test]
fn the_runtime_names_a_pod_the_api_server_has_not_reported() {
    let (mut a, counters) = attributor();
    synced_with_pods(&mut a);
    // A pod only the runtime knows (its cgroup 400), asked about before the runtime said.
    let cid = "beef".repeat(3);
    let uid = "2f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    let mut paths = HashMap::new();
    paths.insert(400, format!("/kubepods/besteffort/pod{uid}/{cid}"));
    a.cgroups = Box::new(MapPaths(paths));
    assert!(a.event(connect_refused(400, 5), now(5)).is_empty(), "waits");
    let out = a.update(
        runtime(vec![runtime_pod("late", uid, &[(&cid, "worker")])]),
        now(6),
    );
    let occ = one(out);
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "late");
    assert_eq!(occ.subject.container.as_deref(), Some("worker"));
    assert_eq!(occ.subject.attribution, Attribution::Cgroup);
    // Not one of the node's pods until the API server says so; then one pod, not two.
    assert_eq!(a.index().live_pods(), 2);
    assert_eq!(a.index().runtime_only_pods(), 1);
    a.update(MetaUpdate::Apply(info("late", uid, "10.0.0.9", 6)), now(7));
    assert_eq!(a.index().live_pods(), 3);
    assert_eq!(a.index().runtime_only_pods(), 0);
    // The API server's status shows another container ID: the runtime's stays known.
    assert_eq!(
        a.index()
            .by_uid(uid)
            .unwrap()
            .containers
            .get(&cid)
            .map(|c| &**c),
        Some("worker")
    );
    assert_eq!(counters.get(Loss::AttributionExpired), 0);
}

#[test]
fn a_pod_only_the_runtime_knew_is_forgotten_when_the_runtime_no_longer_has_it() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let uid = "3f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    a.update(
        runtime(vec![runtime_pod("brief", uid, &[("aa", "app")])]),
        now(1),
    );
    assert_eq!(a.index().runtime_only_pods(), 1);
    // A relist of the API server does not delete what it never listed.
    a.update(MetaUpdate::RelistStarted, now(2));
    a.update(MetaUpdate::RelistDone, now(2));
    assert_eq!(a.index().runtime_only_pods(), 1);
    a.update(runtime(Vec::new()), now(3));
    assert_eq!(a.index().runtime_only_pods(), 0);
    assert!(a.index().live_by_uid(uid).is_none());
    // Still named for late events, until the deleted pods' retention ends.
    assert!(a.index().by_uid(uid).is_some());
    // The runtime never revives a pod the API server deleted.
    a.update(MetaUpdate::Delete { uid: UID_A.into() }, now(4));
    a.update(
        runtime(vec![runtime_pod("client", UID_A, &[("bb", "app")])]),
        now(5),
    );
    assert!(a.index().live_by_uid(UID_A).is_none());
}

#[test]
fn a_restarted_container_waits_briefly_for_the_runtime_to_name_it() {
    let (mut a, _) = attributor();
    synced_with_pods(&mut a);
    let new = "feed".repeat(3);
    let mut paths = HashMap::new();
    paths.insert(100, format!("/kubepods/burstable/pod{UID_A}/{new}"));
    a.cgroups = Box::new(MapPaths(paths));
    // Without a runtime: the pod at once, its container unknown.
    let occ = one(a.event(connect_refused(100, 5), now(5)));
    assert_eq!(occ.subject.container, None);
    // With one: the event waits for its report, then has the container's name.
    a.update(runtime(vec![runtime_pod("client", UID_A, &[])]), now(6));
    assert!(a.event(connect_refused(100, 7), now(7)).is_empty());
    let occ = one(a.update(
        runtime(vec![runtime_pod("client", UID_A, &[(&new, "app")])]),
        now(7),
    ));
    assert_eq!(occ.subject.container.as_deref(), Some("app"));
    // A container the runtime never names: the pod, no container, after RUNTIME_WAIT.
    let mut paths = HashMap::new();
    paths.insert(
        101,
        format!("/kubepods/burstable/pod{UID_A}/{}", "dead".repeat(3)),
    );
    a.cgroups = Box::new(MapPaths(paths));
    assert!(a.event(connect_refused(101, 8), now(8)).is_empty());
    let occ = one(a.tick(later(now(8), RUNTIME_WAIT + Duration::from_secs(1))));
    assert_eq!(occ.subject.pod.as_ref().unwrap().name, "client");
    assert_eq!(occ.subject.container, None);
}
