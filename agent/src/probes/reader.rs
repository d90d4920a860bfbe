//! Owns the ring buffer: waits for readiness with tokio's AsyncFd, drains records in batches,
//! decodes each (a bad record is counted, never a panic) and hands it to attribution without
//! awaiting: when the pipeline is full the event is counted as lost, the kernel is never slowed
//! down. After every batch it yields, so a flood cannot starve the clock refresh, the kernel
//! loss poll or cancellation.
//!
//! It also polls the kernel's loss counters once a second and adds their growth to the agent's
//! counters, so every loss, kernel or user, is in one place with the time it last grew.

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    attribute::TimedEvent,
    kernel::clock::BootClock,
    loss::{Counters, Loss},
    probes::{
        decode::{self, RawEvent, decode},
        loader::{FlowTables, LossMap},
    },
};

/// How often the boot-time to wall-clock offset is refreshed (NTP slews the wall clock).
const CLOCK_REFRESH: Duration = Duration::from_secs(10);
/// How often the kernel's loss counters are read.
const LOSS_POLL: Duration = Duration::from_secs(1);
/// How often the flow tables are drained: repeats of a flow reach `watch` within this (first
/// occurrences come through the ring buffer at once).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(500);
/// How long after flipping the generation the old table is left alone: programs that read the
/// old generation are still running. eBPF tracepoint programs run to completion without being
/// preempted (they run with migration disabled, in microseconds); this is orders of magnitude
/// more than they need.
const QUIESCE: Duration = Duration::from_millis(5);
/// Records decoded before the reader yields to the runtime.
pub const BATCH: usize = 1024;

/// Why the reader stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("ring buffer: {0}")]
    Ring(#[from] std::io::Error),
    #[error("attribution stopped taking events")]
    AttributionGone,
}

/// Reads the ring buffer until cancelled. Returns an error when it cannot go on (including
/// attribution having stopped): the caller stops the agent.
pub async fn run(
    ring: RingBuf<MapData>,
    mut flows: FlowTables,
    loss_map: LossMap,
    out: mpsc::Sender<TimedEvent>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Result<(), ReaderError> {
    // SAFETY: the RingBuf owns its map fd for its whole life, and the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    let mut clock = BootClock::new()?;
    let mut refresh = tokio::time::interval(CLOCK_REFRESH);
    let mut poll = tokio::time::interval(LOSS_POLL);
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut kernel_seen = [0u64; 8];
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            _ = refresh.tick() => clock.refresh()?,
            _ = poll.tick() => match loss_map.read() {
                Ok(totals) => {
                    for ((loss, total), seen) in totals.into_iter().zip(kernel_seen.iter_mut()) {
                        if total > *seen {
                            counters.add(loss, total - *seen);
                            *seen = total;
                        }
                    }
                }
                Err(error) => warn!(%error, "reading the kernel's loss counters failed"),
            },
            _ = drain.tick() => {
                let old = match flows.flip() {
                    Ok(old) => old,
                    Err(error) => {
                        warn!(%error, "switching flow tables failed; repeats wait for the next drain");
                        continue;
                    }
                };
                tokio::time::sleep(QUIESCE).await;
                for (key, stats) in flows.drain(old) {
                    // Entries with no repeats were reported whole by their ring buffer event.
                    if stats.count == 0 {
                        continue;
                    }
                    match decode::flow(&key, &stats) {
                        Ok(flow) => {
                            let event = RawEvent::Flow(flow);
                            let timed = TimedEvent {
                                at: clock.wall(event.boot_ns()),
                                first_at: clock.wall(event.first_boot_ns()),
                                event,
                            };
                            send(&out, timed, &counters)?;
                        }
                        Err(error) => {
                            counters.add(Loss::DecodeErrors, 1);
                            debug!(%error, "undecodable flow table entry");
                        }
                    }
                }
            }
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let mut received = 0u64;
                while let Some(record) = ring.next() {
                    received += 1;
                    match decode(&record) {
                        Ok(event) => {
                            let at = clock.wall(event.boot_ns());
                            send(&out, TimedEvent { at, first_at: at, event }, &counters)?;
                        }
                        Err(error) => {
                            counters.add(Loss::DecodeErrors, 1);
                            debug!(%error, "undecodable ring buffer record");
                        }
                    }
                    if received >= BATCH as u64 {
                        break;
                    }
                }
                counters.add_events_received(received);
                // A full batch may have left records behind: stay ready and come back after
                // the other branches had their turn.
                if received < BATCH as u64 {
                    guard.clear_ready();
                }
                drop(guard);
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Hands an event to attribution without waiting: a full channel is counted (as many
/// occurrences as the event stands for), a closed one stops the reader.
fn send(
    out: &mpsc::Sender<TimedEvent>,
    event: TimedEvent,
    counters: &Counters,
) -> Result<(), ReaderError> {
    let count = event.event.count();
    match out.try_send(event) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            counters.add(Loss::PipelineFull, count);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(ReaderError::AttributionGone),
    }
}
