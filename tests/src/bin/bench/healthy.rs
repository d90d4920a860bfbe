//! The healthy-traffic scenario, the cost every user pays all day: between two pods, TCP
//! throughput (iperf3), the TCP connection rate, and small UDP requests and responses (one and
//! 32 in flight, the traffic that pays per-packet hooks the most), each with no agent, with the
//! agent attached and with the floor (empty programs at every hook the agent uses, where it
//! uses them) and detached again (a control: what the machine's noise alone makes of no cost),
//! interleaved round by round, each configuration first in turn; and the same UDP requests
//! between two processes of the node outside every pod (node daemons: kubelet, the runtime,
//! etcd), which the agent must not cost anything, its cgroup_skb programs hanging on the pods'
//! cgroup only.
//!
//! Each row has the ratio of medians and the median of the paired (same round) ratios, the
//! floor's and the control's ratios beside it, and the eBPF run time per connection or per
//! packet, from one more pass with the kernel's run-time statistics on (the agent's programs
//! and the floor's), with the agent's CPU and ring records meanwhile. A last row gives the
//! agent's CPU and wakeups on the node with no traffic.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use triage_agent_tests::simnode::SimNode;

use crate::{
    measure::{
        IPERF3, cpu_and_rss, flood_seconds, median, program_stats, programs_run, quick, rounds,
        spread,
    },
    peers::{self, BpfStats, FLOOR},
    results,
};

/// What a workload did: operations (bits, connections, responses) and seconds.
type Done = (f64, f64);

/// Runs a workload once on the node.
type Runner<'a> = Box<dyn Fn(&SimNode) -> anyhow::Result<Done> + 'a>;

struct Workload<'a> {
    name: &'static str,
    /// What an operation is, for the per-operation eBPF time ("connection", "packet", ...).
    per: &'static str,
    /// Packets (or connections) per operation, for the eBPF time per `per`.
    units_per_op: f64,
    /// Node processes, not pods: the agent's ratio must be 1.000.
    host: bool,
    run: Runner<'a>,
}

/// Runs a command and reads "COUNT SECONDS" from its output.
fn count_and_seconds(out: &std::process::Output) -> anyhow::Result<Done> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let n: f64 = parts.next().context("no count")?.parse()?;
    let secs: f64 = parts.next().context("no time")?.parse()?;
    Ok((n, secs))
}

/// A process of the node (its network namespace, the bench's own cgroup: no pod's).
fn in_node(node: &SimNode, workload: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.node_netns()])
        .arg(workload)
        .args(args);
    cmd
}

/// The control row beside each ratio: the detached configuration run again in the same rounds.
const AGAIN: &str = "detached again (this machine's noise: no cost at all)";

/// Kills the node's echo server when the scenario ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lets a freshly started agent finish what it does once at start (the first cgroup walk and
/// sweep, the pod list), so the attached rounds measure what it costs all day.
fn settle() {
    std::thread::sleep(Duration::from_millis(if quick() { 500 } else { 2000 }));
}

