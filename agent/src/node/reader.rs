//! Owns the ring buffer: waits for readiness with tokio's AsyncFd, drains every record, decodes
//! it (a bad record is counted, never a panic) and hands it to attribution without awaiting:
//! when the pipeline is full the event is counted as lost, the kernel is never slowed down.

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    attribute::TimedEvent, counters::Counters, node::clock::BootClock, probes::decode::decode,
};

/// How often the boot-time to wall-clock offset is refreshed (NTP slews the wall clock).
const CLOCK_REFRESH: Duration = Duration::from_secs(10);

/// Reads the ring buffer until cancelled.
pub async fn run(
    ring: RingBuf<MapData>,
    out: mpsc::Sender<TimedEvent>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd for its whole life, and the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    let mut clock = BootClock::now();
    let mut refresh = tokio::time::interval(CLOCK_REFRESH);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = refresh.tick() => clock = BootClock::now(),
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let mut received = 0u64;
                while let Some(record) = ring.next() {
                    received += 1;
                    match decode(&record) {
                        Ok(event) => {
                            let at = clock.wall(event.boot_ns());
                            if out.try_send(TimedEvent { at, event }).is_err() {
                                counters.add_pipeline_full(1);
                            }
                        }
                        Err(error) => {
                            counters.add_decode_errors(1);
                            debug!(%error, "undecodable ring buffer record");
                        }
                    }
                }
                counters.add_events_received(received);
                guard.clear_ready();
                if out.is_closed() {
                    warn!("attribution stopped; ring buffer reader exits");
                    return Ok(());
                }
            }
        }
    }
}
