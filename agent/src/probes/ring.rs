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

/// Switches the programs to the other generation of their tables (`flip` returns the index of
/// the one they left), then waits until programs still running on the old one are done; the
/// old tables can then be drained.
pub async fn switch_generation<E>(flip: impl FnOnce() -> Result<usize, E>) -> Result<usize, E> {
    let old = flip()?;
    tokio::time::sleep(QUIESCE).await;
    Ok(old)
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
