//! Heap allocations per event on the hot path, decode -> attribute -> store, counted by a
//! counting allocator, with the store full so every event evicts (the bench's pipeline
//! scenario, smaller): the musl allocator the image ships is slow, so an allocation per event
//! is a cost the pipeline's rate pays, and these bounds keep one from slipping back in.
//!
//! The allocator counts the allocations made on each thread, so tests running beside each
//! other do not disturb a count.

#![cfg(feature = "node-agent")]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

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

struct Counting;

thread_local! {
    /// Allocations (and reallocations) this thread made.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Paths(HashMap<u64, String>);

impl CgroupPaths for Paths {
    fn path(&mut self, id: u64) -> PathLookup {
        self.0
            .get(&id)
            .cloned()
            .map_or(PathLookup::Missing, PathLookup::Found)
    }
}

const PODS: u64 = 100;
const PODS_PER_NAMESPACE: u64 = 10;
const CAPACITY: usize = 10_000;
const EVENTS: u64 = 20_000;

/// A first occurrence of a dropped UDP flow from pod `i % PODS` to `daddr`, as the kernel
/// writes it.
fn record(i: u64, daddr: [u8; 4]) -> Vec<u8> {
    let p = i % PODS;
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[10, 1, 0, u8::try_from(p + 1).unwrap_or(u8::MAX)]);
    let mut daddr16 = [0u8; 16];
    daddr16[..4].copy_from_slice(&daddr);
    encode(&FlowEvent {
        header: EventHeader {
            kind: kind::PACKET_DROP,
            len: u32::try_from(size_of::<FlowEvent>()).unwrap_or(u32::MAX),
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
            dport: 1000 + u16::try_from(i / PODS % 60_000).unwrap_or(0),
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
}

/// Allocations per event in (decode, attribute, store), in tenths, with the store full.
fn allocations_per_event() -> (u64, u64, u64) {
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
        let ip = std::net::IpAddr::from([10, 1, 0, u8::try_from(p + 1).unwrap_or(u8::MAX)]);
        let namespace = format!("ns-{}", p / PODS_PER_NAMESPACE);
        let mut pod = (*pod_ref(&namespace, &format!("pod-{p}"))).clone();
        pod.uid = uid(p);
        attributor.update(
            MetaUpdate::Apply(PodInfo {
                pod: Arc::new(pod),
                ips: vec![ip],
                host_network: false,
                containers: HashMap::from([(cid(p), "app".into())]),
                started: Some(SystemTime::UNIX_EPOCH),
                finished: false,
            }),
            now,
        );
    }
    attributor.update(MetaUpdate::RelistDone, now);
    let mut store = Store::new(
        StoreConfig::new("node-a", CAPACITY, Duration::from_secs(3600)),
        counters,
    );
    let mut pass = |store: &mut Store, i: u64, daddr: [u8; 4], counts: &mut [u64; 3]| {
        let bytes = record(i, daddr);
        let a = allocations();
        let raw = decode(&bytes);
        assert!(matches!(raw, Ok(RawEvent::Flow(_))), "a flow");
        let Ok(raw) = raw else { return };
        let b = allocations();
        let at = SystemTime::now();
        let occurrences = attributor.event(
            TimedEvent {
                at,
                first_at: at,
                event: raw,
            },
            now,
        );
        let c = allocations();
        assert_eq!(occurrences.len(), 1);
        for o in occurrences {
            store.record(o);
        }
        let d = allocations();
        counts[0] += b - a;
        counts[1] += c - b;
        counts[2] += d - c;
    };
    // The store filled first, with flows to another address: every timed event evicts.
    let mut untimed = [0; 3];
    for i in 0..CAPACITY as u64 {
        pass(&mut store, i, [10, 9, 9, 8], &mut untimed);
    }
    let evicted = store.stats().evicted;
    let mut counts = [0; 3];
    for i in 0..EVENTS {
        pass(&mut store, i, [10, 9, 9, 9], &mut counts);
    }
    assert_eq!(store.stats().records, CAPACITY as u64);
    assert_eq!(
        store.stats().evicted - evicted,
        EVENTS,
        "every event evicted"
    );
    let tenths = |n: u64| n * 10 / EVENTS;
    let [decode, attribute, store] = counts.map(tenths);
    println!(
        "allocations per event, in tenths: decode {decode}, attribute {attribute}, store {store}"
    );
    (decode, attribute, store)
}

/// Today: decode none; attribution one, the `Vec` of occurrences it hands back (its names,
/// reasons and pods are shared); the store about one in ten events (the ranking's tree nodes
/// as owners move), none for the record itself (it goes in place into the slab, and the one it
/// evicts frees no heap).
#[test]
fn an_event_through_decode_attribute_and_a_full_store_allocates_at_most_once() {
    let (decode, attribute, store) = allocations_per_event();
    assert_eq!(
        decode, 0,
        "decode: {decode} tenths of an allocation an event"
    );
    assert!(attribute <= 10, "attribute: {attribute} tenths");
    assert!(store <= 2, "store: {store} tenths");
}
