//! The kernel matrix check (`vm-check`): on one machine (a minimal VM of some kernel, or this
//! host) it builds a simulated node, starts the real agent, provokes each signal in turn and
//! judges each by the agent's own answer (`query -o json`, `status -o json`). Everything it
//! reports is one `TA-MATRIX <json>` line on stdout, which the VM runner collects from the
//! serial console:
//!
//! - `{"kernel": "<uname -r>"}` first, then `{"doctor": <doctor -o json or null>, "error": ...}`,
//! - `{"status": <status -o json>}` once the agent is ready,
//! - one `{"signal", "result": works|degraded|fails, "detail", "seconds"}` per cell ([`Cell`]),
//! - `{"done": true, "cells": N, "seconds": T}` last, when every cell ran,
//! - or `{"error": "..."}` when the harness itself broke (no agent, no simulated node).
//!
//! Running the cells lives in [`cells`], provoking in [`provoke`], judging in [`judge`]. The
//! agent gets the stand-in API server's plain-HTTP kubeconfig as is: with no CA bundle in the
//! guest (as in the FROM-scratch image) it must still start.

mod cells;
mod judge;
mod provoke;

use std::{
    fmt,
    path::PathBuf,
    process::{Command, Output, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use crate::{
    agent::AgentProcess,
    simnode::{CgroupDriver, PodRuntime, SimConfig, SimNode},
};

/// What a run is given.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `triage-agent` binary (agent and CLI).
    pub agent_bin: PathBuf,
    /// The `sim-workload` binary pod processes run.
    pub workload: PathBuf,
    /// Every wait is multiplied by this (software emulation is ~20x slower).
    pub timeout_scale: f64,
    /// The cells to run, in [`Cell::ALL`] order (all when empty).
    pub only: Vec<Cell>,
}

/// One signal of the agent, checked end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    RefusedOutbound,
    RefusedInbound,
    ConnectTimeout,
    PacketDrop,
    DnsNxdomain,
    DnsTimeout,
    OomKill,
    CpuThrottling,
}

impl Cell {
    pub const ALL: [Cell; 8] = [
        Cell::RefusedOutbound,
        Cell::RefusedInbound,
        Cell::ConnectTimeout,
        Cell::PacketDrop,
        Cell::DnsNxdomain,
        Cell::DnsTimeout,
        Cell::OomKill,
        Cell::CpuThrottling,
    ];

    /// The cell's name in `TA-MATRIX` lines and `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Cell::RefusedOutbound => "refused_outbound",
            Cell::RefusedInbound => "refused_inbound",
            Cell::ConnectTimeout => "connect_timeout",
            Cell::PacketDrop => "packet_drop",
            Cell::DnsNxdomain => "dns_nxdomain",
            Cell::DnsTimeout => "dns_timeout",
            Cell::OomKill => "oom_kill",
            Cell::CpuThrottling => "cpu_throttling",
        }
    }

    /// The evidence kind (and `status` signal) the cell is judged by.
    pub fn kind(self) -> &'static str {
        match self {
            Cell::RefusedOutbound | Cell::RefusedInbound => "connection_refused",
            Cell::ConnectTimeout => "connection_timeout",
            Cell::PacketDrop => "packet_drop",
            Cell::DnsNxdomain | Cell::DnsTimeout => "dns",
            Cell::OomKill => "oom_kill",
            Cell::CpuThrottling => "cpu_throttling",
        }
    }

    /// The agent's kernel programs this cell's evidence comes from (none: cgroupfs sampling).
    pub fn probes(self) -> &'static [&'static str] {
        match self {
            Cell::RefusedOutbound => &["inet_sock_set_state", "tcp_receive_reset"],
            Cell::RefusedInbound => &["tcp_send_reset"],
            Cell::ConnectTimeout => &["inet_sock_set_state", "tcp_retransmit_skb"],
            Cell::PacketDrop => &["kfree_skb"],
            Cell::DnsNxdomain | Cell::DnsTimeout => &["dns_egress", "dns_ingress"],
            Cell::OomKill => &["mark_victim"],
            Cell::CpuThrottling => &[],
        }
    }

    /// The probes without which the cell can get no evidence at all (the others only enrich
    /// it: SYN retransmission counts, the OOM victim over the cgroup's counter).
    pub fn needs(self) -> &'static [&'static str] {
        match self {
            Cell::RefusedOutbound => &["inet_sock_set_state", "tcp_receive_reset"],
            Cell::RefusedInbound => &["tcp_send_reset"],
            Cell::ConnectTimeout => &["inet_sock_set_state"],
            Cell::PacketDrop => &["kfree_skb"],
            Cell::DnsNxdomain | Cell::DnsTimeout => &["dns_egress", "dns_ingress"],
            Cell::OomKill | Cell::CpuThrottling => &[],
        }
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Cell {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cell::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Cell::ALL.iter().map(|c| c.name()).collect();
                format!("unknown signal {s:?} (one of {})", names.join(", "))
            })
    }
}

