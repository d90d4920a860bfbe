//! Running the cells: each [`Group`] is provoked (see [`super::provoke`]), then the agent is
//! polled until each cell's evidence comes or the scaled timeout passes, and judged. Cells that
//! share one provocation form a group: one refusal is seen from both ends, one dropped SYN is
//! both a timeout and a drop. Each group makes its own pods (namespace [`NS`]) and removes
//! them when judged.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde_json::Value;

use super::{
    Cell, CellResult, Scale,
    judge::{Seen, agent_note, missing_probe, summary, verdict},
    short,
};
use crate::{agent::AgentProcess, simnode::SimNode};

/// The namespace of every pod the matrix makes.
pub(super) const NS: &str = "matrix";
/// How long evidence that is there but not in full is given to become full (at most 10 s
/// however slow the machine: the agent's pipeline has had the first form's time already).
const GRACE_SECS: f64 = 2.0;

/// Cells judged from one provocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Refused,
    Blackhole,
    DnsNxdomain,
    DnsTimeout,
    Oom,
    Cpu,
}

/// Every group, in the order they run.
pub const GROUPS: &[Group] = &[
    Group::Refused,
    Group::Blackhole,
    Group::DnsNxdomain,
    Group::DnsTimeout,
    Group::Oom,
    Group::Cpu,
];

impl Group {
    pub fn cells(self) -> &'static [Cell] {
        match self {
            Group::Refused => &[Cell::RefusedOutbound, Cell::RefusedInbound],
            Group::Blackhole => &[Cell::ConnectTimeout, Cell::PacketDrop],
            Group::DnsNxdomain => &[Cell::DnsNxdomain],
            Group::DnsTimeout => &[Cell::DnsTimeout],
            Group::Oom => &[Cell::OomKill],
            Group::Cpu => &[Cell::CpuThrottling],
        }
    }
}

/// One cell's check: the pod to ask, what is expected, and what of an answer is evidence.
pub(super) struct Check {
    cell: Cell,
    pod: String,
    expected: String,
    judge: Box<dyn Fn(&Value) -> Seen>,
}

impl Check {
    pub(super) fn new(
        cell: Cell,
        pod: &str,
        expected: String,
        judge: impl Fn(&Value) -> Seen + 'static,
    ) -> Self {
        Check {
            cell,
            pod: pod.to_owned(),
            expected,
            judge: Box::new(judge),
        }
    }
}

/// A check being polled.
struct Watched {
    check: Check,
    /// The best seen so far.
    seen: Seen,
    /// When evidence short of full was first seen (it gets [`GRACE_SECS`] to become full).
    first_partial: Option<Instant>,
    /// Seconds from the group's start to the verdict's evidence.
    settled: Option<f64>,
    /// A probe the cell needs is not attached.
    hopeless: bool,
    /// The agent said at the start that this signal is degraded: its reduced form is the
    /// answer, not a step on the way to the full one.
    reduced_expected: bool,
    polls: u32,
}

impl Watched {
    /// Asks the agent once and keeps what its answer shows.
    fn poll(&mut self, agent: &AgentProcess, now: Instant, grace: Duration, started: Instant) {
        self.polls += 1;
        match agent.query(NS, &self.check.pod) {
            Ok(answer) => match (self.check.judge)(&answer) {
                Seen::Nothing(_) => self.seen = Seen::Nothing(summary(&answer)),
                full @ Seen::Full(_) => {
                    self.seen = full;
                    self.settled = Some(started.elapsed().as_secs_f64());
                }
                partial => {
                    let since = *self.first_partial.get_or_insert(now);
                    let expected = self.reduced_expected && matches!(partial, Seen::Reduced(_));
                    self.seen = partial;
                    if expected || now >= since + grace {
                        self.settled = Some(started.elapsed().as_secs_f64());
                    }
                }
            },
            Err(e) => {
                if matches!(self.seen, Seen::Nothing(_)) {
                    self.seen =
                        Seen::Nothing(format!("query failed: {}", short(&format!("{e:#}"), 300)));
                }
            }
        }
    }
}

/// A provoked group: its checks, how long (unscaled) the evidence may take, and what the
/// workload itself saw.
pub(super) struct Provoked {
    pub(super) checks: Vec<Check>,
    pub(super) wait_secs: f64,
    pub(super) workload: String,
}

/// The running matrix: the node, the agent, and what the current group made.
pub struct Ctx<'a> {
    pub(super) node: SimNode,
    agent: &'a AgentProcess,
    pub(super) scale: Scale,
    kernel: String,
    /// The cluster DNS pod, once started (shared by the DNS groups).
    pub(super) dns: Option<usize>,
    group_pods: Vec<usize>,
    /// Processes a provocation started and owns (killed when its group ends).
    pub(super) spawned: Vec<Child>,
}

impl<'a> Ctx<'a> {
    pub fn new(node: SimNode, agent: &'a AgentProcess, scale: Scale, kernel: &str) -> Self {
        Ctx {
            node,
            agent,
            scale,
            kernel: kernel.to_owned(),
            dns: None,
            group_pods: Vec::new(),
            spawned: Vec::new(),
        }
    }

