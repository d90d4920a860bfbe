//! The pipeline scenario: what decode -> attribute -> store sustain on one core, fed kernel
//! records past the ring buffer (1,000 pods of metadata): events per second, and the cost of
//! each stage. No root needed.

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
        let mut pod = (*pod_ref("bench", &format!("pod-{p}"))).clone();
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
        StoreConfig::new("bench", 100_000, Duration::from_secs(3600)),
        counters.clone(),
    );
    // First occurrences of distinct flows (what reaches userspace under in-kernel
    // aggregation): pod p drops to port 1000 + i.
    let events = if quick() { 20_000 } else { 500_000 };
    let records: Vec<Vec<u8>> = (0..events as u64)
        .map(|i| {
            let p = i % PODS;
            let mut saddr = [0u8; 16];
            saddr[..4].copy_from_slice(&[10, 1, (p / 250) as u8, (p % 250) as u8 + 1]);
            let mut daddr = [0u8; 16];
            daddr[..4].copy_from_slice(&[10, 9, 9, 9]);
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
                    daddr,
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
        })
        .collect();
    let (mut t_decode, mut t_attr, mut t_store) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let cpu0 = process_cpu();
    let wall = Instant::now();
    let mut stored = 0u64;
    for bytes in &records {
        let a = Instant::now();
        let raw = decode(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let b = Instant::now();
        let RawEvent::Flow(_) = &raw else {
            anyhow::bail!("not a flow")
        };
        let event = TimedEvent {
            at: std::time::SystemTime::now(),
            first_at: std::time::SystemTime::now(),
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
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu0;
    anyhow::ensure!(stored == events as u64, "{stored} of {events} stored");
    let per = |d: Duration| d.as_secs_f64() * 1e9 / events as f64;
    println!(
        "\n| pipeline: decode -> attribute -> store, one core, {events} first occurrences of distinct flows, 1,000 pods | events/s | decode | attribute | store |\n| --- | --- | --- | --- | --- |\n| sustained (CPU {:.2} s over {wall:.2} s) | {:.0} | {:.0} ns | {:.0} ns | {:.0} ns |",
        cpu,
        events as f64 / wall,
        per(t_decode),
        per(t_attr),
        per(t_store)
    );
    results::add(results::Row {
        scenario: "pipeline: decode -> attribute -> store on one core, new flows from 1,000 pods"
            .to_owned(),
        ours: format!("{} events/s", results::thousands(events as f64 / wall)),
        peers: "-".to_owned(),
        goal: "-".to_owned(),
        spread: format!(
            "decode {:.0} ns, attribute {:.0} ns, store {:.0} ns per event over {} events; \
             beyond it the 8,192-event channels fill and `pipeline_full` counts",
            per(t_decode),
            per(t_attr),
            per(t_store),
            results::thousands(events as f64)
        ),
    });
    Ok(())
}
