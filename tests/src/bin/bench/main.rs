//! `cargo xtask bench`: what the agent costs under the failure floods it exists for, as ratios
//! against the same work with no agent, measured in one run, interleaved (detached, attached,
//! peers, detached, ...), at least 10 rounds, median and spread. Never a timed test.
//!
//! - drop flood: one simulated pod sends UDP as fast as one core allows to a port a forward
//!   rule drops (the NetworkPolicy case); the sender's packet rate with the agent attached
//!   divided by the rate without; then the same with an iperf3 stream between two other pods
//!   beside the flood (the stream's throughput ratio);
//! - refusal flood: connect() to a closed port as fast as possible, same ratio;
//! - for the attached rounds: the agent's CPU (cores) and RSS, ring buffer records per event
//!   (first occurrences only: repeats are counted in the kernel), that the count the agent
//!   reports equals the drops the kernel counted, and every loss counter;
//! - peers doing the same job in the same rounds ([`peers`]): bpftrace counting the events in a
//!   kernel map, bpftrace printing a line per event, `tcpdump -w` on the pod's interface, and
//!   the floor, empty programs at the agent's own hooks ([`floor`]);
//! - memory: the agent's RSS with 1,000 pods of metadata and 100,000 records;
//! - dns: queries per second through the simulated cluster DNS (dnsmasq behind a Service VIP,
//!   32 queries in flight from a pod, so the resolver runs flat out, for a name that exists and
//!   for one answered NXDOMAIN; then one at a time, the latency each lookup gains, with
//!   SCHED_IDLE spinners keeping the cores awake) with no agent, with the agent attached, and
//!   with `tcpdump -i any udp port 53` capturing the same traffic in the node's namespace
//!   instead, and with the two candidate hooks' floors instead (empty programs on the cgroup
//!   hooks the agent uses; empty TCX programs on every pod's interface), and with programs on
//!   the cgroup hooks that only find DNS packets (the least any DNS capture there does), and
//!   that only match answers to queries (the least exact matching there does); the agent's
//!   CPU per 10k queries/s, that it lost nothing (every lookup counted), and the DNS programs'
//!   time per query (one more load with the kernel's run-time statistics on, beside the
//!   classifier's, the empty floor's and the matcher's); `dns-latency` runs only the
//!   one-at-a-time part, `dns-cost` only the eBPF time per query (a quick comparison of
//!   builds);
//! - healthy: TCP throughput (iperf3), the connection rate and small UDP requests (one and 32
//!   in flight) between two pods, and UDP requests between two node processes outside every
//!   pod, detached, attached and with the floor ([`healthy`]); `healthy-connections` runs
//!   only the connection rate;
//! - sampling: the cgroupfs sampler on a fixture tree of 1,000 containers (cgroup v2 file
//!   formats in a temporary directory): CPU time per full sweep, and allocations per sample in
//!   steady state (a counting allocator wraps the system one). No root needed.
//! - query: `Query` latency (p50, p99) for one pod's evidence against a store of 1,000,000
//!   records, through the real gRPC server and the CLI's client (a connection per query, as a
//!   CLI run makes). No root needed.
//! - pipeline: what decode -> attribute -> store sustain on one core, fed kernel records past
//!   the ring buffer (1,000 pods of metadata, the store full, so every new flow evicts):
//!   events per second against the goal (>= 500,000), and the cost of each stage. No root
//!   needed.
//! - detection: a refusal provoked in a pod -> its line on `triage-agent watch`, p50/p99.
//!
//! Each scenario is a module ([`flood`] for drop and refusal, [`memory`], [`dns`], [`healthy`],
//! [`sampling`], [`query`], [`pipeline`], [`detection`]); [`measure`] holds what they share.
//! This file reads the command line, makes the simulated node the privileged scenarios share
//! and runs the scenarios asked for, in order.
//!
//! Every scenario adds its rows to one table ([`results`]) written at the end to
//! `target/bench/results.md` (`--results FILE` elsewhere); docs/bench-results.md is a full run's.
//! `--quick` runs every scenario reduced (2 rounds, short floods, smaller stores): `cargo xtask
//! test` runs it to check that each scenario runs and reports, never what it measures.
#![expect(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null for what is missing, it never panics"
)]

