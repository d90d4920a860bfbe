//! The memory scenario: the agent's RSS with 1,000 pods of metadata and 100,000 records, and
//! what a pod and a record cost (RSS without the extra pods, with them, with the records).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use triage_agent_tests::simnode::SimNode;

use crate::{
    measure::{cpu_and_rss, nonzero_losses, quick},
    results,
};

/// Pods known only as metadata in the memory scenario, beside the node's real ones: 1,000 in
/// all (each with a container), as a busy node has.
const MEMORY_PODS: u64 = 1000;

/// Room for every record of the scenario.
const STORE_ARGS: [&str; 6] = [
    "--store-capacity",
    "100000",
    "--store-pod-quota",
    "100000",
    "--store-namespace-quota",
    "100000",
];

/// Agent RSS with 1,000 pods of metadata and 100,000 records: two pods each send one UDP
/// packet to each of 50,000 ports a rule drops, a record on each sender per port (on the
/// receiver, a sweep of its ports folds into one record: a scan cannot fill its quota).
pub fn run(node: &mut SimNode, source: usize, sink: usize) -> anyhow::Result<()> {
    use triage_agent_tests::apiserver::{PodFixture, pod_object};

    let sink_ip = node.pod(sink).ip;
    let second = node.add_pod("bench", "sweeper")?;
    node.nft_node(&format!(
        "table bridge bench_sweep {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {sink_ip} udp dport 10000-60000 drop\n }}\n}}\n"
    ))?;
    // The agent with the node's own pods only: the baseline a pod's cost is measured from.
    let bare = {
        let mut agent = crate::measure::start_agent(node, &STORE_ARGS)?;
        agent.wait_ready(true, Duration::from_secs(20))?;
        agent.wait_pods(node.live_pods(), Duration::from_secs(30))?;
        let (_, rss) = cpu_and_rss(agent.pid().context("agent pid")?)?;
        agent.stop()?;
        rss
    };
    let extra = MEMORY_PODS.saturating_sub(node.live_pods());
    let names: Vec<(String, String, String)> = (0..extra)
        .map(|i| {
            (
                format!("meta-{i:04}"),
                format!("6d657461-0000-4000-8000-{i:012x}"),
                format!("{i:064x}"),
            )
        })
        .collect();
    for (i, (name, uid, container_id)) in names.iter().enumerate() {
        let ip = std::net::Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250 + 1) as u8);
        node.api.apply_pod(pod_object(&PodFixture {
            namespace: "bench-meta",
            name,
            uid,
            node: &node.name,
            pod_ip: Some(ip.into()),
            host_ip: Some(node.node_ip().into()),
            host_network: false,
            qos_class: "Burstable",
            containers: &[("app", container_id)],
        }));
    }
    let result = memory_with(node, [source, second], sink_ip, extra, bare);
    for (name, _, _) in &names {
        node.api.delete_pod("bench-meta", name);
    }
    result
}

fn memory_with(
    node: &SimNode,
    sources: [usize; 2],
    sink_ip: std::net::Ipv4Addr,
    extra: u64,
    bare: f64,
) -> anyhow::Result<()> {
    let mut agent = crate::measure::start_agent(node, &STORE_ARGS)?;
    agent.wait_ready(true, Duration::from_secs(20))?;
    let pods = node.live_pods() + extra;
    agent.wait_pods(pods, Duration::from_secs(30))?;
    let pid = agent.pid().context("agent pid")?;
    let (_, before) = cpu_and_rss(pid)?;
    let (ports, halves) = if quick() {
        (2_000u16, [(10000u16, 10999u16), (11000, 11999)])
    } else {
        (50_000, [(10000, 34999), (35000, 59999)])
    };
    for source in sources {
        for (from, to) in halves {
            node.run(
                source,
                &[
                    "udp-sweep",
                    &sink_ip.to_string(),
                    &from.to_string(),
                    &to.to_string(),
                ],
            )?;
        }
    }
    let want = u64::from(ports) * 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let s = agent.status()?;
        let n = s["store_records"].as_u64().unwrap_or(0);
        if n >= want || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (_, after) = cpu_and_rss(pid)?;
    let status = agent.status()?;
    let per_record = (after - before) * 1024.0 * 1024.0 / (records.max(1) as f64);
    let per_pod = (before - bare) * 1024.0 * 1024.0 / (extra.max(1) as f64);
    println!("\nmemory: {pods} pods of metadata, {records} records in the store");
    println!(
        "  agent RSS {after:.1} MiB ({bare:.1} MiB with the node's own pods, {before:.1} MiB with \
         the pods, before the records; goal <= 32 MiB); {per_pod:.0} bytes per pod (goal <= \
         4096), {per_record:.0} bytes per record (goal <= 150)"
    );
    let losses = nonzero_losses(&status).unwrap_or_else(|| "none".to_owned());
    println!("  losses: {losses}");
    agent.stop()?;
    results::add(results::Row {
        scenario: format!(
            "memory: agent RSS with {} pods of metadata and {} records",
            results::thousands(pods as f64),
            results::thousands(records as f64)
        ),
        ours: format!("{after:.1} MiB"),
        peers: "-".to_owned(),
        goal: "<= 32 MiB".to_owned(),
        spread: format!(
            "{per_pod:.0} bytes per pod (goal <= 4096), {per_record:.0} bytes per record (goal <= \
             150); {bare:.1} MiB with the node's own pods, {before:.1} MiB with the pods and no \
             records; \
             bounded by --store-capacity (records) and the node's pods; losses: {losses}"
        ),
    });
    Ok(())
}
