//! Processes the OOM killer chose.

use serde_json::{Map, Value};
use triage_agent_proto::v1 as pb;

use super::{Endpoints, FailureCounter, Finding, KindDetail, Semantic, Severity, kubectl_target};
use crate::{
    evidence::{
        Detail, DetailKey, Evidence, Kind, Named as _, OomSource, Protocol, wire::ConvertError,
    },
    text::{mib, rfc3339},
};

/// A process killed by the OOM killer. The record's `process` is the victim (absent when only
/// the cgroup counter saw the kill).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomKill {
    /// Whether the victim was the container's first process (the one Kubernetes watches), when
    /// that can be known. `false`: a child died and Kubernetes reports nothing.
    pub main_process: Option<bool>,
    /// The memory limit that applied (the tightest of the cgroup and its parents), bytes.
    pub memory_limit_bytes: Option<u64>,
    /// The cgroup's memory usage at the kill, bytes.
    pub memory_usage_bytes: Option<u64>,
    /// The victim's resident memory (anon + file + shmem) when the kernel chose it, bytes.
    pub victim_rss_bytes: Option<u64>,
    pub oom_score_adj: Option<i16>,
    /// v2 `memory.oom.group`: the whole container was killed with the victim.
    pub group_kill: Option<bool>,
    pub source: OomSource,
}

impl KindDetail for OomKill {
    fn key(&self) -> DetailKey {
        DetailKey::OomKill {
            main_process: self.main_process,
        }
    }

    fn absorb(&mut self, later: Self) {
        // A victim named once stays named.
        let source = if self.source == OomSource::Kernel {
            self.source
        } else {
            later.source
        };
        *self = OomKill {
            main_process: later.main_process.or(self.main_process),
            memory_limit_bytes: later.memory_limit_bytes.or(self.memory_limit_bytes),
            memory_usage_bytes: later.memory_usage_bytes.or(self.memory_usage_bytes),
            victim_rss_bytes: later.victim_rss_bytes.or(self.victim_rss_bytes),
            oom_score_adj: later.oom_score_adj.or(self.oom_score_adj),
            group_kill: later.group_kill.or(self.group_kill),
            source,
        };
    }

    fn endpoints(&self) -> Option<Endpoints<'_>> {
        None
    }

    fn protocol(&self) -> Option<Protocol> {
        None
    }

    fn json_fields(&self, _: Kind, out: &mut Map<String, Value>) {
        out.insert("main_process".into(), self.main_process.into());
        out.insert("memory_limit_bytes".into(), self.memory_limit_bytes.into());
        out.insert("memory_usage_bytes".into(), self.memory_usage_bytes.into());
        out.insert("victim_rss_bytes".into(), self.victim_rss_bytes.into());
        out.insert("oom_score_adj".into(), self.oom_score_adj.into());
        out.insert("group_kill".into(), self.group_kill.into());
        out.insert("source".into(), self.source.as_str().into());
    }

    /// The detail cell: who died, against which limit.
    fn cell(&self, _: Kind) -> String {
        let who = match self.main_process {
            Some(true) => "main process",
            Some(false) => "child process",
            None => "process unknown",
        };
        let mut parts = vec![who.to_owned()];
        if let Some(limit) = self.memory_limit_bytes {
            parts.push(format!("limit {}", mib(limit)));
        }
        if let Some(rss) = self.victim_rss_bytes {
            parts.push(format!("rss {}", mib(rss)));
        }
        if self.group_kill == Some(true) {
            parts.push("group kill".to_owned());
        }
        parts.push(format!("seen by {}", self.source.as_str()));
        parts.join(", ")
    }

    fn diagnose(&self, record: &Evidence, pod: &str, _: &[Evidence]) -> Finding {
        oom_killed(record, self, pod)
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn semantic(&self) -> Semantic<'_> {
        Semantic::default()
    }

    fn policy_decides(&self, _: Kind) -> bool {
        false
    }

    fn needs_other_side(&self, _: Kind) -> bool {
        false
    }

    fn failure_counter(&self, _: Kind) -> Option<FailureCounter> {
        None
    }

    fn to_pb(&self, m: &mut pb::Evidence) {
        m.detail = Some(pb::evidence::Detail::OomKill(pb::OomKillDetail {
            main_process: self.main_process,
            memory_limit_bytes: self.memory_limit_bytes,
            memory_usage_bytes: self.memory_usage_bytes,
            victim_rss_bytes: self.victim_rss_bytes,
            oom_score_adj: self.oom_score_adj.map(i32::from),
            group_kill: self.group_kill,
            source: self.source.as_str().to_owned(),
        }));
    }

    fn from_pb(kind: Kind, m: &mut pb::Evidence) -> Result<Detail, ConvertError> {
        let Some(pb::evidence::Detail::OomKill(o)) = m.detail.take() else {
            return Err(ConvertError::MissingDetail { kind });
        };
        Ok(Detail::OomKill(OomKill {
            main_process: o.main_process,
            memory_limit_bytes: o.memory_limit_bytes,
            memory_usage_bytes: o.memory_usage_bytes,
            victim_rss_bytes: o.victim_rss_bytes,
            oom_score_adj: o.oom_score_adj.and_then(|v| i16::try_from(v).ok()),
            group_kill: o.group_kill,
            // A source this version does not know: the kernel saw it at least.
            source: OomSource::from_name(&o.source).unwrap_or(OomSource::Kernel),
        }))
    }
}

