//! Runs the [`Sampler`] on its own thread (file reads are blocking; a sweep of a thousand
//! containers must not stall the async runtime), follows the pod set attribution publishes,
//! and hands samples to attribution with `try_send` (a full channel is counted as
//! [`Loss::PipelineFull`], never awaited).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{
    SamplerStatus, SignalSource,
    sampler::{Sampler, SamplerConfig},
};
use crate::{
    cgroup::{PodContainers, layout::Version},
    event::{RawEvent, Sample, TimedEvent},
    loss::{Counters, Loss},
};

/// The signals' sources for a configuration; `oom_event` says whether the kernel event is
/// attached (and why not).
pub fn sources(config: &SamplerConfig, oom_event: Result<(), String>) -> Vec<SignalSource> {
    let h = &config.hierarchies;
    let psi = h.unified.is_some();
    let cpu = match &h.cpu {
        Some(c) => SignalSource {
            signal: "cpu_throttling",
            hierarchy: c.version.name(),
            files: match c.version {
                Version::V2 => vec!["cpu.stat".into(), "cpu.max".into()],
                Version::V1 => vec![
                    "cpu.stat".into(),
                    "cpu.cfs_quota_us".into(),
                    "cpu.cfs_period_us".into(),
                ],
            }
            .into_iter()
            .chain(psi.then(|| "cpu.pressure (cgroup v2)".to_owned()))
            .collect(),
            mount: c.mount.display().to_string(),
            note: String::new(),
        },
        None => SignalSource {
            signal: "cpu_throttling",
            hierarchy: "unavailable",
            note: "no cgroup hierarchy has the cpu controller".into(),
            ..SignalSource::default()
        },
    };
    let mut oom = match &h.memory {
        Some(m) => SignalSource {
            signal: "oom_kill",
            hierarchy: m.version.name(),
            files: match m.version {
                Version::V2 => vec![
                    "memory.events".into(),
                    "memory.max".into(),
                    "memory.peak".into(),
                    "memory.oom.group".into(),
                ],
                Version::V1 => vec![
                    "memory.oom_control".into(),
                    "memory.limit_in_bytes".into(),
                    "memory.max_usage_in_bytes".into(),
                ],
            },
            mount: m.mount.display().to_string(),
            note: String::new(),
        },
        None => SignalSource {
            signal: "oom_kill",
            hierarchy: "unavailable",
            note: "no cgroup hierarchy has the memory controller: OOM counters unavailable".into(),
            ..SignalSource::default()
        },
    };
    match oom_event {
        Ok(()) => oom.files.insert(0, "raw_tracepoint mark_victim".into()),
        Err(why) => {
            if !oom.note.is_empty() {
                oom.note.push_str("; ");
            }
            oom.note.push_str(&format!(
                "kernel OOM event unavailable ({why}): victims unnamed"
            ));
        }
    }
    vec![oom, cpu]
}

/// Makes the status channel; returns it and the task, which samples every `interval` until
/// cancelled.
#[expect(
    clippy::too_many_arguments,
    reason = "each is a different piece of the agent's wiring"
)]
pub fn spawn(
    config: SamplerConfig,
    known: crate::cgroup::KnownCgroups,
    interval: Duration,
    oom_event: Result<(), String>,
    pods: watch::Receiver<Arc<Vec<PodContainers>>>,
    events: mpsc::Sender<TimedEvent>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> (
    watch::Receiver<SamplerStatus>,
    impl Future<Output = Result<(), SamplerError>> + Send + 'static,
) {
    let (status_tx, status_rx) = watch::channel(SamplerStatus {
        sources: sources(&config, oom_event),
        ..SamplerStatus::default()
    });
    let task = async move {
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            run(
                config, known, interval, pods, events, counters, cancel, status_tx, &runtime,
            )
        })
        .await
        .map_err(|e| SamplerError::Thread(e.to_string()))?
    };
    (status_rx, task)
}

/// Why the sampler stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("attribution stopped taking events")]
    AttributionGone,
    #[error("sampler thread: {0}")]
    Thread(String),
}

