//! Containers throttled by their CPU limit.

use serde_json::{Map, Value};
use triage_agent_proto::v1 as pb;

use super::{Endpoints, FailureCounter, Finding, KindDetail, Semantic, Severity, kubectl_target};
use crate::evidence::{Detail, DetailKey, Evidence, Kind, Protocol, wire::ConvertError};

/// A container throttled by its CPU limit, over one or more sampling intervals (summed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuThrottling {
    /// CFS periods in which the container was throttled.
    pub throttled_periods: u64,
    /// CFS periods in which the container ran.
    pub total_periods: u64,
    /// Time spent throttled, microseconds.
    pub throttled_us: u64,
    /// The CPU limit (quota / period), thousandths of a core; `None` when unlimited.
    pub limit_millicores: Option<u64>,
    /// Time sampled, milliseconds.
    pub interval_ms: u64,
    /// PSI `cpu.pressure` some avg10, hundredths of a percent, when the kernel has PSI.
    pub cpu_pressure_some_avg10: Option<u32>,
}

impl CpuThrottling {
    /// Throttled periods over periods run (0 when none ran).
    pub fn ratio(&self) -> f64 {
        if self.total_periods == 0 {
            0.0
        } else {
            self.throttled_periods as f64 / self.total_periods as f64
        }
    }
    pub fn throttled_seconds(&self) -> f64 {
        self.throttled_us as f64 / 1e6
    }
    pub fn limit_cores(&self) -> Option<f64> {
        self.limit_millicores.map(|m| m as f64 / 1000.0)
    }
    pub fn interval_seconds(&self) -> f64 {
        self.interval_ms as f64 / 1000.0
    }
    pub fn pressure_avg10(&self) -> Option<f64> {
        self.cpu_pressure_some_avg10.map(|p| f64::from(p) / 100.0)
    }
}

impl KindDetail for CpuThrottling {
    fn key(&self) -> DetailKey {
        DetailKey::CpuThrottling
    }

    fn absorb(&mut self, later: Self) {
        self.throttled_periods = self
            .throttled_periods
            .saturating_add(later.throttled_periods);
        self.total_periods = self.total_periods.saturating_add(later.total_periods);
        self.throttled_us = self.throttled_us.saturating_add(later.throttled_us);
        self.interval_ms = self.interval_ms.saturating_add(later.interval_ms);
        self.limit_millicores = later.limit_millicores;
        self.cpu_pressure_some_avg10 = later.cpu_pressure_some_avg10;
    }

    fn endpoints(&self) -> Option<Endpoints<'_>> {
        None
    }

    fn protocol(&self) -> Option<Protocol> {
        None
    }

    fn json_fields(&self, _: Kind, out: &mut Map<String, Value>) {
        out.insert("throttled_periods".into(), self.throttled_periods.into());
        out.insert("total_periods".into(), self.total_periods.into());
        out.insert(
            "throttled_seconds".into(),
            round3(self.throttled_seconds()).into(),
        );
        out.insert("cpu_limit_cores".into(), self.limit_cores().into());
        out.insert("ratio".into(), round3(self.ratio()).into());
        out.insert(
            "interval_seconds".into(),
            round3(self.interval_seconds()).into(),
        );
        if let Some(p) = self.pressure_avg10() {
            out.insert("cpu_pressure_some_avg10".into(), p.into());
        }
    }

    /// The detail cell: ratio and limit (the seconds throttled are in the diagnosis and the
    /// JSON).
    fn cell(&self, _: Kind) -> String {
        let limit = self
            .limit_cores()
            .map_or_else(|| "no limit".to_owned(), |l| format!("limit {l} cores"));
        format!(
            "{:.0}% throttled ({}/{} periods), {limit}",
            self.ratio() * 100.0,
            self.throttled_periods,
            self.total_periods,
        )
    }

    fn diagnose(&self, record: &Evidence, pod: &str, _: &[Evidence]) -> Finding {
        throttled(record, self, pod)
    }

    /// Throttling degrades; nothing failed yet.
    fn severity(&self) -> Severity {
        Severity::Warn
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
        m.detail = Some(pb::evidence::Detail::CpuThrottling(
            pb::CpuThrottlingDetail {
                throttled_periods: self.throttled_periods,
                total_periods: self.total_periods,
                throttled_us: self.throttled_us,
                limit_millicores: self.limit_millicores,
                interval_ms: self.interval_ms,
                cpu_pressure_some_avg10: self.cpu_pressure_some_avg10,
            },
        ));
    }

    fn from_pb(kind: Kind, m: &mut pb::Evidence) -> Result<Detail, ConvertError> {
        let Some(pb::evidence::Detail::CpuThrottling(c)) = m.detail.take() else {
            return Err(ConvertError::MissingDetail { kind });
        };
        Ok(Detail::CpuThrottling(CpuThrottling {
            throttled_periods: c.throttled_periods,
            total_periods: c.total_periods,
            throttled_us: c.throttled_us,
            limit_millicores: c.limit_millicores,
            interval_ms: c.interval_ms,
            cpu_pressure_some_avg10: c.cpu_pressure_some_avg10,
        }))
    }
}

/// Three decimals: JSON readers see 0.25, not 0.25000000000000006.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A container throttled by its CPU limit: latency and probe timeouts, never an event.
fn throttled(e: &Evidence, c: &CpuThrottling, pod: &str) -> Finding {
    let kind = e.kind();
    let container = e
        .subject
        .container
        .as_deref()
        .map_or_else(|| "a container".to_owned(), |c| format!("container {c}"));
    let limit = c.limit_cores().map_or_else(
        || "its CPU limit".to_owned(),
        |l| format!("its CPU limit of {l} cores"),
    );
    let pressure = c
        .pressure_avg10()
        .map(|p| format!(" CPU pressure (PSI some avg10) was {p:.1}%."))
        .unwrap_or_default();
    let (ns, name) = kubectl_target(e);
    Finding {
        kind,
        layer: kind.layer(),
        summary: format!(
            "In {pod}, {container} was throttled by {limit} in {pct:.0}% of its CPU periods \
             ({throttled} of {total}; {secs:.2}s spent throttled over {interval:.0}s sampled).\
             {pressure} Expect higher latency, slow requests and probe timeouts; Kubernetes \
             reports no event for this.",
            pct = c.ratio() * 100.0,
            throttled = c.throttled_periods,
            total = c.total_periods,
            secs = c.throttled_seconds(),
            interval = c.interval_seconds(),
        ),
        next_step: format!(
            "Review the CPU limit against what the container uses (kubectl top pod -n {ns} \
             {name} --containers; kubectl get pod -n {ns} {name} -o \
             jsonpath='{{.spec.containers[*].resources}}'): raise or remove the limit, or reduce \
             the work per container (threads, GC, concurrency). Restarting will not help: \
             the limit applies again to the new container."
        ),
    }
}