    /// Provokes `group`, judges its `wanted` cells, and removes what it made.
    pub fn run_group(&mut self, group: Group, wanted: &[Cell]) -> Vec<CellResult> {
        let started = Instant::now();
        let provoked = match group {
            Group::Refused => self.refused(),
            Group::Blackhole => self.blackhole(),
            Group::DnsNxdomain => self.dns_nxdomain(),
            Group::DnsTimeout => self.dns_timeout(),
            Group::Oom => self.oom(),
            Group::Cpu => self.cpu(),
        };
        let results = match provoked {
            Ok(p) => self.watch(started, p, wanted),
            Err(e) => wanted
                .iter()
                .map(|&cell| CellResult {
                    cell,
                    verdict: super::Verdict::Fails,
                    detail: short(&format!("could not provoke it: {e:#}"), 800),
                    seconds: started.elapsed().as_secs_f64(),
                })
                .collect(),
        };
        for mut child in self.spawned.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pod in std::mem::take(&mut self.group_pods) {
            self.node.delete_pod(pod);
        }
        results
    }

    /// Polls each check's pod until its evidence is in, then judges with the agent's Status.
    ///
    /// A check whose cell needs a probe the agent did not attach cannot get evidence: it is
    /// settled as soon as the group's other checks are (they share the provocation and the
    /// agent's pipeline), or after 5 scaled seconds, not at the full timeout.
    fn watch(&self, started: Instant, p: Provoked, wanted: &[Cell]) -> Vec<CellResult> {
        let timeout = self.scale.secs(p.wait_secs);
        let grace = self.scale.secs(GRACE_SECS).min(Duration::from_secs(10));
        let deadline = Instant::now() + timeout;
        let hopeless_by = Instant::now() + self.scale.secs(5.0);
        let initial = self.agent.status().unwrap_or(Value::Null);
        let mut state: Vec<Watched> = p
            .checks
            .into_iter()
            .filter(|c| wanted.contains(&c.cell))
            .map(|check| Watched {
                hopeless: missing_probe(&initial, check.cell.needs()),
                reduced_expected: agent_note(check.cell, &initial)
                    .is_some_and(|(m, _)| m == "degraded"),
                check,
                seen: Seen::Nothing("no answer yet".into()),
                first_partial: None,
                settled: None,
                polls: 0,
            })
            .collect();
        loop {
            let now = Instant::now();
            for w in state.iter_mut().filter(|w| w.settled.is_none()) {
                w.poll(self.agent, now, grace, started);
            }
            let others_done = state
                .iter()
                .filter(|w| !w.hopeless)
                .all(|w| w.settled.is_some());
            for w in state.iter_mut().filter(|w| w.settled.is_none()) {
                if w.hopeless && w.polls > 0 && (others_done || Instant::now() >= hopeless_by) {
                    w.settled = Some(started.elapsed().as_secs_f64());
                }
            }
            let open = state.iter().any(|w| w.settled.is_none());
            if !open || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(self.scale.poll());
        }
        let status = self.agent.status().unwrap_or(Value::Null);
        let seconds = started.elapsed().as_secs_f64();
        state
            .into_iter()
            .map(|w| {
                let waited = w.settled.unwrap_or(seconds);
                let seen = match w.seen {
                    Seen::Nothing(last) => Seen::Nothing(format!(
                        "no {} within {waited:.0}s{}; {}; last answer: {last}",
                        w.check.expected,
                        if w.hopeless {
                            " (a probe it needs is not attached: not waited for longer)"
                        } else {
                            ""
                        },
                        p.workload
                    )),
                    Seen::Full(what) => Seen::Full(format!("{what}; {}", p.workload)),
                    Seen::Reduced(what) => Seen::Reduced(format!("{what}; {}", p.workload)),
                    Seen::Wrong(what) => Seen::Wrong(format!("{what}; {}", p.workload)),
                };
                let (verdict, detail) = verdict(w.check.cell, &seen, &status, &self.kernel);
                CellResult {
                    cell: w.check.cell,
                    verdict,
                    detail: short(&detail, 1000),
                    seconds: waited,
                }
            })
            .collect()
    }

    /// A pod of this group (removed with it).
    pub(super) fn add(&mut self, name: &str) -> anyhow::Result<usize> {
        let pod = self.node.add_pod(NS, name)?;
        self.group_pods.push(pod);
        Ok(pod)
    }

    /// Waits until the agent knows every live pod of the node.
    pub(super) fn wait_pods(&self) -> anyhow::Result<()> {
        let want = self.node.live_pods();
        let timeout = self.scale.secs(20.0);
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.agent.status();
            if let Ok(s) = &status
                && s["metadata"]["pods"].as_u64() == Some(want)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not list the node's {want} pods within {timeout:?}: {}",
                    match status {
                        Ok(s) => format!("metadata {}", s["metadata"]),
                        Err(e) => format!("{e:#}"),
                    }
                );
            }
            std::thread::sleep(self.scale.poll());
        }
    }

    /// Waits (at most 10 scaled seconds, without failing) until the cgroup samplers read every
    /// container, so a limit is watched before it is hit. Says how it went.
    pub(super) fn wait_sampled(&self, signal: &str) -> String {
        let want = self.node.live_pods();
        let deadline = Instant::now() + self.scale.secs(10.0);
        let mut last = None;
        while Instant::now() <= deadline {
            last = self.agent.status().ok().and_then(|s| {
                s["resources"]
                    .as_array()?
                    .iter()
                    .find(|r| r["signal"] == signal)
                    .and_then(|r| r["containers"].as_u64())
            });
            if last >= Some(want) {
                return String::new();
            }
            std::thread::sleep(self.scale.poll());
        }
        format!(" (the {signal} sampler read {last:?} of {want} containers)")
    }
}