/// Processes killed by the OOM killer. A child's death is invisible to Kubernetes: it reports
/// OOMKilled only when the container's main process dies.
fn oom_killed(e: &Evidence, o: &OomKill, pod: &str) -> Finding {
    let kind = e.kind();
    let container = e
        .subject
        .container
        .as_deref()
        .map_or_else(|| "its container".to_owned(), |c| format!("container {c}"));
    let victim = e.subject.process.as_ref().map_or_else(
        || {
            "a process (the cgroup's OOM counter saw it; the kernel event did not name it)"
                .to_owned()
        },
        |p| format!("process {}[{}]", p.comm, p.pid),
    );
    let limit = o.memory_limit_bytes.map_or_else(
        || "no memory limit of its own (the node or pod ran out)".to_owned(),
        |l| format!("its memory limit of {}", mib(l)),
    );
    let rss = o
        .victim_rss_bytes
        .map(|r| format!(" The victim held {} resident.", mib(r)))
        .unwrap_or_default();
    let group = if o.group_kill == Some(true) {
        " memory.oom.group is set: every process of the container was killed with it."
    } else {
        ""
    };
    let reported = match o.main_process {
        Some(false) => format!(
            " It was a child, not the container's main process: Kubernetes did not report it \
             (no OOMKilled status, no restart, no event); {pod} keeps running with one \
             worker fewer."
        ),
        Some(true) => " It was the container's main process: Kubernetes shows the container \
                       as OOMKilled (lastState.terminated.reason) and restarts it."
            .to_owned(),
        None => " Kubernetes reports OOMKilled only if that was the container's main process \
                 (check lastState.terminated.reason); otherwise it reported nothing."
            .to_owned(),
    };
    let (ns, name) = kubectl_target(e);
    Finding {
        kind,
        layer: kind.layer(),
        summary: format!(
            "In {pod}, {container} hit {limit}: the kernel OOM killer killed {victim} \
             ({count} time(s) since {first}).{reported}{rss}{group}",
            count = e.count,
            first = rfc3339(e.first_seen),
        ),
        next_step: format!(
            "Compare the container's limit with its working set (kubectl top pod -n {ns} {name} \
             --containers; container_memory_working_set_bytes over time), then review the \
             workload's memory settings: worker count or concurrency, heap/runtime limits \
             (-Xmx, GOMEMLIMIT, pm.max_children), caches. Raise the limit only if the working \
             set is legitimate; a leak will hit any limit. Restarting does not fix it."
        ),
    }
}
