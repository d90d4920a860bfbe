//! Heap bytes the agent holds per pod of metadata and per record, measured with a counting
//! allocator, against the budgets: at most 4 KiB a pod (what attribution and the samplers keep,
//! and what decoding a pod costs on the way); at most 150 bytes a record, and a guard close
//! above what the store's compact layout holds today (86 bytes), so a layout that grows fails.
//!
//! The allocator counts the bytes live on each thread (allocated minus freed there), so tests
//! running beside each other do not disturb a measurement: each one allocates, keeps and frees
//! on its own thread.
#![cfg(feature = "node-agent")]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use triage_agent::{
    attribute::{
        metadata::{PodView, pod_info},
        pods::{PodIndex, PodInfo},
    },
    evidence::{Attribution, Detail, Direction, Drop, Occurrence, PodRef, Protocol, Subject},
    loss::Counters,
    samplers::sampler::{Sampler, v2_fixture_config, write_v2_counters},
    store::{Store, StoreConfig},
};

struct Counting;

thread_local! {
    /// Bytes allocated and not freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The most `LIVE` was since [`reset_peak`].
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Starts a new peak at the bytes live now; returns them.
fn reset_peak() -> isize {
    let now = live();
    PEAK.with(|p| p.set(now));
    now
}

fn peak_bytes() -> isize {
    PEAK.with(Cell::get)
}

fn bytes(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(bytes(layout.size()));
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        note(-bytes(layout.size()));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new) };
        if !p.is_null() {
            note(bytes(new) - bytes(layout.size()));
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Budget of the heap bytes held per pod of metadata.
const POD_BUDGET: isize = 4096;

/// A pod of a Deployment as the API server sends it: managedFields, a last-applied
/// annotation, labels, an owner, two containers and an init container with env vars, volume
/// mounts and probes, four volumes, conditions, container statuses and two IPs (about 20 KB
/// of JSON).
const DEPLOYMENT_POD: &str = include_str!("../src/attribute/fixtures/deployment-pod.json");

/// The fixture as the `i`th pod of a node: its own name, uid, IPs and container IDs.
fn pod_json(i: usize) -> String {
    let ip = Ipv4Addr::new(
        10,
        244,
        u8::try_from(i / 250).unwrap_or(u8::MAX),
        u8::try_from(i % 250 + 1).unwrap_or(u8::MAX),
    );
    DEPLOYMENT_POD
        .replace(
            "checkout-7d9f8b6c5d-x2lq9",
            &format!("checkout-7d9f8b6c5d-{i:05}"),
        )
        .replace(
            "3f9a6c1e-8b2d-4e7f-9a10-5c6d7e8f9a0b",
            &format!("3f9a6c1e-8b2d-4e7f-9a10-{i:012x}"),
        )
        .replace("10.244.1.23", &ip.to_string())
        .replace("fd00:10:244:1::17", &format!("fd00:10:244:1::{i:x}"))
        .replace(&"a1".repeat(32), &format!("a1{i:062x}"))
        .replace(&"b2".repeat(32), &format!("b2{i:062x}"))
        .replace(&"c3".repeat(32), &format!("c3{i:062x}"))
}

const PODS: usize = 200;

#[test]
fn a_pod_of_metadata_decodes_in_at_most_4_kib_beyond_its_text() {
    let text = pod_json(0);
    let base = reset_peak();
    let view: PodView = serde_json::from_str(&text).unwrap();
    let info = pod_info(&view).unwrap();
    drop(view);
    let peak = peak_bytes() - base;
    assert_eq!(info.containers.len(), 3);
    assert_eq!(info.ips.len(), 2);
    // The whole object, for comparison: what decoding it as a `Pod` would cost.
    let base = reset_peak();
    let full: k8s_openapi::api::core::v1::Pod = serde_json::from_str(&text).unwrap();
    let full_peak = peak_bytes() - base;
    drop(full);
    println!(
        "decoding one pod ({} bytes of JSON): {peak} bytes at most as the agent's view, {full_peak} \
         as a whole Pod",
        text.len()
    );
    assert!(peak <= POD_BUDGET, "{peak} bytes to decode one pod");
    assert!(full_peak > 4 * peak, "the whole Pod would cost {full_peak}");
}

#[test]
fn a_list_of_pods_decodes_in_at_most_4_kib_a_pod_beyond_its_text() {
    let items: Vec<String> = (0..PODS).map(pod_json).collect();
    let text = format!(
        r#"{{"apiVersion":"v1","kind":"PodList","metadata":{{"resourceVersion":"48213400"}},"items":[{}]}}"#,
        items.join(",")
    );
    drop(items);
    let base = reset_peak();
    let list: kube::core::ObjectList<PodView> = serde_json::from_str(&text).unwrap();
    let infos: Vec<PodInfo> = list.items.iter().filter_map(pod_info).collect();
    let peak = peak_bytes() - base;
    assert_eq!(list.metadata.resource_version.as_deref(), Some("48213400"));
    assert_eq!(infos.len(), PODS);
    let per_pod = peak / bytes(PODS);
    println!("decoding a list of {PODS} pods: {per_pod} bytes a pod at most beyond the text");
    assert!(per_pod <= POD_BUDGET, "{per_pod} bytes a pod");
}

/// Writes the cgroups of pod `i`'s two running containers (cgroup v2, cgroupfs driver,
/// burstable) under `root`, in the kernel's formats; its init container has exited and has none.
fn write_pod_cgroups(root: &std::path::Path, i: usize) -> std::io::Result<()> {
    let pod = root.join(format!(
        "kubepods/burstable/pod3f9a6c1e-8b2d-4e7f-9a10-{i:012x}"
    ));
    for prefix in ["b2", "c3"] {
        let dir = pod.join(format!("{prefix}{i:062x}"));
        std::fs::create_dir_all(&dir)?;
        write_v2_counters(&dir, 0, 0, 0)?;
        std::fs::write(dir.join("cpu.max"), "100000 100000\n")?;
        std::fs::write(dir.join("memory.max"), "536870912\n")?;
        std::fs::write(dir.join("memory.current"), "1048576\n")?;
        std::fs::write(
            dir.join("cpu.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )?;
    }
    Ok(())
}

#[test]
fn a_pod_of_metadata_is_held_in_at_most_4_kib() {
    let texts: Vec<String> = (0..PODS).map(pod_json).collect();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..PODS {
        write_pod_cgroups(dir.path(), i).unwrap();
    }
    let now = SystemTime::now();
    let base = live();
    let mut index = PodIndex::default();
    for text in &texts {
        let view: PodView = serde_json::from_str(text).unwrap();
        index.apply(pod_info(&view).unwrap(), now);
    }
    let in_index = live() - base;
    // What attribution publishes for the samplers, and the sampler following the pods'
    // containers (the two running ones of each pod have cgroups).
    let published = index.pod_containers();
    let in_published = live() - base - in_index;
    let known = triage_agent::cgroup::KnownCgroups::default();
    let mut sampler = Sampler::new(v2_fixture_config(dir.path(), 10)).with_known(known.clone());
    sampler.set_pods(&published, std::time::Instant::now(), &mut Vec::new());
    let mut out = Vec::new();
    sampler.sweep(std::time::Instant::now(), &mut out);
    drop(out);
    let held = live() - base;
    assert_eq!(index.live_pods(), PODS);
    assert_eq!(published.len(), PODS);
    assert_eq!(sampler.containers(), 2 * PODS);
    let per_pod = held / bytes(PODS);
    println!(
        "{PODS} pods of metadata held: {per_pod} bytes a pod ({} in attribution's index, {} \
         published for the samplers, {} in the sampler)",
        in_index / bytes(PODS),
        in_published / bytes(PODS),
        (held - in_index - in_published) / bytes(PODS)
    );
    assert!(per_pod <= POD_BUDGET, "{per_pod} bytes a pod");
}

/// Heap bytes the store holds per record of a dropped packet, past the first records of each
/// pod.
fn record_bytes() -> isize {
    const RECORDS: u16 = 20_000;
    const SENDERS: usize = 10;
    let mut store = Store::new(
        StoreConfig {
            node: "node-a".into(),
            capacity: 100_000,
            max_age: Duration::from_secs(3600),
            pod_quota: 100_000,
            namespace_quota: 100_000,
            unattributed_quota: 100_000,
        },
        Arc::new(Counters::default()),
    );
    // Dropped packets as attribution records them: pods, containers and reasons shared (one
    // copy per pod, one per name).
    let pods: Vec<Arc<PodRef>> = (0..SENDERS)
        .map(|i| {
            Arc::new(PodRef {
                namespace: "bench".into(),
                name: format!("sender-{i}"),
                uid: format!("6d657461-0000-4000-8000-{i:012x}"),
            })
        })
        .collect();
    let container: Arc<str> = "app".into();
    let reason: Arc<str> = "NETFILTER_DROP".into();
    let at = SystemTime::now();
    let occurrence = |n: u16| {
        let pod = pods.get(usize::from(n) % SENDERS).cloned();
        Occurrence::single(
            at + Duration::from_millis(u64::from(n)),
            Subject {
                pod,
                container: Some(container.clone()),
                // Drops name no process (a packet has none).
                process: None,
                attribution: Attribution::Cgroup,
            },
            Detail::PacketDrop(Drop {
                direction: Direction::Outbound,
                src: SocketAddr::from(([10, 244, 0, 5], 40000)),
                dst: SocketAddr::from(([10, 244, 0, 9], 10000 + n)),
                protocol: Protocol::Udp,
                reason: reason.clone(),
                peer: None,
                tcp_flags: None,
                location: None,
            }),
        )
    };
    // The first records make the per-pod and per-namespace state; what is measured is the
    // records after them.
    for n in 0..100 {
        store.record(occurrence(n));
    }
    let base = live();
    for n in 100..RECORDS {
        store.record(occurrence(n));
    }
    let held = live() - base;
    assert_eq!(store.stats().records, u64::from(RECORDS));
    let per_record = held / bytes(usize::from(RECORDS - 100));
    println!(
        "{RECORDS} records held: {per_record} bytes a record (as the store hands it out, an \
         Evidence is {} bytes: its detail {}, its subject {})",
        size_of::<triage_agent::evidence::Evidence>(),
        size_of::<Detail>(),
        size_of::<Subject>()
    );
    per_record
}

/// What the store holds per record of an IPv4 drop: 86 bytes today (the record in place in the
/// store's slab, 80 bytes, and its index in the table of keys; the pod, container and reason
/// are one shared context). The guard sits a little above, far under the 150-byte budget, so
/// a layout change that adds a word to every record fails here.
#[test]
fn a_record_is_held_in_at_most_96_bytes() {
    let per_record = record_bytes();
    assert!(per_record <= 96, "{per_record} bytes a record");
}