mod detection;
mod dns;
mod flood;
mod floor;
mod healthy;
mod measure;
mod memory;
mod peers;
mod pipeline;
mod query;
mod results;
mod sampling;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use triage_agent_tests::simnode::{CgroupDriver, PodRuntime, SimConfig, SimNode};

use crate::measure::{quick, rounds};

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("exe has no directory")?.join(name))
}

/// Command-line words that are scenario names (not flags or their values).
fn scenario_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {}
            "--results" => {
                args.next();
            }
            _ => out.push(a),
        }
    }
    out
}

/// `--results FILE`: where the table goes (default `target/bench/results.md`).
fn results_path() -> PathBuf {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--results"
            && let Some(p) = args.next()
        {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("target/bench/results.md")
}

fn bench() -> anyhow::Result<()> {
    let only = scenario_args();
    if let Some(unknown) = only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
        anyhow::bail!(
            "no scenario named {unknown:?}; the scenarios are: {}",
            SCENARIOS.join(", ")
        );
    }
    let header = format!(
        "Written by `cargo xtask bench{}{}` on {}, kernel {}, {} CPUs; {} rounds per \
         configuration, interleaved. Ratios are attached / detached (1.000 = no cost); \
         spreads are min-max over the rounds.",
        if quick() { " --quick" } else { "" },
        if only.is_empty() {
            String::new()
        } else {
            format!(" {}", only.join(" "))
        },
        String::from_utf8_lossy(
            &std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%d %H:%M UTC"])
                .output()?
                .stdout
        )
        .trim(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        std::thread::available_parallelism().map_or(0, usize::from),
        rounds()
    );
    let result = scenarios(&only);
    results::write(&results_path(), &header)?;
    result
}

/// Every scenario name `bench` takes.
const SCENARIOS: &[&str] = &[
    "sampling",
    "query",
    "pipeline",
    "drop",
    "refusal",
    "memory",
    "dns",
    "dns-latency",
    "dns-cost",
    "healthy",
    "healthy-connections",
    "detection",
];

fn scenarios(only: &[String]) -> anyhow::Result<()> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let unprivileged = ["sampling", "query", "pipeline"];
    if wanted("sampling") {
        sampling::run()?;
    }
    if wanted("query") {
        query::run()?;
    }
    if wanted("pipeline") {
        pipeline::run()?;
    }
    if !only.is_empty() && only.iter().all(|o| unprivileged.contains(&o.as_str())) {
        return Ok(());
    }
    let mut node = SimNode::start(SimConfig {
        workload: sibling("sim-workload")?,
        driver: CgroupDriver::Cgroupfs,
        runtime: PodRuntime::HandMade,
    })?;
    let sink = node.add_pod("bench", "sink")?;
    let source = node.add_pod("bench", "source")?;
    let sink_ip = node.pod(sink).ip;
    node.nft_node(&format!(
        "table bridge bench {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {sink_ip} udp dport 7000 drop\n }}\n}}\n"
    ))?;
    // A TCP stream between two other pods that runs during the drop flood.
    let stream = if wanted("drop") {
        Some(flood::Stream::start(&mut node)?)
    } else {
        None
    };
    let floods = flood::scenarios(sink_ip, stream.as_ref());
    println!(
        "triage-agent bench: {} rounds x {} s per configuration, interleaved \
         (detached, attached, peers); kernel {}",
        rounds(),
        measure::flood_seconds(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    for s in floods.iter().filter(|s| wanted(s.short)) {
        flood::run(&node, source, s)?;
    }
    if wanted("memory") {
        memory::run(&mut node, source, sink)?;
    }
    if wanted("dns") {
        dns::run(&mut node, dns::Part::All)?;
    } else if only.iter().any(|o| o == "dns-latency") {
        dns::run(&mut node, dns::Part::Latency)?;
    } else if only.iter().any(|o| o == "dns-cost") {
        dns::run(&mut node, dns::Part::Costs)?;
    }
    if wanted("healthy") || wanted("healthy-connections") {
        healthy::run(&mut node, !wanted("healthy"))?;
    }
    if wanted("detection") {
        detection::run(&node, source, sink)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == floor::HOLD_ARG) {
        return match floor::hold() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench {}: {e:#}", floor::HOLD_ARG);
                ExitCode::FAILURE
            }
        };
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
