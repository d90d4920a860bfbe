//! What every scenario measures with: the run's settings (`--quick`, rounds, flood length),
//! the workload's floods, a process's CPU time and RSS, the agent's loss counters and its
//! programs' run-time statistics, and the statistics of rounds (median, spread, percentiles).

use anyhow::Context as _;
use triage_agent_tests::{agent::AgentProcess, simnode::SimNode};

/// Rounds of each configuration (2 with `--quick`).
pub fn rounds() -> usize {
    if quick() { 2 } else { 10 }
}

/// The agent as the DaemonSet runs it on a kubelet node: with kubelet's cgroup root, so its
/// cgroup_skb programs hang on the pods' cgroup (`extra`: more flags).
pub fn start_agent(node: &SimNode, extra: &[&str]) -> anyhow::Result<AgentProcess> {
    let root = format!("/{}", node.cgroup_base().display());
    let mut flags = vec!["--kubelet-cgroup-root", &root];
    flags.extend_from_slice(extra);
    AgentProcess::start_with(node, &flags)
}

/// Length of one flood.
pub fn flood_seconds() -> f64 {
    if quick() { 0.5 } else { 2.0 }
}

/// `--quick`: every scenario, reduced.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// (events, seconds) the workload reported.
pub fn flood(node: &SimNode, pod: usize, what: &str, dst: &str) -> anyhow::Result<f64> {
    let out = node.run(pod, &[what, dst, &flood_seconds().to_string()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let n: f64 = parts.next().context("no count")?.parse()?;
    let secs: f64 = parts.next().context("no time")?.parse()?;
    Ok(n / secs)
}

/// utime + stime of a process, in seconds, and its RSS in MiB.
pub fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
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
pub fn nonzero_losses(status: &serde_json::Value) -> Option<String> {
    let nonzero: Vec<String> = status["loss"]
        .as_object()?
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    (!nonzero.is_empty()).then(|| nonzero.join(" "))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// This process's CPU time (user + system), seconds.
pub fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The agent's per-program run time (seconds) and runs, from its /metrics, read after the
/// snapshot's lag (at most a second), so what ran just before is in it.
pub fn program_stats(
    agent: &AgentProcess,
) -> anyhow::Result<std::collections::BTreeMap<String, (f64, f64)>> {
    std::thread::sleep(std::time::Duration::from_millis(1100));
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

/// The programs that ran between two [`program_stats`] readings: name, ns per run, runs.
pub fn programs_run(
    before: &std::collections::BTreeMap<String, (f64, f64)>,
    after: &std::collections::BTreeMap<String, (f64, f64)>,
) -> Vec<(String, f64, f64)> {
    after
        .iter()
        .filter_map(|(name, (secs, runs))| {
            let (secs0, runs0) = before.get(name).copied().unwrap_or((0.0, 0.0));
            let runs = runs - runs0;
            (runs > 0.0).then(|| (name.clone(), (secs - secs0) * 1e9 / runs, runs))
        })
        .collect()
}

/// p-th percentile (0-100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub const IPERF3: &str = "/usr/bin/iperf3";