/// `connections_only`: the connection rate alone (`bench healthy-connections`), to compare
/// builds on the workload with the most program runs per operation.
pub fn run(node: &mut SimNode, connections_only: bool) -> anyhow::Result<()> {
    let server = node.add_pod("bench", "iperf-server")?;
    let client = node.add_pod("bench", "iperf-client")?;
    let server_ip = node.pod(server).ip.to_string();
    let iperf3 = Path::new(IPERF3);
    node.start_program(server, iperf3, &["-s", "-p", "5201"])?;
    node.start_process(server, &["listen", "7100"])?;
    node.start_process(server, &["udp-echo", "7200"])?;
    let workload = crate::sibling("sim-workload")?;
    let _host_echo = Reaped(
        in_node(node, &workload, &["udp-echo", "7201"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting a UDP echo server in the node's namespace")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let seconds = flood_seconds().to_string();
    let iperf_seconds = if quick() { "1" } else { "2" };
    let udp = format!("{server_ip}:7200");
    let host_udp = format!("{}:7201", node.node_ip());
    let mut workloads = vec![
        Workload {
            name: "TCP throughput (iperf3, bits/s)",
            per: "MiB",
            // Operations are bits: the eBPF time is given per MiB.
            units_per_op: 1.0 / (8.0 * 1024.0 * 1024.0),
            host: false,
            run: Box::new(|node| {
                let out = node.run_program(
                    client,
                    iperf3,
                    &["-c", &server_ip, "-p", "5201", "-t", iperf_seconds, "-J"],
                )?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let end = &v["end"]["sum_received"];
                let bits = end["bytes"].as_f64().context("iperf3 reported no bytes")? * 8.0;
                let secs = end["seconds"].as_f64().context("iperf3 reported no time")?;
                Ok((bits, secs))
            }),
        },
        Workload {
            name: "TCP connections/s (connect, server closes, close)",
            per: "connection",
            units_per_op: 1.0,
            host: false,
            run: Box::new(|node| {
                count_and_seconds(&node.run(
                    client,
                    &["connect-rate", &format!("{server_ip}:7100"), &seconds],
                )?)
            }),
        },
        Workload {
            name: "UDP requests/s, 1 in flight (64 bytes, echoed)",
            per: "packet",
            units_per_op: 2.0,
            host: false,
            run: Box::new(|node| {
                count_and_seconds(&node.run(client, &["udp-rr", &udp, &seconds, "1"])?)
            }),
        },
        Workload {
            name: "UDP requests/s, 32 in flight (64 bytes, echoed)",
            per: "packet",
            units_per_op: 2.0,
            host: false,
            run: Box::new(|node| {
                count_and_seconds(&node.run(client, &["udp-rr", &udp, &seconds, "32"])?)
            }),
        },
        Workload {
            name: "node processes outside every pod: UDP requests/s, 32 in flight",
            per: "packet",
            units_per_op: 2.0,
            host: true,
            run: Box::new(|node| {
                let out = in_node(node, &workload, &["udp-rr", &host_udp, &seconds, "32"])
                    .output()
                    .context("running a UDP client in the node's namespace")?;
                anyhow::ensure!(out.status.success(), "udp-rr in the node failed: {out:?}");
                count_and_seconds(&out)
            }),
        },
    ];
    if connections_only {
        workloads.retain(|w| w.per == "connection");
    }
    let floor = peers::floor();
    // Per workload: rates detached, attached, with the floor, and detached again (the same
    // configuration as the first: their ratio is what this machine's noise alone makes of
    // a cost of zero, in the same rounds).
    let mut rates: Vec<[Vec<f64>; 4]> = workloads.iter().map(|_| Default::default()).collect();
    let all = |node: &SimNode, rates: &mut Vec<[Vec<f64>; 4]>, config: usize| {
        for (w, r) in workloads.iter().zip(rates.iter_mut()) {
            let (n, secs) = (w.run)(node)?;
            if let Some(v) = r.get_mut(config) {
                v.push(n / secs);
            }
        }
        anyhow::Ok(())
    };
    // The order of the four turns each round, so none of them always runs first after the
    // agent's start (or the floor's) or right after its exit.
    for round in 0..rounds() {
        for config in (0..4).map(|c| (c + round) % 4) {
            match config {
                0 => all(node, &mut rates, 0)?,
                3 => all(node, &mut rates, 3)?,
                1 => {
                    let mut agent = crate::measure::start_agent(node, &[])?;
                    agent.wait_ready(true, Duration::from_secs(20))?;
                    settle();
                    all(node, &mut rates, 1)?;
                    agent.stop()?;
                }
                _ => {
                    let held = floor.start(node, client)?;
                    all(node, &mut rates, 2)?;
                    held.stop()?;
                }
            }
        }
    }

    // One more pass of each workload with the kernel's run-time statistics on: eBPF time per
    // operation, the agent's and the floor's.
    let mut ours_ns = Vec::new();
    let mut floor_ns = Vec::new();
    let mut breakdown = Vec::new();
    let idle_cost;
    {
        let _stats = BpfStats::enable()?;
        let mut agent = crate::measure::start_agent(node, &[])?;
        agent.wait_ready(true, Duration::from_secs(20))?;
        settle();
        let pid = agent.pid().context("agent pid")?;
        idle_cost = idle(pid)?;
        for w in &workloads {
            let before = program_stats(&agent)?;
            let received0 = agent.status()?["events_received"].as_u64().unwrap_or(0);
            let (cpu0, _) = cpu_and_rss(pid)?;
            // The total from the programs' descriptors, as for the floor.
            let (ns0, _) = peers::bpf_run_stats(pid);
            let started = Instant::now();
            let (n, _) = (w.run)(node)?;
            let elapsed = started.elapsed().as_secs_f64();
            let (ns1, _) = peers::bpf_run_stats(pid);
            let (cpu1, _) = cpu_and_rss(pid)?;
            let after = program_stats(&agent)?;
            let received = agent.status()?["events_received"].as_u64().unwrap_or(0) - received0;
            let units = (n * w.units_per_op).max(1.0);
            ours_ns.push(ns1.saturating_sub(ns0) as f64 / units);
            // Which programs ran, what each cost per run and how often per unit; what the
            // agent's own threads spent meanwhile and how many ring records woke them.
            breakdown.push(format!(
                "{}; agent {:.3} cores, {:.5} ring records per {}",
                programs_run(&before, &after)
                    .iter()
                    .map(|(name, ns, runs)| format!("{name} {ns:.0} ns x {:.2}", runs / units))
                    .collect::<Vec<_>>()
                    .join(", "),
                (cpu1 - cpu0) / elapsed,
                received as f64 / units,
                w.per
            ));
        }
        agent.stop()?;
        let held = floor.start(node, client)?;
        for w in &workloads {
            let (ns0, _) = peers::bpf_run_stats(held.pid());
            let (n, _) = (w.run)(node)?;
            let (ns1, _) = peers::bpf_run_stats(held.pid());
            floor_ns.push(ns1.saturating_sub(ns0) as f64 / (n * w.units_per_op).max(1.0));
        }
        held.stop()?;
    }

    println!(
        "\nhealthy traffic ({} rounds, interleaved: detached, attached, floor, detached \
         again, in turn first)",
        rounds()
    );
    for (i, (w, [detached, attached, floored, again])) in workloads.iter().zip(&rates).enumerate() {
        let d = median(&mut detached.clone());
        let a = median(&mut attached.clone());
        let f = median(&mut floored.clone());
        let paired = |with: &[f64]| {
            median(
                &mut with
                    .iter()
                    .zip(detached)
                    .map(|(x, d)| x / d)
                    .collect::<Vec<_>>(),
            )
        };
        let (ratio, floor_ratio) = (a / d, f / d);
        let (paired_ours, paired_floor) = (paired(attached), paired(floored));
        let noise = median(&mut again.clone()) / d;
        let paired_noise = paired(again);
        let goal = if w.host {
            "1.000 (no program runs for them)".to_owned()
        } else {
            ">= 0.99 and within 0.005 of the floor".to_owned()
        };
        let met = if w.host {
            ratio >= 0.995
        } else {
            ratio >= 0.99 && ratio >= floor_ratio - 0.005
        };
        let ns = |v: &[f64]| v.get(i).copied().unwrap_or(f64::NAN);
        println!(
            "  {}: ratio {ratio:.3} (paired {paired_ours:.3}), floor {floor_ratio:.3} (paired \
             {paired_floor:.3}), detached again {noise:.3} (paired {paired_noise:.3}); eBPF \
             {:.0} ns per {} (floor {:.0} ns){}",
            w.name,
            ns(&ours_ns),
            w.per,
            ns(&floor_ns),
            if met { "" } else { "  BELOW GOAL" }
        );
        let unit = |v: f64| results::thousands(v);
        let (dmin, dmax) = spread(detached);
        let (amin, amax) = spread(attached);
        results::add(results::Row {
            scenario: format!("healthy traffic: {}", w.name),
            ours: format!(
                "{ratio:.3}{} (paired {paired_ours:.3}); eBPF {:.0} ns per {} [{}]",
                if met { "" } else { " (below goal)" },
                ns(&ours_ns),
                w.per,
                breakdown.get(i).map_or("", String::as_str)
            ),
            peers: format!(
                "{FLOOR} {floor_ratio:.3} (paired {paired_floor:.3}); eBPF {:.0} ns per {}; \
                 {AGAIN} {noise:.3} (paired {paired_noise:.3})",
                ns(&floor_ns),
                w.per
            ),
            goal,
            spread: format!(
                "detached {} ({}-{}), attached {} ({}-{}), floor {}",
                unit(d),
                unit(dmin),
                unit(dmax),
                unit(a),
                unit(amin),
                unit(amax),
                unit(f)
            ),
        });
    }
    let (cores, wakeups) = idle_cost;
    println!("  the agent on an idle node: {cores:.4} cores, {wakeups:.0} wakeups/s");
    results::add(results::Row {
        scenario: "healthy traffic: the agent on an idle node (no traffic)".to_owned(),
        ours: format!("{cores:.4} cores, {wakeups:.0} wakeups/s"),
        peers: "-".to_owned(),
        goal: "-".to_owned(),
        spread: format!(
            "over {} s after the start settled; wakeups are its threads' context switches",
            if quick() { 2 } else { 10 }
        ),
    });
    Ok(())
}

/// What the agent spends on a node with no traffic: cores and wakeups per second (its
/// threads' context switches) over a few seconds.
fn idle(pid: u32) -> anyhow::Result<(f64, f64)> {
    // Context switches over the agent's threads (a thread that ended meanwhile is skipped).
    let switches = || -> anyhow::Result<f64> {
        let mut n = 0.0;
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let Ok(status) = std::fs::read_to_string(t?.path().join("status")) else {
                continue;
            };
            n += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .sum::<f64>();
        }
        Ok(n)
    };
    let secs = if quick() { 2.0 } else { 10.0 };
    let ((cpu0, _), switches0) = (cpu_and_rss(pid)?, switches()?);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let ((cpu1, _), switches1) = (cpu_and_rss(pid)?, switches()?);
    Ok(((cpu1 - cpu0) / secs, (switches1 - switches0) / secs))
}
