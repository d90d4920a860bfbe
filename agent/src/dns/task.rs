//! The DNS task: reads the kernel's DNS ring, runs the tracker, and hands findings and lookup
//! counters to attribution without waiting (a full channel is counted as `pipeline_full`).

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DnsConfig, Tracker, agent_keeps, handle, handover_age};
use crate::{
    event::{RawEvent, TimedEvent},
    kernel::clock::BootClock,
    loss::Counters,
    probes::{
        dns_maps::{DnsMaps, record_bytes},
        ring::{AttributionGone, BATCH, CLOCK_REFRESH, Ring, ToAttribution, switch_generation},
    },
};

/// How often timeouts and settled search sequences are looked for.
const TICK: Duration = Duration::from_millis(250);
/// How often the ring is read without a wakeup while records come: the programs wake the
/// reader only when a batch is waiting, so a packet waits at most this long then.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// The wait between reads doubles after each read that found nothing; past this the reads
/// without a wakeup stop and only each [`TICK`] reads the ring, until records come again: an
/// idle node's agent wakes 4 times a second for the DNS task, not 50. A lone record waits at
/// most a tick.
const DRAIN_IDLE: Duration = TICK;
/// Batches a tick reads at most before it looks for timeouts: an answer waiting in the ring is
/// not a timeout, unless more than this many batches wait (a flood the reader is behind on).
const TICK_READS: usize = 16;
/// How often pods' lookup counters are reported.
const TALLY_EVERY: Duration = Duration::from_secs(1);

/// Why the DNS task stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS ring buffer: {0}")]
    Ring(#[from] std::io::Error),
    #[error(transparent)]
    AttributionGone(#[from] AttributionGone),
    #[error("switching the kernel's DNS answered table: {0}")]
    Generation(#[from] aya::maps::MapError),
}

/// Reads DNS packets until cancelled, sending findings and lookup counters to attribution.
pub async fn run(
    ring: RingBuf<MapData>,
    mut maps: DnsMaps,
    config: DnsConfig,
    out: mpsc::Sender<TimedEvent>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    let mut ring = Ring::new(ring)?;
    let out = ToAttribution::new(out, counters.clone());
    let mut clock = BootClock::new()?;
    let mut tracker = Tracker::new(config.track.clone(), counters.clone());
    let handover = handover_age(&config.track);
    let keep = agent_keeps(&config.track);
    let ports = config.ports.clone();
    let is_dns_port = |p: u16| ports.contains(&p);
    let mut refresh = tokio::time::interval(CLOCK_REFRESH);
    let mut tick = tokio::time::interval(TICK);
    let mut tally = tokio::time::interval(TALLY_EVERY);
    // None: no read without a wakeup is due (the ring was empty for a while).
    let mut drain_every = Some(DRAIN_EVERY);
    let drain = tokio::time::sleep(DRAIN_EVERY);
    tokio::pin!(drain);
    let emit = |event: RawEvent, clock: &BootClock| -> Result<(), AttributionGone> {
        let (at, first_at) = match &event {
            // Tallies are of the last interval, which ends now.
            RawEvent::DnsLookups(_) => {
                let now = std::time::SystemTime::now();
                (now, now)
            }
            other => (
                clock.wall(other.boot_ns()),
                clock.wall(other.first_boot_ns()),
            ),
        };
        out.send(TimedEvent {
            at,
            first_at,
            event,
        })
    };
    // What is done with each record the ring holds: through the tracker, its findings to
    // attribution (a macro: the closure borrows the tracker only where it is used).
    macro_rules! on_record {
        () => {
            |record: &[u8]| {
                for finding in handle(record, &mut tracker, &counters, &is_dns_port) {
                    emit(RawEvent::Dns(Box::new(finding)), &clock)?;
                }
                Ok::<(), DnsError>(())
            }
        };
    }
    // At shutdown the kernel's counts and the tallies are handed over once more (the next
    // switch, at once), then the task ends.
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled(), if !stopping => {
                stopping = true;
                tally.reset_immediately();
            }
            _ = refresh.tick() => clock.refresh()?,
            _ = tick.tick() => {
                // What the ring holds first: an answer waiting there is not a timeout.
                let mut received = 0;
                for _ in 0..TICK_READS {
                    let read = ring.poll(on_record!())?;
                    received += read;
                    if read < BATCH {
                        break;
                    }
                }
                counted(&counters, received);
                records_came(received, &mut drain_every, drain.as_mut());
                // Queries the kernel has held past the handover age: matched here from now on.
                for query in maps.take_older_than(clock.boot_now(), handover, keep) {
                    for finding in handle(record_bytes(&query), &mut tracker, &counters, &is_dns_port) {
                        emit(RawEvent::Dns(Box::new(finding)), &clock)?;
                    }
                }
                for finding in tracker.tick(clock.boot_now()) {
                    emit(RawEvent::Dns(Box::new(finding)), &clock)?;
                }
                maps.apply(tracker.take_repeat_changes());
            }
            _ = tally.tick() => {
                let flipped = maps.flip();
                // A unique borrow: the maps are not Sync, the future must stay Send.
                let held = &mut maps;
                let Some(old) = switch_generation(flipped, move |g| held.in_flight(g)).await?
                else {
                    // A program still writes the old tables: drained at a later switch.
                    continue;
                };
                for a in maps.drain(old) {
                    counters.add_dns_kernel_lookups(a.lookups);
                    tracker.answered_in_kernel(a.cgroup_id, a.client_ip, a.lookups, a.latency_sum, a.latency_max);
                }
                for r in maps.drain_repeats(old) {
                    for finding in tracker.repeated_in_kernel(r) {
                        emit(RawEvent::Dns(Box::new(finding)), &clock)?;
                    }
                }
                tracker.age_repeats();
                maps.apply(tracker.take_repeat_changes());
                for t in tracker.take_tallies() {
                    emit(RawEvent::DnsLookups(t), &clock)?;
                }
                counters.dns_table_drained();
                if stopping {
                    return Ok(());
                }
            }
            () = &mut drain, if drain_every.is_some() => {
                let received = ring.poll(on_record!())?;
                counted(&counters, received);
                maps.apply(tracker.take_repeat_changes());
                drain_every = next_drain(drain_every, received);
                let now = tokio::time::Instant::now();
                if received >= BATCH {
                    drain.as_mut().reset(now);
                } else if let Some(wait) = drain_every {
                    drain.as_mut().reset(now + wait);
                }
                tokio::task::yield_now().await;
            }
            received = ring.readable(on_record!()) => {
                let received = received?;
                counted(&counters, received);
                maps.apply(tracker.take_repeat_changes());
                records_came(received, &mut drain_every, drain.as_mut());
                tokio::task::yield_now().await;
            }
        }
    }
}

