//! The failure floods (drop, refusal): one simulated pod floods, as fast as one core allows,
//! UDP to a port a forward rule drops or connect() to a closed port; the sender's rate with the
//! agent attached divided by the rate without, the agent's CPU, RSS and ring buffer records per
//! event, that its count equals what the kernel counted, every loss counter, and the peers
//! ([`crate::peers`]) doing the same job in the same rounds. The drop flood runs once more with
//! an iperf3 stream between two other pods beside it.

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use triage_agent_tests::{
    agent::{AgentProcess, records},
    simnode::SimNode,
};

use crate::{
    measure::{
        IPERF3, cpu_and_rss, flood, flood_seconds, median, nonzero_losses, program_stats, rounds,
        spread,
    },
    peers, results,
};

pub struct Scenario<'a> {
    /// Name on the command line (`cargo xtask bench drop`).
    pub short: &'static str,
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

/// The TCP stream that runs beside the drop flood: iperf3 from `client` to an iperf3 server.
pub struct Stream {
    client: usize,
    server_ip: String,
}

impl Stream {
    /// Starts the stream's two pods on `node`, and the iperf3 server in one of them.
    pub fn start(node: &mut SimNode) -> anyhow::Result<Stream> {
        let server = node.add_pod("bench", "stream-server")?;
        let client = node.add_pod("bench", "stream-client")?;
        node.start_program(server, Path::new(IPERF3), &["-s", "-p", "5202"])?;
        Ok(Stream {
            client,
            server_ip: node.pod(server).ip.to_string(),
        })
    }

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

/// The drop flood (with `stream` beside it, when given) and the refusal flood, at the pod
/// `sink_ip`: its UDP port 7000 dropped by a forward rule, nothing listening on 7001.
pub fn scenarios(sink_ip: Ipv4Addr, stream: Option<&Stream>) -> [Scenario<'_>; 2] {
    [
        Scenario {
            short: "drop",
            name: "drop flood (UDP to a port a forward rule drops)",
            what: "flood-udp",
            kind: "packet_drop",
            unit: "pkt/s",
            dst: format!("{sink_ip}:7000"),
            goal: 0.93,
            peers: peers::of_drops(),
            stream,
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
    ]
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
pub fn run(node: &SimNode, source: usize, s: &Scenario<'_>) -> anyhow::Result<()> {
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

        let mut agent = crate::measure::start_agent(node, &[])?;
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
    let mut agent = crate::measure::start_agent(node, &[])?;
    agent.wait_ready(true, Duration::from_secs(20))?;
    let before = program_stats(&agent)?;
    let ours = per_event(agent.pid().context("agent pid")?, &flood_once);
    let after = program_stats(&agent)?;
    agent.stop()?;
    let ours = ours?;
    // Which of the agent's programs the events ran, and what each cost per run.
    let programs: Vec<String> = crate::measure::programs_run(&before, &after)
        .iter()
        .map(|(name, ns, runs)| format!("{name} {ns:.0} ns x {}", results::thousands(*runs)))
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

/// The count the agent reports for the source pod's outbound records of `kind`.
fn counted(agent: &AgentProcess, kind: &str) -> anyhow::Result<u64> {
    let v = agent.query("bench", "source")?;
    Ok(records(&v, kind, "outbound")
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum())
}
