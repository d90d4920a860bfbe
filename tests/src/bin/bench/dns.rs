//! The DNS scenarios: queries per second through the simulated cluster DNS (dnsmasq behind a
//! Service VIP, 32 queries in flight from a pod, for a name that exists and for one answered
//! NXDOMAIN; then one at a time, the latency each lookup gains) with no agent, with the agent
//! attached, with `tcpdump` capturing the same traffic instead, and with the candidate hooks'
//! floors and the least a DNS capture or an exact matcher there does ([`crate::peers`]); the
//! agent's CPU per 10k queries/s, that it lost nothing, and the DNS programs' time per query.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use triage_agent_tests::simnode::SimNode;

use crate::{
    measure::{cpu_and_rss, median, nonzero_losses, program_stats, quick, rounds, spread},
    peers, results,
};

/// What of the DNS scenario runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The floods, then one lookup at a time (`bench dns`).
    All,
    /// One lookup at a time (`bench dns-latency`).
    Latency,
    /// The eBPF time per query only (`bench dns-cost`).
    Costs,
}

/// DNS queries/s through the simulated resolver: detached, agent attached, tcpdump instead.
/// The DNS scenarios ([`Part`]): flat out (answered, then NXDOMAIN), and one lookup at a
/// time.
pub fn run(node: &mut SimNode, part: Part) -> anyhow::Result<()> {
    let record = format!(
        "--host-record=db.bench.svc.cluster.local,{}",
        node.node_ip()
    );
    node.add_dns_server("coredns", DNS_VIP, &["--local=/cluster.local/", &record])?;
    let client = node.add_pod("bench", "resolver")?;
    node.set_cluster_dns(client, DNS_VIP, "")?;
    if part == Part::Costs {
        return dns_costs(node, client);
    }
    if part == Part::All {
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

/// The median of each round's own ratio `x[i] / base[i]`: a configuration against the
/// detached load of the same round, seconds apart, so that a slow drift of the machine's speed
/// over the run (other guests on the host) weighs less than in a ratio of medians.
fn paired(base: &[f64], x: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = base.iter().zip(x).map(|(b, x)| x / b).collect();
    median(&mut ratios)
}

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

        let mut agent = crate::measure::start_agent(node, &[])?;
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
    let mut agent = crate::measure::start_agent(node, &[])?;
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
