//! The DNS task: reads the kernel's DNS ring, runs the tracker, and hands findings and lookup
//! counters to attribution without waiting (a full channel is counted as `pipeline_full`).

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    DnsConfig, Tracker, agent_keeps, handle, handover_age, kernel::DnsMaps, kernel::record_bytes,
};
use crate::{
    attribute::TimedEvent,
    kernel::clock::BootClock,
    loss::{Counters, Loss},
    probes::{decode::RawEvent, reader::BATCH},
};

/// How often timeouts and settled search sequences are looked for.
const TICK: Duration = Duration::from_millis(250);
/// How often the ring is read without a wakeup: the programs wake the reader only when a
/// quarter of the ring is waiting, so a packet waits at most this long.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How often pods' lookup counters are reported.
const TALLY_EVERY: Duration = Duration::from_secs(1);
/// How long after switching the kernel's answered table the old one is left alone (programs
/// that read the old generation are still running; they run in microseconds).
const QUIESCE: Duration = Duration::from_millis(5);
/// How often the boot-time to wall-clock offset is refreshed.
const CLOCK_REFRESH: Duration = Duration::from_secs(10);

/// Why the DNS task stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS ring buffer: {0}")]
    Ring(#[from] std::io::Error),
    #[error("attribution stopped taking events")]
    AttributionGone,
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
    // SAFETY: the RingBuf owns its map fd for its whole life, and the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    let mut clock = BootClock::new()?;
    let mut tracker = Tracker::new(config.track.clone(), counters.clone());
    let handover = handover_age(&config.track);
    let keep = agent_keeps(&config.track);
    let ports = config.ports.clone();
    let is_dns_port = |p: u16| ports.contains(&p);
    let mut refresh = tokio::time::interval(CLOCK_REFRESH);
    let mut tick = tokio::time::interval(TICK);
    let mut tally = tokio::time::interval(TALLY_EVERY);
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let emit = |event: RawEvent, clock: &BootClock| -> Result<(), DnsError> {
        let at = match &event {
            RawEvent::DnsLookups(_) => std::time::SystemTime::now(),
            other => clock.wall(other.boot_ns()),
        };
        let first_at = match &event {
            RawEvent::DnsLookups(_) => at,
            other => clock.wall(other.first_boot_ns()),
        };
        let count = event.count();
        match out.try_send(TimedEvent {
            at,
            first_at,
            event,
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters.add(Loss::PipelineFull, count.max(1));
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DnsError::AttributionGone),
        }
    };
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            _ = refresh.tick() => clock.refresh()?,
            _ = tick.tick() => {
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
                let old = maps.flip()?;
                tokio::time::sleep(QUIESCE).await;
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
            }
            _ = drain.tick() => {
                let ring = fd.get_mut();
                let received = read_batch(ring, &mut tracker, &counters, &is_dns_port, |f| {
                    emit(RawEvent::Dns(Box::new(f)), &clock)
                })?;
                maps.apply(tracker.take_repeat_changes());
                if received >= BATCH {
                    drain.reset_immediately();
                }
                tokio::task::yield_now().await;
            }
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let received = read_batch(ring, &mut tracker, &counters, &is_dns_port, |f| {
                    emit(RawEvent::Dns(Box::new(f)), &clock)
                })?;
                if received < BATCH {
                    guard.clear_ready();
                }
                drop(guard);
                maps.apply(tracker.take_repeat_changes());
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Reads up to [`BATCH`] records; returns how many.
fn read_batch(
    ring: &mut RingBuf<MapData>,
    tracker: &mut Tracker,
    counters: &Counters,
    is_dns_port: &impl Fn(u16) -> bool,
    mut found: impl FnMut(super::Finding) -> Result<(), DnsError>,
) -> Result<usize, DnsError> {
    let mut received = 0usize;
    while let Some(record) = ring.next() {
        received += 1;
        for finding in handle(&record, tracker, counters, is_dns_port) {
            found(finding)?;
        }
        if received >= BATCH {
            break;
        }
    }
    counters.add_events_received(received as u64);
    counters.add_dns_records(received as u64);
    Ok(received)
}
