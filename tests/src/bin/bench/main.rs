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
//! - healthy: TCP throughput (iperf3) and connection rate between two pods, attached vs
//!   detached (every packet of every socket passes the DNS programs' port check);
//! - sampling: the cgroupfs sampler on a fixture tree of 1,000 containers (cgroup v2 file
//!   formats in a temporary directory): CPU time per full sweep, and allocations per sample in
//!   steady state (a counting allocator wraps the system one). No root needed.
//! - query: `Query` latency (p50, p99) for one pod's evidence against a store of 1,000,000
//!   records, through the real gRPC server and the CLI's client (a connection per query, as a
//!   CLI run makes). No root needed.
//! - pipeline: what decode -> attribute -> store sustain on one core, fed kernel records past
//!   the ring buffer (1,000 pods of metadata): events per second, and the cost of each stage.
//!   No root needed.
//! - detection: a refusal provoked in a pod -> its line on `triage-agent watch`, p50/p99.
//!
//! Every scenario adds its rows to one table ([`results`]) written at the end to
//! `target/bench/results.md` (`--results FILE` elsewhere); docs/bench-results.md is a full run's.
//! `--quick` runs every scenario reduced (2 rounds, short floods, smaller stores): `cargo xtask
//! test` runs it to check that each scenario runs and reports, never what it measures.
#![expect(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null for what is missing, it never panics"
)]

mod floor;
mod peers;
mod results;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use triage_agent_tests::{
    agent::{AgentProcess, records},
    simnode::{CgroupDriver, SimConfig, SimNode},
};

/// Rounds of each configuration (2 with `--quick`).
fn rounds() -> usize {
    if quick() { 2 } else { 10 }
}

/// Length of one flood.
fn flood_seconds() -> f64 {
    if quick() { 0.5 } else { 2.0 }
}

/// `--quick`: every scenario, reduced.
fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("exe has no directory")?.join(name))
}