/// After a read that found records: reads without a wakeup every [`DRAIN_EVERY`] again.
fn records_came(
    received: usize,
    drain_every: &mut Option<Duration>,
    drain: std::pin::Pin<&mut tokio::time::Sleep>,
) {
    if received > 0 && *drain_every != Some(DRAIN_EVERY) {
        *drain_every = Some(DRAIN_EVERY);
        drain.reset(tokio::time::Instant::now() + DRAIN_EVERY);
    }
}

/// The wait before the next read without a wakeup: [`DRAIN_EVERY`] after a read that found
/// records, twice the last wait after one that found none, and none (only the ticks read the
/// ring) once that reaches [`DRAIN_IDLE`].
fn next_drain(last: Option<Duration>, received: usize) -> Option<Duration> {
    if received > 0 {
        Some(DRAIN_EVERY)
    } else {
        last.map(|w| w * 2).filter(|w| *w < DRAIN_IDLE)
    }
}

fn counted(counters: &Counters, received: usize) {
    counters.add_events_received(received as u64);
    counters.add_dns_records(received as u64);
}

impl crate::event::ConsumerGone for DnsError {
    fn consumer_gone(&self) -> bool {
        matches!(self, DnsError::AttributionGone(_))
    }
}

#[cfg(test)]
mod tests {
    use super::{DRAIN_EVERY, DRAIN_IDLE, TICK, next_drain};

    /// An idle ring is read less and less often, then only by the ticks; a record brings the
    /// short wait back at once.
    #[test]
    fn the_wait_between_reads_grows_while_the_ring_is_empty() {
        let mut wait = Some(DRAIN_EVERY);
        let mut waits = Vec::new();
        for _ in 0..5 {
            wait = next_drain(wait, 0);
            waits.push(wait.map(|w| w.as_millis()));
        }
        assert_eq!(waits, [Some(40), Some(80), Some(160), None, None]);
        assert!(DRAIN_IDLE <= TICK, "a lone record waits at most a tick");
        assert_eq!(next_drain(None, 1), Some(DRAIN_EVERY));
    }
}