#[expect(
    clippy::too_many_arguments,
    reason = "the thread's whole world, handed over once"
)]
fn run(
    config: SamplerConfig,
    known: crate::cgroup::KnownCgroups,
    interval: Duration,
    mut pods: watch::Receiver<Arc<Vec<PodContainers>>>,
    events: mpsc::Sender<TimedEvent>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    status: watch::Sender<SamplerStatus>,
    runtime: &tokio::runtime::Handle,
) -> Result<(), SamplerError> {
    info!(interval = ?interval, threshold = config.throttle_threshold, "sampling cgroups");
    let mut sampler = Sampler::new(config).with_known(known);
    let mut out: Vec<Sample> = Vec::new();
    let mut next = Instant::now();
    // Whether a change of the pod set was seen while waiting (which marks it seen).
    let mut pods_changed = false;
    while !cancel.is_cancelled() {
        let now = Instant::now();
        out.clear();
        // New pods are read at once, not at the next sweep: what a container's counters
        // hold when it is first seen must not hide what happens before that sweep.
        if std::mem::take(&mut pods_changed) || pods.has_changed().unwrap_or(false) {
            let current = pods.borrow_and_update().clone();
            sampler.set_pods(&current, now, &mut out);
        }
        let swept = now >= next;
        if swept {
            next = now + interval;
            sampler.sweep(now, &mut out);
        } else if out.is_empty() {
            pods_changed = wait(runtime, &mut pods, &cancel, next);
            continue;
        }
        let wall = SystemTime::now();
        for sample in out.drain(..) {
            let count = sample.count();
            let event = TimedEvent {
                at: wall,
                first_at: wall,
                event: RawEvent::Sample(sample),
            };
            match events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => counters.add(Loss::PipelineFull, count),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    counters.add(Loss::PipelineFull, count);
                    return Err(SamplerError::AttributionGone);
                }
            }
        }
        status.send_modify(|s| {
            s.containers = u32::try_from(sampler.containers()).unwrap_or(u32::MAX);
            s.open_files = u32::try_from(sampler.open_files()).unwrap_or(u32::MAX);
            s.read_errors = sampler.totals.read_errors;
            s.gone = sampler.totals.gone;
        });
        if swept {
            // After its samples went to attribution and its state to Status.
            counters.cgroup_swept();
        }
    }
    Ok(())
}

/// Sleeps until `until`, a change of the pod set or cancellation, whichever comes first (the
/// thread wakes for nothing else); true for a change of the pod set.
fn wait(
    runtime: &tokio::runtime::Handle,
    pods: &mut watch::Receiver<Arc<Vec<PodContainers>>>,
    cancel: &CancellationToken,
    until: Instant,
) -> bool {
    runtime.block_on(async {
        let sleep = tokio::time::sleep_until(until.into());
        tokio::pin!(sleep);
        // A closed channel (attribution gone) has no change to wait for.
        let mut open = true;
        loop {
            tokio::select! {
                changed = pods.changed(), if open => match changed {
                    Ok(()) => return true,
                    Err(_) => open = false,
                },
                () = cancel.cancelled() => return false,
                () = &mut sleep => return false,
            }
        }
    })
}

impl crate::event::ConsumerGone for SamplerError {
    fn consumer_gone(&self) -> bool {
        matches!(self, SamplerError::AttributionGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::Sample,
        samplers::sampler::{v2_fixture_config, write_v2_counters, write_v2_fixture},
    };

    async fn sweeps_past(counters: &Counters, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.cgroup_sweeps() < n {
            assert!(
                Instant::now() < deadline,
                "only {} sweeps",
                counters.cgroup_sweeps()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A sweep is counted once what it found is in attribution's channel and Status has its
    /// state: whoever sees the count grow past the value it read knows the files were read
    /// after it asked, and what they held was handed on.
    #[tokio::test]
    async fn each_sweep_is_counted_after_it_is_handed_on() {
        let dir = tempfile::tempdir().unwrap();
        let pods = write_v2_fixture(dir.path(), 2).unwrap();
        let container = dir
            .path()
            .join("kubepods/burstable")
            .join(format!("pod{}", pods[0].uid))
            .join(&*pods[0].container_ids[0]);
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let (pods_tx, pods_rx) = watch::channel(Arc::new(Vec::new()));
        let (events_tx, mut events) = mpsc::channel(1024);
        let (status, task) = spawn(
            v2_fixture_config(dir.path(), 1),
            crate::cgroup::KnownCgroups::default(),
            Duration::from_millis(20),
            Ok(()),
            pods_rx,
            events_tx,
            counters.clone(),
            cancel.clone(),
        );
        let task = tokio::spawn(task);
        assert_eq!(counters.cgroup_sweeps(), 0);
        pods_tx.send(Arc::new(pods)).unwrap();
        sweeps_past(&counters, 2).await;
        assert_eq!(
            status.borrow().containers,
            2,
            "Status has the sweep's state"
        );
        while events.try_recv().is_ok() {}

        // Throttled after the count was read: the sweeps counted after it found it.
        write_v2_counters(&container, 100, 50, 0).unwrap();
        let read = counters.cgroup_sweeps();
        sweeps_past(&counters, read + 2).await;
        let mut throttled = 0;
        while let Ok(e) = events.try_recv() {
            if let RawEvent::Sample(Sample::Throttled { .. }) = e.event {
                throttled += 1;
            }
        }
        assert!(throttled >= 1, "the throttling is in the channel");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
