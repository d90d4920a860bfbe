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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    event::{CgroupLosses, RawEvent, TimedEvent},
    evidence::PodLosses,
    kernel::clock::BootClock,
    loss::{Counters, Loss},
    probes::{
        decode::{self, decode},
        loader::{FlowTables, LossMap},
        ring::{AttributionGone, CLOCK_REFRESH, Ring, ToAttribution, switch_generation},
    },
};

/// How often the kernel's loss counters are read.
const LOSS_POLL: Duration = Duration::from_secs(1);
/// How often the flow tables are drained: repeats of a flow reach `watch` within this (first
/// occurrences come through the ring buffer at once).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(500);

/// Why the reader stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("ring buffer: {0}")]
    Ring(#[from] std::io::Error),
    #[error(transparent)]
    AttributionGone(#[from] AttributionGone),
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
    let mut ring = Ring::new(ring)?;
    let out = ToAttribution::new(out, counters.clone());
    let mut clock = BootClock::new()?;
    let mut refresh = tokio::time::interval(CLOCK_REFRESH);
    let mut poll = tokio::time::interval(LOSS_POLL);
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut kernel_seen = [0u64; LossMap::TOTALS];
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                // Repeats the kernel counted since the last drain are handed over, not lost.
                return drain_flows(&mut flows, &out, &clock, &counters).await;
            }
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
            _ = drain.tick() => drain_flows(&mut flows, &out, &clock, &counters).await?,
            received = ring.readable(|record| -> Result<(), ReaderError> {
                match decode(record) {
                    Ok(mut event) => {
                        flows.netns.fill(&mut event);
                        let at = clock.wall(event.boot_ns());
                        out.send(TimedEvent { at, first_at: at, event })?;
                    }
                    Err(error) => {
                        counters.add(Loss::DecodeErrors, 1);
                        debug!(%error, "undecodable ring buffer record");
                    }
                }
                Ok(())
            }) => {
                counters.add_events_received(received? as u64);
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Switches the flow tables' generation and hands the repeats counted in the old one to
/// attribution; counts the drain ([`Counters::flow_table_drains`]) when it is done.
async fn drain_flows(
    flows: &mut FlowTables,
    out: &ToAttribution,
    clock: &BootClock,
    counters: &Counters,
) -> Result<(), ReaderError> {
    let old = match switch_generation(flows.flip(), |g| flows.in_flight(g)).await {
        Ok(Some(old)) => old,
        Ok(None) => {
            debug!("a program is still writing the old flow table; it is drained later");
            return Ok(());
        }
        Err(error) => {
            warn!(%error, "switching flow tables failed; repeats wait for the next drain");
            return Ok(());
        }
    };
    // What the kernel lost of each cgroup's evidence, for that cgroup's pod (the node-wide
    // counters have it already).
    let now = std::time::SystemTime::now();
    for (cgroup_id, l) in flows.drain_losses(old) {
        let losses = PodLosses {
            connects: l.connects,
            occurrences: l.occurrences,
            dns_packets: l.dns_packets,
        };
        if losses.total() > 0 {
            out.send(TimedEvent {
                at: now,
                first_at: now,
                event: RawEvent::CgroupLosses(CgroupLosses { cgroup_id, losses }),
            })?;
        }
    }
    for (key, stats) in flows.drain(old) {
        // Entries with no repeats were reported whole by their ring buffer event.
        if stats.count == 0 {
            continue;
        }
        match decode::flow(&key, &stats) {
            Ok(flow) => {
                let mut event = RawEvent::Flow(flow);
                flows.netns.fill(&mut event);
                out.send(TimedEvent {
                    at: clock.wall(event.boot_ns()),
                    first_at: clock.wall(event.first_boot_ns()),
                    event,
                })?;
            }
            Err(error) => {
                counters.add(Loss::DecodeErrors, 1);
                debug!(%error, "undecodable flow table entry");
            }
        }
    }
    // Counted once everything the old generation held is in attribution's channel (Status:
    // how many drains the agent has made, which a client can wait on).
    counters.flow_table_drained();
    Ok(())
}

impl crate::event::ConsumerGone for ReaderError {
    fn consumer_gone(&self) -> bool {
        matches!(self, ReaderError::AttributionGone(_))
    }
}
