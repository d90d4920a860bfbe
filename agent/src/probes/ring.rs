//! What every reader of a kernel ring shares: waiting for readiness with tokio's AsyncFd and
//! draining at most [`BATCH`] records at a time (so a flood cannot starve the reader's other
//! duties or cancellation), handing events to attribution without waiting (a full pipeline is
//! counted, the kernel is never slowed down), and switching a generation of kernel tables so
//! they can be drained while programs count into the other one.

use std::{sync::Arc, time::Duration};

use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    event::TimedEvent,
    loss::{Counters, Loss},
};

/// Records read before the reader yields to the runtime.
pub const BATCH: usize = 1024;
/// How often a reader refreshes the boot-time to wall-clock offset (NTP slews the wall clock).
pub const CLOCK_REFRESH: Duration = Duration::from_secs(10);
/// How long after a generation switch the old tables are left alone: programs that read the old
/// generation are still running. eBPF programs run to completion without being preempted (with
/// migration disabled, in microseconds); this is orders of magnitude more than they need.
pub const QUIESCE: Duration = Duration::from_millis(5);
/// How long a switch waits for programs still writing the old generation before it leaves that
/// generation for a later drain.
pub const HANDOVER_WAIT: Duration = Duration::from_millis(200);

/// A kernel ring buffer, registered with the runtime.
pub struct Ring(AsyncFd<RingBuf<MapData>>);

impl Ring {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for its whole life, and the AsyncFd owns the
        // RingBuf.
        Ok(Ring(unsafe { AsyncFd::register(ring) }?))
    }

    /// Waits until the kernel wakes the reader, then reads at most [`BATCH`] records. A full
    /// batch may have left records behind: the ring then stays ready, so the caller comes back
    /// after its other duties had their turn. Returns how many records were read.
    pub async fn readable<E: From<std::io::Error>>(
        &mut self,
        on_record: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut guard = self.0.readable_mut().await?;
        let received = read_batch(guard.get_inner_mut(), on_record)?;
        if received < BATCH {
            guard.clear_ready();
        }
        Ok(received)
    }

    /// Reads at most [`BATCH`] records without waiting for a wakeup (for programs that wake the
    /// reader only now and then).
    pub fn poll<E>(&mut self, on_record: impl FnMut(&[u8]) -> Result<(), E>) -> Result<usize, E> {
        read_batch(self.0.get_mut(), on_record)
    }
}

fn read_batch<E>(
    ring: &mut RingBuf<MapData>,
    mut on_record: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<usize, E> {
    let mut received = 0usize;
    while received < BATCH {
        let Some(record) = ring.next() else { break };
        received += 1;
        on_record(&record)?;
    }
    Ok(received)
}

/// Attribution stopped taking events: the reader cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("attribution stopped taking events")]
pub struct AttributionGone;

/// The way to attribution, for a producer that must never wait on it.
#[derive(Clone)]
pub struct ToAttribution {
    out: mpsc::Sender<TimedEvent>,
    counters: Arc<Counters>,
}

impl ToAttribution {
    pub fn new(out: mpsc::Sender<TimedEvent>, counters: Arc<Counters>) -> Self {
        ToAttribution { out, counters }
    }

    /// Hands an event over without waiting: a full channel is counted as `pipeline_full` (as
    /// many occurrences as the event stands for, at least one); a closed one is counted the
    /// same way and is an error (the producer stops).
    pub fn send(&self, event: TimedEvent) -> Result<(), AttributionGone> {
        let count = event.event.count().max(1);
        match self.out.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.add(Loss::PipelineFull, count);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Only at shutdown, once attribution has drained: still counted.
                self.counters.add(Loss::PipelineFull, count);
                Err(AttributionGone)
            }
        }
    }
}

/// After the programs were switched to the other generation of their tables (`flipped`: the
/// index of the one they left), waits until no program is writing the old one: `in_flight` reads
/// how many are (programs count themselves in and out, see agent-ebpf/src/flows.rs). `None`
/// when one still is after [`HANDOVER_WAIT`] (a program stalled across the flip): the old
/// tables are left as they are and drained at a later switch, when the generation has come back
/// to them; nothing is lost.
pub async fn switch_generation<E>(
    flipped: Result<usize, E>,
    mut in_flight: impl FnMut(usize) -> Result<u32, E>,
) -> Result<Option<usize>, E> {
    let old = flipped?;
    tokio::time::sleep(QUIESCE).await;
    let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
    while in_flight(old)? != 0 {
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(QUIESCE).await;
    }
    Ok(Some(old))
}

/// Every entry of a table no program writes any more, each removed once read.
pub fn take_all<K: Pod, V: Pod>(table: &mut BpfHashMap<MapData, K, V>) -> Vec<(K, V)> {
    let keys: Vec<K> = table.keys().filter_map(Result::ok).collect();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if let Ok(v) = table.get(&k, 0) {
            out.push((k, v));
        }
        let _ = table.remove(&k);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering::SeqCst},
    };

    use super::*;

    /// A writer that counted itself into generation 0 and is stalled across the flip.
    fn stalled_for(held: Duration) -> Arc<AtomicU32> {
        let in_flight = Arc::new(AtomicU32::new(1));
        let writer = in_flight.clone();
        tokio::spawn(async move {
            tokio::time::sleep(held).await;
            writer.fetch_sub(1, SeqCst);
        });
        in_flight
    }

    #[tokio::test]
    async fn the_drain_waits_for_a_writer_stalled_across_the_flip() {
        let in_flight = stalled_for(Duration::from_millis(60));
        let started = tokio::time::Instant::now();
        let old = switch_generation(Ok::<_, ()>(0), |g| {
            Ok(if g == 0 { in_flight.load(SeqCst) } else { 0 })
        })
        .await;
        assert_eq!(old, Ok(Some(0)));
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "not before it left"
        );
    }

    #[tokio::test]
    async fn a_writer_stalled_past_the_wait_leaves_its_generation_for_later() {
        let in_flight = stalled_for(HANDOVER_WAIT * 3);
        let old = switch_generation(Ok::<_, ()>(0), |_| Ok(in_flight.load(SeqCst))).await;
        assert_eq!(old, Ok(None), "not drained while written");
        // A generation nobody writes is drained at once.
        let old = switch_generation(Ok::<_, ()>(1), |_| Ok(0)).await;
        assert_eq!(old, Ok(Some(1)));
    }
}
