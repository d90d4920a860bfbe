//! Containers throttled by their CPU limit.

use serde_json::{Map, Value};

use super::KindDetail;
use crate::evidence::{DetailKey, Kind};

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
}

/// Three decimals: JSON readers see 0.25, not 0.25000000000000006.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