/// A cell's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The evidence came in full.
    Works,
    /// The evidence came in its documented reduced form, or the agent says why it is reduced.
    Degraded,
    /// No (or wrong) evidence within the timeout.
    Fails,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Works => "works",
            Verdict::Degraded => "degraded",
            Verdict::Fails => "fails",
        }
    }
}

/// One cell's line.
#[derive(Clone, Debug)]
pub struct CellResult {
    pub cell: Cell,
    pub verdict: Verdict,
    pub detail: String,
    pub seconds: f64,
}

impl CellResult {
    /// The `TA-MATRIX` line, keys in a fixed order.
    pub fn line(&self) -> String {
        format!(
            "TA-MATRIX {{\"signal\":{},\"result\":{},\"detail\":{},\"seconds\":{}}}",
            Value::from(self.cell.name()),
            Value::from(self.verdict.as_str()),
            Value::from(self.detail.as_str()),
            Value::from((self.seconds * 1000.0).round() / 1000.0),
        )
    }
}

/// Prints one `TA-MATRIX` line (stdout is line-buffered: each line leaves whole).
fn emit(v: &Value) {
    println!("TA-MATRIX {v}");
}

/// Waits scaled for the machine's speed.
#[derive(Clone, Copy, Debug)]
pub struct Scale(pub f64);

impl Scale {
    /// `secs` of this host, on this machine.
    pub fn secs(self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.0.max(0.01))
    }

    /// Between two polls of the agent: each poll starts a CLI process, which costs a slow
    /// machine's single CPU more than the agent's own work.
    pub fn poll(self) -> Duration {
        Duration::from_secs_f64((0.2 * self.0).clamp(0.2, 3.0))
    }
}

/// The release of the running kernel (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Runs the whole matrix. An error means the harness broke (its `{"error"}` line is printed
/// by the caller); a failing cell is a result, not an error.
pub fn run(opts: &Options) -> anyhow::Result<Vec<CellResult>> {
    let started = Instant::now();
    let scale = Scale(opts.timeout_scale);
    let kernel = kernel_release();
    emit(&json!({ "kernel": kernel }));
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "vm-check needs root (network namespaces, cgroups, eBPF)"
    );
    ensure!(
        opts.agent_bin.is_file(),
        "agent binary {} missing (--agent-bin, TRIAGE_AGENT_BIN)",
        opts.agent_bin.display()
    );
    ensure!(
        opts.workload.is_file(),
        "workload binary {} missing (--workload)",
        opts.workload.display()
    );
    doctor(&opts.agent_bin, scale);
    prepare_machine()?;

    let node = SimNode::start(SimConfig {
        workload: opts.workload.clone(),
        driver: CgroupDriver::Cgroupfs,
        runtime: PodRuntime::HandMade,
    })
    .context("starting the simulated node")?;
    let mut agent = start_agent(&opts.agent_bin, &node, scale)?;
    let status = agent.cli(&["status", "-o", "json"])?;
    let status: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
    emit(&json!({ "status": status }));

    let cells: Vec<Cell> = Cell::ALL
        .into_iter()
        .filter(|c| opts.only.is_empty() || opts.only.contains(c))
        .collect();
    let mut ctx = cells::Ctx::new(node, &agent, scale, &kernel);
    let mut results = Vec::new();
    for group in cells::GROUPS {
        let wanted: Vec<Cell> = group
            .cells()
            .iter()
            .copied()
            .filter(|c| cells.contains(c))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        for r in ctx.run_group(*group, &wanted) {
            println!("{}", r.line());
            results.push(r);
        }
    }
    if results.iter().any(|r| r.verdict != Verdict::Works) {
        // For whoever reads the console; the result lines already say what was seen.
        for line in log_tail(&agent, 40).lines() {
            eprintln!("[agent] {line}");
        }
    }
    drop(ctx);
    if let Err(e) = agent.stop() {
        eprintln!("vm-check: stopping the agent: {e:#}");
    }
    emit(&json!({
        "done": true,
        "cells": results.len(),
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    }));
    Ok(results)
}

