//! The pipeline scenario: what decode -> attribute -> store sustain on one core, fed kernel
//! records past the ring buffer (1,000 pods of metadata in 10 namespaces, the store full
//! before the timed events start, so each new flow evicts a record from the biggest owner):
//! events per second against the goal, and the cost of each stage. No root needed.

use std::time::{Duration, Instant};

use crate::{
    measure::{process_cpu, quick},
    results,
};

/// decode -> attribute -> store on one core, fed encoded kernel records.
pub fn run() -> anyhow::Result<()> {
    use std::{collections::HashMap, sync::Arc};

    use triage_agent::{
        attribute::{Attributor, KernelNames, MetaUpdate, Now, pods::PodInfo},
        cgroup::{CgroupPaths, PathLookup},
        event::{RawEvent, TimedEvent},
        evidence::fixtures::pod_ref,
        loss::Counters,
        probes::decode::{decode, encode},
        store::{Store, StoreConfig},
    };
    use triage_agent_common::{
        AF_INET, COMM_LEN, EventHeader, FlowEvent, FlowKey, FlowStats, flow_flags, kind,
    };

    struct Paths(HashMap<u64, String>);
    impl CgroupPaths for Paths {
        fn path(&mut self, id: u64) -> PathLookup {
            self.0
                .get(&id)
                .cloned()
                .map_or(PathLookup::Missing, PathLookup::Found)
        }
    }
    const PODS: u64 = 1000;
    /// Pods per namespace: a namespace's records (100 per pod with the store full) stay under
    /// its quota, so room is made by the whole-store bound, among all 1,000 owners.
    const PODS_PER_NAMESPACE: u64 = 100;
    const CAPACITY: usize = 100_000;
    /// The goal: new flows per second on one core with the store full.
    const GOAL: f64 = 500_000.0;
    let uid = |p: u64| format!("00000000-0000-4000-8000-{p:012}");
    let cid = |p: u64| format!("{p:064x}");
    let paths = Paths(
        (0..PODS)
            .map(|p| (p + 1, format!("/kubepods/pod{}/{}", uid(p), cid(p))))
            .collect(),
    );
    let counters = Arc::new(Counters::default());
    let mut attributor = Attributor::new(
        Box::new(paths),
        KernelNames {
            reset: HashMap::new(),
            drop: HashMap::from([(6, "NETFILTER_DROP".to_owned())]),
            sees_stack_refusals: false,
            symbols: None,
        },
        counters.clone(),
    );
    let now = Now::real();
    attributor.update(MetaUpdate::RelistStarted, now);
    for p in 0..PODS {
        let ip = std::net::IpAddr::from([10, 1, (p / 250) as u8, (p % 250) as u8 + 1]);
        let namespace = format!("bench-{}", p / PODS_PER_NAMESPACE);
        let mut pod = (*pod_ref(&namespace, &format!("pod-{p}"))).clone();
        pod.uid = uid(p);
        attributor.update(
            MetaUpdate::Apply(PodInfo {
                pod: Arc::new(pod),
                ips: vec![ip],
                host_network: false,
                containers: HashMap::from([(cid(p), "app".into())]),
                started: Some(std::time::SystemTime::UNIX_EPOCH),
                finished: false,
            }),
            now,
        );
    }
    attributor.update(MetaUpdate::RelistDone, now);
    let mut store = Store::new(
        StoreConfig::new("bench", CAPACITY, Duration::from_secs(3600)),
        counters.clone(),
    );
    // First occurrences of distinct flows (what reaches userspace under in-kernel
    // aggregation): pod p drops to `daddr` port 1000 + i / PODS.
    let record = |i: u64, daddr: [u8; 4]| {
        let p = i % PODS;
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 1, (p / 250) as u8, (p % 250) as u8 + 1]);
        let mut daddr16 = [0u8; 16];
        daddr16[..4].copy_from_slice(&daddr);
        encode(&FlowEvent {
            header: EventHeader {
                kind: kind::PACKET_DROP,
                len: size_of::<FlowEvent>() as u32,
                boot_ns: i,
            },
            key: FlowKey {
                kind: kind::PACKET_DROP,
                reason: 6,
                cgroup_id: p + 1,
                family: AF_INET,
                protocol: 17,
                tcp_flags: 0,
                sport: 0,
                dport: 1000 + (i / PODS % 60_000) as u16,
                ingress_netns: 0,
                flags: flow_flags::HAS_PROCESS,
                saddr,
                daddr: daddr16,
            },
            stats: FlowStats {
                count: 1,
                first_ns: i,
                last_ns: i,
                pid: 1,
                tgid: 1,
                comm: [0; COMM_LEN],
                extra: 0,
                last_sport: 40000,
                _pad0: 0,
            },
        })
    };
    // The store filled first (untimed), through the same stages, with flows to another
    // address: from the first timed event on, every new flow makes room.
    for i in 0..CAPACITY as u64 {
        let raw = decode(&record(i, [10, 9, 9, 8])).map_err(|e| anyhow::anyhow!("{e}"))?;
        let event = TimedEvent {
            at: std::time::SystemTime::now(),
            first_at: std::time::SystemTime::now(),
            event: raw,
        };
        for o in attributor.event(event, now) {
            store.record(o);
        }
    }
    anyhow::ensure!(
        store.stats().records == CAPACITY as u64,
        "the store holds {} records, not its {CAPACITY}",
        store.stats().records
    );
    let evicted_before = store.stats().evicted;
    let events = if quick() { 20_000 } else { 500_000 };
    let records: Vec<Vec<u8>> = (0..events as u64)
        .map(|i| record(i, [10, 9, 9, 9]))
        .collect();
    let (mut t_decode, mut t_attr, mut t_store) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let cpu0 = process_cpu();
    let wall = Instant::now();
    let mut stored = 0u64;
    // Each event's end is the next one's start: three clock reads per event.
    let mut a = Instant::now();
    for bytes in &records {
        let raw = decode(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let b = Instant::now();
        let RawEvent::Flow(_) = &raw else {
            anyhow::bail!("not a flow")
        };
        // A first occurrence: first seen when last seen.
        let at = std::time::SystemTime::now();
        let event = TimedEvent {
            at,
            first_at: at,
            event: raw,
        };
        let occurrences = attributor.event(event, now);
        let c = Instant::now();
        for o in occurrences {
            store.record(o);
            stored += 1;
        }
        let d = Instant::now();
        t_decode += b - a;
        t_attr += c - b;
        t_store += d - c;
        a = d;
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu0;
    anyhow::ensure!(stored == events as u64, "{stored} of {events} stored");
    let evicted = store.stats().evicted - evicted_before;
    anyhow::ensure!(
        evicted == events as u64,
        "{evicted} records evicted for {events} new flows: the store was not full throughout"
    );
    let per = |d: Duration| d.as_secs_f64() * 1e9 / events as f64;
    let rate = events as f64 / wall;
    println!(
        "\n| pipeline: decode -> attribute -> store, one core, {events} first occurrences of distinct flows, 1,000 pods, store full | events/s | decode | attribute | store |\n| --- | --- | --- | --- | --- |\n| sustained (CPU {:.2} s over {wall:.2} s) | {:.0} (goal >= {GOAL:.0}){} | {:.0} ns | {:.0} ns | {:.0} ns |",
        cpu,
        rate,
        if rate >= GOAL { "" } else { "  BELOW GOAL" },
        per(t_decode),
        per(t_attr),
        per(t_store)
    );
    results::add(results::Row {
        scenario: "pipeline: decode -> attribute -> store on one core, new flows from 1,000 pods, \
                   store full"
            .to_owned(),
        ours: results::at_least(rate, GOAL, "events/s"),
        peers: "-".to_owned(),
        goal: format!(">= {} events/s", results::thousands(GOAL)),
        spread: format!(
            "decode {:.0} ns, attribute {:.0} ns, store {:.0} ns per event over {} events \
             (CPU {cpu:.2} s over {wall:.2} s), each evicting one of {} records from the \
             biggest of 1,000 owners; beyond it the 8,192-event channels fill and \
             `pipeline_full` counts",
            per(t_decode),
            per(t_attr),
            per(t_store),
            results::thousands(events as f64),
            results::thousands(CAPACITY as f64)
        ),
    });
    Ok(())
}