/// (events, seconds) the workload reported.
fn flood(node: &SimNode, pod: usize, what: &str, dst: &str) -> anyhow::Result<f64> {
    let out = node.run(pod, &[what, dst, &flood_seconds().to_string()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let n: f64 = parts.next().context("no count")?.parse()?;
    let secs: f64 = parts.next().context("no time")?.parse()?;
    Ok(n / secs)
}

/// utime + stime of a process, in seconds, and its RSS in MiB.
fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on every Linux architecture Kubernetes runs on
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(((utime + stime) / ticks, rss_kb / 1024.0))
}

/// The loss counters of a Status answer that are not zero, "name=count ...".
fn nonzero_losses(status: &serde_json::Value) -> Option<String> {
    let nonzero: Vec<String> = status["loss"]
        .as_object()?
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    (!nonzero.is_empty()).then(|| nonzero.join(" "))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of each round's own ratio `x[i] / base[i]`: a configuration against the
/// detached load of the same round, seconds apart, so that a slow drift of the machine's speed
/// over the run (other guests on the host) weighs less than in a ratio of medians.
fn paired(base: &[f64], x: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = base.iter().zip(x).map(|(b, x)| x / b).collect();
    median(&mut ratios)
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

struct Scenario<'a> {
    /// Name on the command line (`cargo xtask bench drop`).
    short: &'static str,
    name: &'static str,
    /// The workload's flood command.
    what: &'static str,
    /// The evidence kind the flood makes.
    kind: &'static str,
    unit: &'static str,
    dst: String,
    goal: f64,
    peers: Vec<peers::Peer>,
    /// A TCP stream to run beside the flood.
    stream: Option<&'a Stream>,
}

/// Counts allocations, to show the sampler allocates nothing per sample.
struct Counting;
static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// This process's CPU time (user + system), seconds.
fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The sampler on 1,000 fixture containers: CPU per sweep, allocations per sample.
fn sampling() -> anyhow::Result<()> {
    use triage_agent::samplers::sampler::{Sampler, v2_fixture_config, write_v2_fixture};
    const CONTAINERS: usize = 1000;
    const SWEEPS: usize = 50;
    let dir = tempfile::tempdir()?;
    let pods = write_v2_fixture(dir.path(), CONTAINERS)?;
    let mut sampler = Sampler::new(v2_fixture_config(dir.path(), 10));
    let started = Instant::now();
    sampler.set_pods(&pods);
    let discovery = started.elapsed();
    anyhow::ensure!(
        sampler.containers() == CONTAINERS,
        "found {} containers",
        sampler.containers()
    );
    let mut out = Vec::with_capacity(64);
    // The first sweep opens the files and takes the baseline.
    sampler.sweep(Instant::now(), &mut out);
    let mut per_sweep = Vec::with_capacity(SWEEPS);
    let allocs0 = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
    let mut files = 0;
    for _ in 0..SWEEPS {
        out.clear();
        let cpu0 = process_cpu();
        let stats = sampler.sweep(Instant::now(), &mut out);
        per_sweep.push((process_cpu() - cpu0) * 1000.0);
        files += stats.files_read;
    }
    let allocs = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - allocs0;
    let samples = (SWEEPS * CONTAINERS) as f64;
    let (min, max) = spread(&per_sweep);
    let med = median(&mut per_sweep);
    println!(
        "
sampling: {CONTAINERS} containers (cgroup v2 fixture tree), {SWEEPS} sweeps"
    );
    println!(
        "  CPU per full sweep: median {med:.2} ms (min {min:.2}, max {max:.2}; goal < 5 ms); \
         {:.2} us per container",
        med * 1000.0 / CONTAINERS as f64
    );
    println!(
        "  files read per sweep: {}; allocations per sample in steady state: {:.4} ({allocs} \
         in {SWEEPS} sweeps); discovery of {CONTAINERS} containers: {:.1} ms; open files: {}",
        files / SWEEPS as u64,
        allocs as f64 / samples,
        discovery.as_secs_f64() * 1000.0,
        sampler.open_files()
    );
    results::add(results::Row {
        scenario: format!("sampling: CPU per sweep of {CONTAINERS} containers' cgroup v2 files"),
        ours: format!("{med:.2} ms"),
        peers: "-".to_owned(),
        goal: "< 5 ms".to_owned(),
        spread: format!(
            "{min:.2}-{max:.2} ms over {SWEEPS} sweeps; {:.4} allocations per sample",
            allocs as f64 / samples
        ),
    });
    Ok(())
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
    "detection",
];

fn scenarios(only: &[String]) -> anyhow::Result<()> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let unprivileged = ["sampling", "query", "pipeline"];
    if wanted("sampling") {
        sampling()?;
    }
    if wanted("query") {
        query_latency()?;
    }
    if wanted("pipeline") {
        pipeline()?;
    }
    if !only.is_empty() && only.iter().all(|o| unprivileged.contains(&o.as_str())) {
        return Ok(());
    }
    let mut node = SimNode::start(SimConfig {
        workload: sibling("sim-workload")?,
        driver: CgroupDriver::Cgroupfs,
    })?;
    let sink = node.add_pod("bench", "sink")?;
    let source = node.add_pod("bench", "source")?;
    let sink_ip = node.pod(sink).ip;
    node.nft_node(&format!(
        "table bridge bench {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {sink_ip} udp dport 7000 drop\n }}\n}}\n"
    ))?;
    // A TCP stream between two other pods that runs during the drop flood.
    let stream = if wanted("drop") {
        let server = node.add_pod("bench", "stream-server")?;
        let client = node.add_pod("bench", "stream-client")?;
        node.start_program(server, Path::new(IPERF3), &["-s", "-p", "5202"])?;
        Some(Stream {
            client,
            server_ip: node.pod(server).ip.to_string(),
        })
    } else {
        None
    };
    let scenarios = [
        Scenario {
            short: "drop",
            name: "drop flood (UDP to a port a forward rule drops)",
            what: "flood-udp",
            kind: "packet_drop",
            unit: "pkt/s",
            dst: format!("{sink_ip}:7000"),
            goal: 0.93,
            peers: peers::of_drops(),
            stream: stream.as_ref(),
        },
        Scenario {
            short: "refusal",
            name: "refusal flood (connect() to a closed port)",
            what: "flood-connect",
            kind: "connection_refused",
            unit: "conn/s",
            dst: format!("{sink_ip}:7001"),
            goal: 0.95,
            peers: peers::of_refusals(),
            stream: None,
        },
    ];
    println!(
        "triage-agent bench: {} rounds x {} s per configuration, interleaved \
         (detached, attached, peers); kernel {}",
        rounds(),
        flood_seconds(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    for s in scenarios.iter().filter(|s| wanted(s.short)) {
        flood_scenario(&node, source, s)?;
    }
    if wanted("memory") {
        memory(&mut node, source, sink)?;
    }
    if wanted("dns") {
        dns(&mut node, DnsPart::All)?;
    } else if only.iter().any(|o| o == "dns-latency") {
        dns(&mut node, DnsPart::Latency)?;
    } else if only.iter().any(|o| o == "dns-cost") {
        dns(&mut node, DnsPart::Costs)?;
    }
    if wanted("healthy") {
        healthy(&mut node)?;
    }
    if wanted("detection") {
        detection(&node, source, sink)?;
    }
    Ok(())
}

const IPERF3: &str = "/usr/bin/iperf3";

/// The TCP stream that runs beside the drop flood: iperf3 from `client` to an iperf3 server.
struct Stream {
    client: usize,
    server_ip: String,
}

impl Stream {
    /// Runs the flood with the stream beside it: (flood events/s, stream bits/s).
    fn beside(
        &self,
        node: &SimNode,
        source: usize,
        s: &Scenario<'_>,
    ) -> anyhow::Result<(f64, f64)> {
        let seconds = flood_seconds().ceil().to_string();
        let iperf = node.spawn_program_piped(
            self.client,
            Path::new(IPERF3),
            &["-c", &self.server_ip, "-p", "5202", "-t", &seconds, "-J"],
        )?;
        let rate = flood(node, source, s.what, &s.dst);
        let out = iperf.wait_with_output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3: {}", String::from_utf8_lossy(&out.stderr)))?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 reported no throughput")?;
        Ok((rate?, bps))
    }
}

/// `median unit (min-max)` of rates.
fn summary(v: &[f64], unit: &str) -> String {
    let (min, max) = spread(v);
    format!(
        "{} {unit} ({}-{})",
        results::thousands(median(&mut v.to_vec())),
        results::thousands(min),
        results::thousands(max)
    )
}

/// One failure flood: detached, attached, then each peer, interleaved round by round.
fn flood_scenario(node: &SimNode, source: usize, s: &Scenario<'_>) -> anyhow::Result<()> {
    let mut detached = Vec::new();
    let mut attached = Vec::new();
    let mut cpu = Vec::new();
    let mut rss = Vec::new();
    let mut records_per_event = Vec::new();
    let mut exact = true;
    let mut losses = String::new();
    let mut peer_rates: Vec<Vec<f64>> = s.peers.iter().map(|_| Vec::new()).collect();
    let mut peer_lost: Vec<Option<u64>> = s.peers.iter().map(|_| None).collect();
    // (flood events/s, stream bits/s) with the stream beside the flood.
    let (mut stream_detached, mut stream_attached) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        detached.push(flood(node, source, s.what, &s.dst)?);
        if let Some(stream) = s.stream {
            stream_detached.push(stream.beside(node, source, s)?);
        }

        let mut agent = AgentProcess::start(node)?;
        agent.wait_ready(true, Duration::from_secs(20))?;
        agent.wait_pods(node.live_pods(), Duration::from_secs(20))?;
        let pid = agent.pid().context("agent pid")?;
        let (cpu0, _) = cpu_and_rss(pid)?;
        let received0 = agent.status()?["events_received"].as_u64().unwrap_or(0);
        let counted0 = counted(&agent, s.kind)?;
        let started = Instant::now();
        let rate = flood(node, source, s.what, &s.dst)?;
        let elapsed = started.elapsed().as_secs_f64();
        // Let the last drain land before reading counts.
        std::thread::sleep(Duration::from_millis(1200));
        let (cpu1, rss_mib) = cpu_and_rss(pid)?;
        attached.push(rate);
        cpu.push((cpu1 - cpu0) / elapsed);
        rss.push(rss_mib);
        let counted = counted(&agent, s.kind)? - counted0;
        let status = agent.status()?;
        let received = status["events_received"].as_u64().unwrap_or(0) - received0;
        records_per_event.push(received as f64 / (counted.max(1) as f64));
        let sent = (rate * flood_seconds()) as u64;
        // The sender's own count is what left the socket; the agent must not report more,
        // and (for drops) the difference is what never reached the rule.
        if counted == 0 || counted > sent + sent / 100 {
            exact = false;
        }
        if let Some(stream) = s.stream {
            stream_attached.push(stream.beside(node, source, s)?);
        }
        if let Some(nonzero) = nonzero_losses(&agent.status()?) {
            losses = nonzero;
        }
        agent.stop()?;

        for (i, peer) in s.peers.iter().enumerate() {
            let running = peer.start(node, source)?;
            let rate = flood(node, source, s.what, &s.dst);
            let lost = running.stop()?;
            if let Some(r) = peer_rates.get_mut(i) {
                r.push(rate?);
            }
            if let (Some(l), Some(n)) = (peer_lost.get_mut(i), lost) {
                *l = Some(l.unwrap_or(0) + n);
            }
        }
    }
    let costs = program_costs(node, source, s)?;
    let dmed = median(&mut detached.clone());
    let amed = median(&mut attached.clone());
    let ratio = amed / dmed;
    println!("\n{}", s.name);
    println!("  detached: {}", summary(&detached, s.unit));
    println!("  attached: {}", summary(&attached, s.unit));
    println!(
        "  ratio attached/detached: {ratio:.3} (goal >= {:.2}){}",
        s.goal,
        if ratio >= s.goal { "" } else { "  BELOW GOAL" }
    );
    let cores = median(&mut cpu);
    let rss = median(&mut rss);
    let per_event = median(&mut records_per_event);
    println!(
        "  agent: {cores:.3} cores, {rss:.1} MiB RSS; ring records per {}: {per_event:.5}",
        s.kind
    );
    let counts = if exact {
        "every round counted, none over"
    } else {
        "MISMATCH"
    };
    let losses = if losses.is_empty() { "none" } else { &losses };
    println!("  counts: {counts}; losses: {losses}");
    let mut peer_cells = Vec::new();
    for ((peer, rates), lost) in s.peers.iter().zip(&peer_rates).zip(&peer_lost) {
        let r = median(&mut rates.clone()) / dmed;
        println!(
            "  {}: {}; ratio {r:.3}{}",
            peer.label,
            summary(rates, s.unit),
            lost.map(|n| format!("; reported lost: {n}"))
                .unwrap_or_default()
        );
        peer_cells.push(format!(
            "{} {r:.3}{}",
            peer.label,
            lost.map(|n| format!(" (lost {})", results::thousands(n as f64)))
                .unwrap_or_default()
        ));
    }
    println!("  eBPF program time per event (a round with kernel.bpf_stats_enabled=1): {costs}");
    results::add(results::Row {
        scenario: format!("{}: rate with the agent / without", s.name),
        ours: results::against(ratio, s.goal),
        peers: if peer_cells.is_empty() {
            "-".to_owned()
        } else {
            peer_cells.join("; ")
        },
        goal: format!(">= {:.2}", s.goal),
        spread: format!(
            "detached {}, attached {}; agent {cores:.3} cores, {rss:.1} MiB RSS, {per_event:.5} \
             ring records per event; counts: {counts}; losses: {losses}; eBPF program time per \
             event: {costs}",
            summary(&detached, s.unit),
            summary(&attached, s.unit)
        ),
    });
    if !stream_detached.is_empty() {
        let d: Vec<f64> = stream_detached.iter().map(|x| x.1 / 1e9).collect();
        let a: Vec<f64> = stream_attached.iter().map(|x| x.1 / 1e9).collect();
        let fd: Vec<f64> = stream_detached.iter().map(|x| x.0).collect();
        let fa: Vec<f64> = stream_attached.iter().map(|x| x.0).collect();
        let ratio = median(&mut a.clone()) / median(&mut d.clone());
        let flood_ratio = median(&mut fa.clone()) / median(&mut fd.clone());
        let gbits = |v: &[f64]| {
            let (min, max) = spread(v);
            format!("{:.2} Gbit/s ({min:.2}-{max:.2})", median(&mut v.to_vec()))
        };
        println!(
            "  with a TCP stream beside it: stream detached {}, attached {}; ratio {ratio:.3}; \
             flood ratio {flood_ratio:.3}",
            gbits(&d),
            gbits(&a)
        );
        results::add(results::Row {
            scenario: format!("{}: a concurrent TCP stream's throughput (iperf3)", s.name),
            ours: format!("{ratio:.3}"),
            peers: "-".to_owned(),
            goal: "-".to_owned(),
            spread: format!(
                "detached {}, attached {}; the flood beside it {flood_ratio:.3}",
                gbits(&d),
                gbits(&a)
            ),
        });
    }
    Ok(())
}

/// One more flood for the agent and each eBPF peer with the kernel's run-time statistics on:
/// the programs' own time per flood event ("ours 92 ns, bpftrace count 41 ns"). What the
/// kernel spends around a program (a classic tracepoint building its record) is not in it.
fn program_costs(node: &SimNode, source: usize, s: &Scenario<'_>) -> anyhow::Result<String> {
    let _stats = peers::BpfStats::enable()?;
    let per_event = |pid: u32, run: &dyn Fn() -> anyhow::Result<f64>| -> anyhow::Result<String> {
        let (ns0, runs0) = peers::bpf_run_stats(pid);
        let rate = run()?;
        let (ns1, runs1) = peers::bpf_run_stats(pid);
        let events = rate * flood_seconds();
        Ok(format!(
            "{:.0} ns ({:.0} ns per run, {:.2} runs per event)",
            (ns1 - ns0) as f64 / events.max(1.0),
            (ns1 - ns0) as f64 / (runs1 - runs0).max(1) as f64,
            (runs1 - runs0) as f64 / events.max(1.0)
        ))
    };
    let flood_once = || flood(node, source, s.what, &s.dst);
    let mut agent = AgentProcess::start(node)?;
    agent.wait_ready(true, Duration::from_secs(20))?;
    let before = program_stats(&agent)?;
    let ours = per_event(agent.pid().context("agent pid")?, &flood_once);
    let after = program_stats(&agent)?;
    agent.stop()?;
    let ours = ours?;
    // Which of the agent's programs the events ran, and what each cost per run.
    let programs: Vec<String> = after
        .iter()
        .filter_map(|(name, (secs, runs))| {
            let (secs0, runs0) = before.get(name).copied().unwrap_or((0.0, 0.0));
            let runs = runs - runs0;
            (runs > 0.0).then(|| {
                format!(
                    "{name} {:.0} ns x {}",
                    (secs - secs0) * 1e9 / runs,
                    results::thousands(runs)
                )
            })
        })
        .collect();
    let mut out = vec![format!("ours {ours} [{}]", programs.join(", "))];
    for peer in s.peers.iter().filter(|p| p.ebpf) {
        let running = peer.start(node, source)?;
        let cost = per_event(running.pid(), &flood_once);
        running.stop()?;
        out.push(format!("{} {}", peer.label, cost?));
    }
    Ok(out.join("; "))
}

/// The agent's per-program run time (seconds) and runs, from its /metrics.
fn program_stats(
    agent: &AgentProcess,
) -> anyhow::Result<std::collections::BTreeMap<String, (f64, f64)>> {
    let (_, body) = agent.http_get("/metrics")?;
    let mut out = std::collections::BTreeMap::<String, (f64, f64)>::new();
    for line in body.lines() {
        let (metric, is_time) = if let Some(m) =
            line.strip_prefix("triage_agent_bpf_program_run_time_seconds_total{program=\"")
        {
            (m, true)
        } else if let Some(m) = line.strip_prefix("triage_agent_bpf_program_runs_total{program=\"")
        {
            (m, false)
        } else {
            continue;
        };
        let Some((name, rest)) = metric.split_once("\"}") else {
            continue;
        };
        let value: f64 = rest.trim().parse().unwrap_or(0.0);
        let entry = out.entry(name.to_owned()).or_default();
        if is_time {
            entry.0 = value;
        } else {
            entry.1 = value;
        }
    }
    Ok(out)
}

/// The count the agent reports for the source pod's outbound records of `kind`.
fn counted(agent: &AgentProcess, kind: &str) -> anyhow::Result<u64> {
    let v = agent.query("bench", "source")?;
    Ok(records(&v, kind, "outbound")
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum())
}

/// Detection latency: a refusal provoked in a pod -> its record on `triage-agent watch`'s
/// output. Each round connects to a new port (a new flow: its first occurrence is reported at
/// once, not at the next drain of the kernel's counts).
fn detection(node: &SimNode, source: usize, sink: usize) -> anyhow::Result<()> {
    use std::io::BufRead as _;

    let mut agent = AgentProcess::start(node)?;
    // Synced: the pods added before (by other scenarios too) are known.
    agent.wait_ready(true, Duration::from_secs(20))?;
    let mut watch = std::process::Command::new(triage_agent_tests::agent::agent_binary())
        .args([
            "watch",
            "--pod",
            "source",
            "-n",
            "bench",
            "-o",
            "json",
            "--agent",
            &agent.addr,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // Time for the stream to open.
    std::thread::sleep(Duration::from_millis(500));
    let sink_ip = node.pod(sink).ip;
    let samples = if quick() { 3 } else { 30 };
    let mut latencies = Vec::new();
    for i in 0..samples {
        let port = 20_000 + i;
        let dst = format!("{sink_ip}:{port}");
        while rx.try_recv().is_ok() {}
        let provoked = Instant::now();
        node.run(source, &["connect", &dst, "1", "0"])?;
        let deadline = provoked + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = rx
                .recv_timeout(left)
                .with_context(|| format!("the refusal to {dst} never reached watch"))?;
            if line.contains(&format!("\"{dst}\"")) && line.contains("connection_refused") {
                latencies.push((at - provoked).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    agent.stop()?;
    latencies.sort_by(f64::total_cmp);
    println!(
        "\n| detection: refusal provoked -> on `triage-agent watch` ({} samples, a new flow each) | p50 | p99 | max | goal |\n| --- | --- | --- | --- | --- |\n| connect() in a pod (process start included) to the watch line | {:.0} ms | {:.0} ms | {:.0} ms | p99 < 1 s |",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    results::add(results::Row {
        scenario: "detection: a refusal provoked in a pod -> its line on `watch`".to_owned(),
        ours: format!("p99 {:.0} ms", percentile(&latencies, 99.0)),
        peers: "-".to_owned(),
        goal: "p99 < 1 s".to_owned(),
        spread: format!(
            "p50 {:.0} ms, max {:.0} ms over {} samples",
            percentile(&latencies, 50.0),
            latencies.last().copied().unwrap_or(f64::NAN),
            latencies.len()
        ),
    });
    Ok(())
}

/// Healthy traffic: TCP throughput (iperf3) and TCP connection rate between two pods.
fn healthy(node: &mut SimNode) -> anyhow::Result<()> {
    let server = node.add_pod("bench", "iperf-server")?;
    let client = node.add_pod("bench", "iperf-client")?;
    let server_ip = node.pod(server).ip.to_string();
    let iperf3 = Path::new(IPERF3);
    node.start_program(server, iperf3, &["-s", "-p", "5201"])?;
    node.start_process(server, &["listen", "7100"])?;
    std::thread::sleep(Duration::from_millis(300));
    let throughput = |node: &SimNode| -> anyhow::Result<f64> {
        let out = node.run_program(
            client,
            iperf3,
            &["-c", &server_ip, "-p", "5201", "-t", "2", "-J"],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 reported no throughput")
    };
    let connections =
        |node: &SimNode| flood(node, client, "connect-rate", &format!("{server_ip}:7100"));
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("TCP throughput (iperf3, bits/s)", Vec::new(), Vec::new()),
        (
            "TCP connections/s (connect, server closes, close)",
            Vec::new(),
            Vec::new(),
        ),
    ];
    for _ in 0..rounds() {
        if let Some(r) = rows.get_mut(0) {
            r.1.push(throughput(node)?);
        }
        if let Some(r) = rows.get_mut(1) {
            r.1.push(connections(node)?);
        }
        let mut agent = AgentProcess::start(node)?;
        agent.wait_ready(true, Duration::from_secs(20))?;
        if let Some(r) = rows.get_mut(0) {
            r.2.push(throughput(node)?);
        }
        if let Some(r) = rows.get_mut(1) {
            r.2.push(connections(node)?);
        }
        agent.stop()?;
    }
    println!(
        "\nhealthy traffic between two pods ({} rounds, interleaved)",
        rounds()
    );
    for (name, detached, attached) in &mut rows {
        let (d, a) = (median(&mut detached.clone()), median(&mut attached.clone()));
        let (dmin, dmax) = spread(detached);
        let (amin, amax) = spread(attached);
        println!(
            "  {name}: detached {d:.0} ({dmin:.0}-{dmax:.0}), attached {a:.0} ({amin:.0}-{amax:.0}); ratio {:.3} (goal >= 0.99){}",
            a / d,
            if a / d >= 0.99 { "" } else { "  BELOW GOAL" }
        );
        results::add(results::Row {
            scenario: format!("healthy traffic between two pods: {name}"),
            ours: results::against(a / d, 0.99),
            peers: "-".to_owned(),
            goal: ">= 0.99".to_owned(),
            spread: format!(
                "detached {} ({}-{}), attached {} ({}-{})",
                results::thousands(d),
                results::thousands(dmin),
                results::thousands(dmax),
                results::thousands(a),
                results::thousands(amin),
                results::thousands(amax)
            ),
        });
    }
    Ok(())
}

/// What of the DNS scenario runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DnsPart {
    /// The floods, then one lookup at a time (`bench dns`).
    All,
    /// One lookup at a time (`bench dns-latency`).
    Latency,
    /// The eBPF time per query only (`bench dns-cost`).
    Costs,
}

/// DNS queries/s through the simulated resolver: detached, agent attached, tcpdump instead.
/// The DNS scenarios ([`DnsPart`]): flat out (answered, then NXDOMAIN), and one lookup at a
/// time.
fn dns(node: &mut SimNode, part: DnsPart) -> anyhow::Result<()> {
    let record = format!(
        "--host-record=db.bench.svc.cluster.local,{}",
        node.node_ip()
    );
    node.add_dns_server("coredns", DNS_VIP, &["--local=/cluster.local/", &record])?;
    let client = node.add_pod("bench", "resolver")?;
    node.set_cluster_dns(client, DNS_VIP, "")?;
    if part == DnsPart::Costs {
        return dns_costs(node, client);
    }
    if part == DnsPart::All {
        dns_round_trips(node, client, 32, FOUND)?;
        // Failures: every lookup answered NXDOMAIN (each a failure the agent records).
        dns_round_trips(node, client, 32, MISSING)?;
    }
    // One query at a time measures the latency each lookup gains. Idle cores would make the
    // wakeups of whichever configuration keeps them busier decide the rate, so SCHED_IDLE
    // spinners keep both cores out of idle states in every configuration (they yield to any
    // other task at once).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // SAFETY: sched_param is plain integers (musl's has fields glibc's lacks); all
                // zero is priority 0, the one SCHED_IDLE takes.
                let param: libc::sched_param = unsafe { std::mem::zeroed() };
                // The system call, not libc's wrapper: musl's (the bench is built static) only
                // returns ENOSYS, which would leave the spinners competing with the load.
                // SAFETY: sets this thread's own policy from a valid sched_param.
                unsafe {
                    libc::syscall(
                        libc::SYS_sched_setscheduler,
                        0,
                        libc::SCHED_IDLE,
                        &raw const param,
                    )
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let result = dns_round_trips(node, client, 1, FOUND);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    result
}

const DNS_VIP: &str = "10.96.0.10";

/// The name the simulated DNS answers.
const FOUND: &str = "db.bench.svc.cluster.local";

/// A name it answers NXDOMAIN.
const MISSING: &str = "missing.bench.svc.cluster.local";

/// One DNS load: 2 s (0.5 s with --quick, which only checks that the scenario runs), or the
/// seconds in `TA_BENCH_DNS_SECONDS` (longer loads for a profiler to sample).
fn dns_load_seconds() -> f64 {
    let set = std::env::var("TA_BENCH_DNS_SECONDS").ok();
    match set.and_then(|s| s.parse::<f64>().ok()) {
        Some(s) if s > 0.0 => s,
        _ if quick() => 0.5,
        _ => 2.0,
    }
}

/// One DNS load from the pod `client`, `window` queries in flight for `name`: queries/s and
/// the answers the client got.
fn dns_load(node: &SimNode, client: usize, window: u16, name: &str) -> anyhow::Result<(f64, u64)> {
    let seconds = dns_load_seconds();
    let out = node.run(
        client,
        &[
            "dns-load",
            &format!("{DNS_VIP}:53"),
            &seconds.to_string(),
            name,
            &window.to_string(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let n: f64 = parts.next().context("no count")?.parse()?;
    let secs: f64 = parts.next().context("no time")?.parse()?;
    Ok((n / secs, n as u64))
}

/// `bench dns-cost`: only the eBPF time per query, ours and the three cgroup-hook floors', for
/// both floods, once per round: the quick way to compare builds of the DNS programs.
fn dns_costs(node: &SimNode, client: usize) -> anyhow::Result<()> {
    let seconds = dns_load_seconds();
    for round in 1..=rounds() {
        for (what, name) in [("answered", FOUND), ("NXDOMAIN", MISSING)] {
            let costs = dns_program_costs(node, client, &|node| {
                dns_load(node, client, 32, name).map(|(rate, _)| rate * seconds)
            })?;
            println!("dns-cost round {round}, {what}: eBPF time per query {costs}");
        }
    }
    Ok(())
}

/// One DNS configuration: `window` queries in flight for `name`.
fn dns_round_trips(node: &SimNode, client: usize, window: u16, name: &str) -> anyhow::Result<()> {
    let seconds = dns_load_seconds();
    let load = |node: &SimNode| dns_load(node, client, window, name);
    let (mut detached, mut attached, mut tcpdump) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor, mut tcx_floor, mut classify) = (Vec::new(), Vec::new(), Vec::new());
    let mut matcher = Vec::new();
    let (mut cpu_per_10k, mut losses) = (Vec::new(), String::new());
    let (mut answered_total, mut counted_total) = (0u64, 0u64);
    for _ in 0..rounds() {
        detached.push(load(node)?.0);

        let mut agent = AgentProcess::start(node)?;
        agent.wait_ready(true, Duration::from_secs(20))?;
        agent.wait_pods(node.live_pods(), Duration::from_secs(20))?;
        let pid = agent.pid().context("agent pid")?;
        let before = agent.query("bench", "resolver")?;
        let lookups0 = before["dns_lookups"][0]["lookups"].as_u64().unwrap_or(0);
        let (cpu0, _) = cpu_and_rss(pid)?;
        let started = Instant::now();
        let (rate, answered) = load(node)?;
        let elapsed = started.elapsed().as_secs_f64();
        let (cpu1, _) = cpu_and_rss(pid)?;
        attached.push(rate);
        cpu_per_10k.push((cpu1 - cpu0) / elapsed / (rate / 10_000.0));
        // Counters are reported each second: wait for the last report.
        std::thread::sleep(Duration::from_millis(1500));
        let v = agent.query("bench", "resolver")?;
        let counted = v["dns_lookups"][0]["lookups"].as_u64().unwrap_or(0) - lookups0;
        answered_total += answered;
        counted_total += counted;
        let status = agent.status()?;
        if let Some(nonzero) = nonzero_losses(&status) {
            losses = nonzero;
        }
        agent.stop()?;

        let mut capture = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                node.node_netns(),
                "tcpdump",
                "-i",
                "any",
                "-w",
                "/dev/null",
            ])
            .args(["-U", "udp", "port", "53"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting tcpdump (Debian package tcpdump)")?;
        std::thread::sleep(Duration::from_millis(500));
        tcpdump.push(load(node)?.0);
        let _ = capture.kill();
        let _ = capture.wait();

        let empty = peers::floor().start(node, client)?;
        floor.push(load(node)?.0);
        empty.stop()?;

        let empty = peers::tcx_floor()?.start(node, client)?;
        tcx_floor.push(load(node)?.0);
        empty.stop()?;

        let classifier = peers::classify_floor().start(node, client)?;
        classify.push(load(node)?.0);
        classifier.stop()?;

        let matching = peers::match_floor().start(node, client)?;
        matcher.push(load(node)?.0);
        matching.stop()?;
    }
    let costs = dns_program_costs(node, client, &|node| {
        load(node).map(|(rate, _)| rate * seconds)
    })?;
    let d = median(&mut detached.clone());
    let a = median(&mut attached.clone());
    let t = median(&mut tcpdump.clone());
    let f = median(&mut floor.clone());
    let x = median(&mut tcx_floor.clone());
    let c = median(&mut classify.clone());
    let m = median(&mut matcher.clone());
    println!(
        "\ndns: queries/s through the simulated resolver, {window} in flight ({} rounds x {seconds} s, interleaved)",
        rounds()
    );
    let (dmin, dmax) = spread(&detached);
    let (amin, amax) = spread(&attached);
    let (tmin, tmax) = spread(&tcpdump);
    println!("  detached: median {d:.0}/s (min {dmin:.0}, max {dmax:.0})");
    println!(
        "  attached: median {a:.0}/s (min {amin:.0}, max {amax:.0}); ratio {:.3} (goal >= 0.98){}; \
         paired by round {:.3}",
        a / d,
        if a / d >= 0.98 { "" } else { "  BELOW GOAL" },
        paired(&detached, &attached)
    );
    println!(
        "  tcpdump -i any udp port 53 instead: median {t:.0}/s (min {tmin:.0}, max {tmax:.0}); ratio {:.3}; \
         paired by round {:.3}",
        t / d,
        paired(&detached, &tcpdump)
    );
    for (label, median, rounds) in [
        (peers::FLOOR, f, &floor),
        (peers::TCX_FLOOR, x, &tcx_floor),
        (peers::CLASSIFY_FLOOR, c, &classify),
        (peers::MATCH_FLOOR, m, &matcher),
    ] {
        println!(
            "  {label} instead: median {median:.0}/s; ratio {:.3}; paired by round {:.3}",
            median / d,
            paired(&detached, rounds)
        );
    }
    println!(
        "  agent CPU per 10k queries/s: {:.3} cores; answers the client got: {answered_total}, \
         lookups the agent counted: {counted_total} (a lost query's id, reused after 65,536 \
         queries on the client's one socket, reads as a resend); losses: {}",
        median(&mut cpu_per_10k),
        if losses.is_empty() { "none" } else { &losses }
    );
    println!("  eBPF time per query: {costs}");
    let per_round = |v: &[f64]| -> String {
        v.iter()
            .map(|x| format!("{:.0}", x / 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  rounds (thousands/s): detached {}; attached {}; tcpdump {}; floor {}; TCX floor {}; \
         classifier {}; matcher {}",
        per_round(&detached),
        per_round(&attached),
        per_round(&tcpdump),
        per_round(&floor),
        per_round(&tcx_floor),
        per_round(&classify),
        per_round(&matcher)
    );
    let what = if name == FOUND {
        "answered"
    } else {
        "NXDOMAIN (failures)"
    };
    results::add(results::Row {
        scenario: format!(
            "dns: {window} lookup(s) in flight, {what}: queries/s with the agent / without"
        ),
        ours: results::against(a / d, 0.98),
        peers: format!(
            "{} {:.3}; {} {:.3}; {} {:.3}; {} {:.3}; tcpdump -i any udp port 53 {:.3}",
            peers::FLOOR,
            f / d,
            peers::TCX_FLOOR,
            x / d,
            peers::CLASSIFY_FLOOR,
            c / d,
            peers::MATCH_FLOOR,
            m / d,
            t / d
        ),
        goal: ">= 0.98".to_owned(),
        spread: format!(
            "detached {} ({}-{}), attached {} ({}-{}); paired by round: ours {:.3}, floor \
             {:.3}, classifier {:.3}, matcher {:.3}; agent {:.3} cores per 10k queries/s; answers \
             {answered_total}, lookups counted {counted_total}; losses: {}; eBPF time per \
             query {costs}",
            results::thousands(d),
            results::thousands(dmin),
            results::thousands(dmax),
            results::thousands(a),
            results::thousands(amin),
            results::thousands(amax),
            paired(&detached, &attached),
            paired(&detached, &floor),
            paired(&detached, &classify),
            paired(&detached, &matcher),
            median(&mut cpu_per_10k),
            if losses.is_empty() { "none" } else { &losses }
        ),
    });
    Ok(())
}

/// One more load with the kernel's run-time statistics on: the DNS programs' time per query
/// (all four packets of a lookup: query out, query in at the server, answer out, answer in),
/// and per program run; then the same for the classifier, empty and matcher floors, so the
/// agent's own time is read against theirs from the same run (run time is steadier than a
/// rate). `load` returns the queries it made.
fn dns_program_costs(
    node: &SimNode,
    client: usize,
    load: &dyn Fn(&SimNode) -> anyhow::Result<f64>,
) -> anyhow::Result<String> {
    let _stats = peers::BpfStats::enable()?;
    let mut agent = AgentProcess::start(node)?;
    agent.wait_ready(true, Duration::from_secs(20))?;
    let before = program_stats(&agent)?;
    let queries = load(node);
    let after = program_stats(&agent)?;
    agent.stop()?;
    let queries = queries?.max(1.0);
    let mut total = 0.0;
    let programs: Vec<String> = after
        .iter()
        .filter(|(name, _)| name.starts_with("dns_"))
        .map(|(name, (secs, runs))| {
            let (secs0, runs0) = before.get(name).copied().unwrap_or((0.0, 0.0));
            let (secs, runs) = (secs - secs0, runs - runs0);
            total += secs;
            format!(
                "{name} {:.0} ns x {:.2} per query",
                secs * 1e9 / runs.max(1.0),
                runs / queries
            )
        })
        .collect();
    let mut out = format!("{:.0} ns [{}]", total * 1e9 / queries, programs.join(", "));
    for (label, peer) in [
        ("classifier floor", peers::classify_floor()),
        ("empty floor", peers::floor()),
        ("matcher floor", peers::match_floor()),
    ] {
        let running = peer.start(node, client)?;
        let (ns0, _) = peers::bpf_run_stats(running.pid());
        let queries = load(node);
        let (ns1, _) = peers::bpf_run_stats(running.pid());
        running.stop()?;
        out.push_str(&format!(
            "; {label} {:.0} ns",
            ns1.saturating_sub(ns0) as f64 / queries?.max(1.0)
        ));
    }
    Ok(out)
}

/// Pods known only as metadata in the memory scenario, beside the node's real ones: 1,000 in
/// all (each with a container), as a busy node has.
const MEMORY_PODS: u64 = 1000;

/// Agent RSS with 1,000 pods of metadata and 100,000 records: one dropped UDP packet to each
/// of 50,000 ports is a record on the sender and one on the receiver.
fn memory(node: &mut SimNode, source: usize, sink: usize) -> anyhow::Result<()> {
    use triage_agent_tests::apiserver::{PodFixture, pod_object};

    let sink_ip = node.pod(sink).ip;
    node.nft_node(&format!(
        "table bridge bench_sweep {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {sink_ip} udp dport 10000-60000 drop\n }}\n}}\n"
    ))?;
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
    let result = memory_with(node, source, sink_ip, extra);
    for (name, _, _) in &names {
        node.api.delete_pod("bench-meta", name);
    }
    result
}

fn memory_with(
    node: &SimNode,
    source: usize,
    sink_ip: std::net::Ipv4Addr,
    extra: u64,
) -> anyhow::Result<()> {
    let mut agent = AgentProcess::start_with(
        node,
        &[
            "--store-capacity",
            "100000",
            "--store-pod-quota",
            "100000",
            "--store-namespace-quota",
            "100000",
        ],
    )?;
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
    println!("\nmemory: {pods} pods of metadata, {records} records in the store");
    println!(
        "  agent RSS {after:.1} MiB ({before:.1} MiB with the pods, before the records; goal \
         <= 64 MiB); {per_record:.0} bytes per record"
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
        goal: "<= 64 MiB".to_owned(),
        spread: format!(
            "{before:.1} MiB with the pods and no records; {per_record:.0} bytes per record; \
             bounded by --store-capacity (records) and the node's pods; losses: {losses}"
        ),
    });
    Ok(())
}

/// p-th percentile (0-100) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `Query` latency for one pod against a store of a million records, through the real gRPC
/// server and the CLI's client.
fn query_latency() -> anyhow::Result<()> {
    use std::sync::Arc;

    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;
    use triage_agent::{
        api::{self, AgentApi, AgentInfo, AgentState},
        attribute::{AttributorStats, MetaHealth},
        cli::client,
        evidence::{Filter, fixtures::refused},
        loss::Counters,
        store::{Store, StoreConfig},
    };

    let (pods, per_pod) = if quick() { (100, 100) } else { (1000, 1000) };
    let records = pods * per_pod;
    let mut config = StoreConfig::new("bench", records, Duration::from_secs(24 * 3600));
    config.pod_quota = per_pod;
    config.namespace_quota = records;
    let counters = Arc::new(Counters::default());
    let mut store = Store::new(config, counters.clone());
    let fill = Instant::now();
    // Recent, so the store task's retention sweep keeps them.
    let base = std::time::SystemTime::now() - Duration::from_secs(3600);
    for pod in 0..pods {
        let name = format!("pod-{pod}");
        let uid = format!("uid-{pod}");
        for r in 0..per_pod {
            store.record(
                refused()
                    .pod_uid("bench", &name, &uid)
                    .dst(&format!(
                        "10.{}.{}.{}:{}",
                        pod / 256,
                        pod % 256,
                        r % 250,
                        1000 + r
                    ))
                    .at_time(base + Duration::from_millis(r as u64))
                    .occurrence(),
            );
        }
    }
    let stats = store.stats();
    anyhow::ensure!(
        stats.records as usize == records,
        "store holds {}",
        stats.records
    );
    let fill = fill.elapsed();
    let direct = store
        .query(
            &Filter {
                namespace: Some("bench".into()),
                pod: Some(format!("pod-{}", pods / 2)),
                ..Filter::default()
            },
            usize::MAX,
        )
        .evidence
        .len();
    anyhow::ensure!(direct == per_pod, "the pod has {direct} records");
    let rt = tokio::runtime::Runtime::new()?;
    let (p50, p99, n, answer) = rt.block_on(async {
        let cancel = CancellationToken::new();
        let (handle, _occurrences, task) = triage_agent::store::spawn(store, cancel.clone());
        tokio::spawn(task);
        let state = AgentState {
            info: AgentInfo {
                node: "bench".into(),
                kernel: String::new(),
                started: std::time::SystemTime::now(),
            },
            store: handle,
            counters,
            probes: Arc::new(vec![]),
            meta: watch::channel(MetaHealth::default()).1,
            attribution: watch::channel(AttributorStats::default()).1,
            resources: None,
            persistence: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(api::serve(AgentApi::new(state), listener, cancel.clone()));
        let filter = Filter {
            namespace: Some("bench".into()),
            pod: Some(format!("pod-{}", pods / 2)),
            ..Filter::default()
        };
        let agents = [client::Target::Direct(url)];
        let mut times = Vec::new();
        let mut answer = 0;
        let queries = if quick() { 20 } else { 300 };
        for _ in 0..queries {
            let started = Instant::now();
            let mut out =
                client::query_each(&agents, &filter, Duration::from_secs(10), |_, _| {}).await;
            let a = out
                .pop()
                .context("no answer")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            answer = a.evidence.len();
        }
        cancel.cancel();
        times.sort_by(f64::total_cmp);
        anyhow::Ok((
            percentile(&times, 50.0),
            percentile(&times, 99.0),
            times.len(),
            answer,
        ))
    })?;
    println!(
        "\n| query: one pod's evidence, store of {records} records ({pods} pods), real gRPC server + CLI client | p50 | p99 | goal |\n| --- | --- | --- | --- |\n| {n} queries, {answer} records per answer (store filled in {:.1} s) | {p50:.1} ms | {p99:.1} ms | p99 < 50 ms |",
        fill.as_secs_f64()
    );
    results::add(results::Row {
        scenario: format!(
            "query: one pod's evidence from a store of {} records, real gRPC server",
            results::thousands(records as f64)
        ),
        ours: format!("p99 {p99:.1} ms"),
        peers: "-".to_owned(),
        goal: "p99 < 50 ms".to_owned(),
        spread: format!("p50 {p50:.1} ms over {n} queries of {answer} records"),
    });
    Ok(())
}

/// decode -> attribute -> store on one core, fed encoded kernel records.
fn pipeline() -> anyhow::Result<()> {
    use std::{collections::HashMap, sync::Arc};

    use triage_agent::{
        attribute::{
            Attributor, CgroupPaths, KernelNames, MetaUpdate, Now, PathLookup, TimedEvent,
            pods::PodInfo,
        },
        evidence::fixtures::pod_ref,
        loss::Counters,
        probes::decode::{RawEvent, decode, encode_flow},
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
            encode_flow(&FlowEvent {
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
                    ifindex: 2,
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