/// `triage-agent doctor -o json`, printed whatever happens: its JSON (also when it exits
/// non-zero to say something is wrong) or null, and its error.
fn doctor(bin: &std::path::Path, scale: Scale) {
    let mut cmd = Command::new(bin);
    cmd.args(["doctor", "-o", "json"]);
    let (doctor, error) = match output_within(cmd, scale.secs(60.0)) {
        Ok(out) => {
            let json: Option<Value> = serde_json::from_slice(&out.stdout).ok();
            let error = (!out.status.success()).then(|| {
                format!(
                    "doctor exited with {}: {}",
                    out.status,
                    short(String::from_utf8_lossy(&out.stderr).trim(), 600)
                )
            });
            (json.unwrap_or(Value::Null), error)
        }
        Err(e) => (Value::Null, Some(format!("{e:#}"))),
    };
    emit(&json!({ "doctor": doctor, "error": error }));
}

/// What a minimal VM may lack and the simulated node needs: loopback up (the stand-in API
/// server and the agent listen on 127.0.0.1), /run (for /run/netns) and the temp directory.
fn prepare_machine() -> anyhow::Result<()> {
    std::fs::create_dir_all("/run").context("creating /run")?;
    let tmp = std::env::temp_dir();
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let flags = std::fs::read_to_string("/sys/class/net/lo/flags").unwrap_or_default();
    let up =
        u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).is_ok_and(|f| f & 1 == 1);
    if !up {
        let out = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .output()
            .context("running ip (iproute2)")?;
        ensure!(
            out.status.success(),
            "ip link set lo up: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The agent for `node`, ready: Status answers and the pod metadata is in sync.
fn start_agent(
    bin: &std::path::Path,
    node: &SimNode,
    scale: Scale,
) -> anyhow::Result<AgentProcess> {
    let root = format!("/{}", node.cgroup_base().display());
    let mut agent = AgentProcess::start_binary(
        bin.to_path_buf(),
        node,
        &node.name,
        &[
            "--kubelet-cgroup-root",
            &root,
            // Sampling often and reporting any throttled period keeps the waits short.
            "--sample-interval",
            "1s",
            "--throttle-threshold",
            "1",
        ],
        &[],
    )?;
    agent.set_cli_timeout(scale.secs(5.0));
    let timeout = scale.secs(30.0);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = agent.exited()? {
            bail!("the agent exited with {status}:\n{}", log_tail(&agent, 40));
        }
        let last = match agent.status() {
            Ok(s) if s["metadata"]["synced"] == true => return Ok(agent),
            Ok(s) => format!("metadata not in sync: {}", s["metadata"]),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "the agent was not ready after {timeout:?} ({}):\n{}",
                short(&last, 400),
                log_tail(&agent, 40)
            );
        }
        std::thread::sleep(scale.poll());
    }
}

/// The last `n` lines of the agent's log.
fn log_tail(agent: &AgentProcess, n: usize) -> String {
    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with its output captured, killing it after `timeout`.
pub fn output_within(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the command")?;
    let pid = i32::try_from(child.id())?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // SAFETY: kill(2) on our own child, not yet reaped (the waiting thread still waits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            bail!("no answer within {timeout:?} (killed)")
        }
    }
}

/// `s` cut to about `max` bytes (on a character boundary), marked when cut.
pub fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
