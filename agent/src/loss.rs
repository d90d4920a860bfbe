//! Every way evidence can be lost, by one stable name. [`Loss`] drives the counters, Status, the
//! proto (`LossCounters.counts`), the CLI's completeness line and the metrics: a new loss point
//! is one variant here and one `counters.add(Loss::X, n)` where it happens.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use crate::evidence::names::names;

names! {
    /// A place where evidence can be lost.
    pub enum Loss {
        /// The kernel could not send a flow's first occurrence, and the flow table did not
        /// hold it either: the ring buffer was full, or the pod had used its share of it
        /// (counted against the pod too, `PodLosses::occurrences`).
        RingBufferFull = "ring_buffer_full",
        /// A connect() could not be remembered in the kernel's table: it was full, or the pod
        /// held its share of it (counted against the pod too, `PodLosses::connects`).
        ConnectTableFull = "connect_table_full",
        /// The kernel saw an event but could not read a field of its record.
        KernelReadErrors = "kernel_read_errors",
        /// A flow could not be entered in the kernel's flow table (it was full): its
        /// occurrences went through the ring buffer one by one (costlier; lost only if the
        /// ring buffer was full too, which `ring_buffer_full` counts).
        FlowTableFull = "flow_table_full",
        /// A ring buffer record could not be decoded.
        DecodeErrors = "decode_errors",
        /// The reader -> attribution channel was full.
        PipelineFull = "pipeline_full",
        /// Occurrences the attribution -> store channel could not take (it was full),
        /// counted by their occurrence counts.
        StoreChannelFull = "store_channel_full",
        /// Records evicted from the store to make room (capacity or quota).
        StoreEvicted = "store_evicted",
        /// Events that waited for pod metadata and were stored unattributed.
        AttributionExpired = "attribution_expired",
        /// Watch updates (record updates) a `Watch` stream missed because it was too slow:
        /// the one that did not fit in its buffer and every matching one published until its
        /// stream ended (it is disconnected; Query still has everything). The OTLP exporter's
        /// are `otlp_lagged`.
        WatchLagged = "watch_lagged",
        /// A walk of the cgroup tree stopped at its cap: some cgroups could not be resolved,
        /// and their events were attributed by IP or not at all.
        CgroupWalkCapped = "cgroup_walk_capped",
        /// A DNS packet was not copied: the kernel's DNS ring buffer was full, or the pod had
        /// used its share of it (counted against the pod too, `PodLosses::dns_packets`).
        DnsRingFull = "dns_ring_full",
        /// A DNS packet whose header or question could not be parsed (malformed, or cut
        /// before the question ended).
        DnsMalformed = "dns_malformed",
        /// A DNS payload longer than the kernel's copy (288 bytes): its header and question
        /// were read, the rest (answer records) was not needed. Not a loss of evidence.
        DnsTruncated = "dns_truncated",
        /// A DNS query left the in-flight table before its answer or timeout (the table was
        /// full for its pod or in total): its outcome is unknown.
        DnsInflightEvicted = "dns_inflight_evicted",
        /// Records in the persistent store that could not be read back at startup (written
        /// by a damaged disk or an incompatible version): removed.
        StoreUnreadable = "store_unreadable",
        /// OTLP export: a record update could not enter the exporter's queue (it was full: the
        /// collector is slow or unreachable). Not exported; the store still has it.
        OtlpQueueFull = "otlp_queue_full",
        /// OTLP export: records given up after a non-retryable error, or after retrying a
        /// retryable one (UNAVAILABLE, ...) past the retry window.
        OtlpExportFailed = "otlp_export_failed",
        /// OTLP export: records the collector accepted the request for but rejected
        /// (`partial_success.rejected_log_records`).
        OtlpRejected = "otlp_rejected",
        /// OTLP export: record updates not exported because the exporter's subscription to the
        /// store fell behind and was dropped: the update that did not fit and every one
        /// published until it subscribed again (the store counts them for it).
        OtlpLagged = "otlp_lagged",
        /// A DNS lookup the kernel found answered well could not be counted: its table of
        /// per-cgroup counters was full (more cgroups with lookups in one drain interval than
        /// it holds). The pod's "N of M lookups succeeded" misses it.
        DnsAnsweredFull = "dns_answered_full",
        /// A kernel program was not run for an event because it was already running on that
        /// CPU (an interrupt came while it ran, and the kernel never nests a program in
        /// itself: its `recursion_misses`). That drop, reset or state change was not seen.
        KernelRunsSkipped = "kernel_runs_skipped",
        /// Repeats of a reported DNS failure that the kernel could not count (its table of
        /// repeats was full for the drain interval), or that the agent could no longer name.
        /// Those failed lookups are missing from the pod's evidence and counters.
        DnsRepeatsLost = "dns_repeats_lost",
        /// DNS lookups whose per-pod tallies (the successes and failures behind each pod's
        /// lookup counters) could not reach the store (its channel was full).
        DnsLookupsLost = "dns_lookups_lost",
        /// Records whose newest change never reached the persistent store: the disk kept
        /// failing (full, I/O errors) and the backlog of changes waiting for it was full, so
        /// the least recently changed record was given up (or what was left at shutdown).
        /// Memory still has them; after a restart such a record is older, missing, or (a
        /// removal given up) back.
        StoreBacklogFull = "store_backlog_full",
        /// DNS lookups whose pod's counters were forgotten to make room: the store keeps the
        /// counters of at most `DNS_LOOKUP_PODS` (8,192) pods and drops the least recently
        /// updated pod's; counted by that pod's lookups. Its "N of M lookups succeeded" is gone.
        DnsLookupsForgotten = "dns_lookups_forgotten",
        /// DNS lookups the kernel counted for a socket attribution could not tie to a pod (a
        /// host process's, or a pod's whose metadata never came): in no pod's counters. Most
        /// are the node's own lookups, so they never make an answer incomplete.
        DnsLookupsUnattributed = "dns_lookups_unattributed",
    }
}

/// Number of [`Loss`] variants.
pub const LOSS_KINDS: usize = Loss::ALL.len();

impl Loss {
    /// Words for people: "{n} {describe}".
    pub fn describe(self) -> &'static str {
        match self {
            Loss::RingBufferFull => "ring buffer full",
            Loss::ConnectTableFull => "connect table full",
            Loss::KernelReadErrors => "unreadable in the kernel",
            Loss::FlowTableFull => "sent one by one (flow table full)",
            Loss::DecodeErrors => "undecodable",
            Loss::PipelineFull => "pipeline full",
            Loss::StoreChannelFull => "store channel full",
            Loss::StoreEvicted => "evicted from store",
            Loss::AttributionExpired => "stored unattributed (pod metadata missing)",
            Loss::WatchLagged => "watch updates missed by slow watchers (disconnected)",
            Loss::CgroupWalkCapped => "cgroup walks cut short",
            Loss::DnsRingFull => "DNS packets not copied (DNS ring buffer full)",
            Loss::DnsMalformed => "DNS packets unparsable",
            Loss::DnsTruncated => "DNS payloads longer than the copy (question read)",
            Loss::DnsInflightEvicted => "DNS queries evicted before their outcome",
            Loss::StoreUnreadable => "stored records unreadable after a restart",
            Loss::OtlpQueueFull => "record updates not exported (OTLP queue full)",
            Loss::OtlpExportFailed => "records not exported (OTLP export failed)",
            Loss::OtlpRejected => "records rejected by the OTLP collector",
            Loss::OtlpLagged => "record updates not exported (OTLP exporter fell behind the store)",
            Loss::DnsAnsweredFull => "DNS lookups answered well not counted (kernel table full)",
            Loss::KernelRunsSkipped => "kernel program runs skipped (nested on one CPU)",
            Loss::DnsRepeatsLost => "repeated DNS failures not counted (kernel table full)",
            Loss::DnsLookupsLost => "DNS lookups missing from pods' counters (store channel full)",
            Loss::StoreBacklogFull => "records not written to disk (disk failing, backlog full)",
            Loss::DnsLookupsForgotten => {
                "DNS lookups forgotten with their pod's counters (over 8,192 pods)"
            }
            Loss::DnsLookupsUnattributed => {
                "DNS lookups in no pod's counters (no pod known: host processes or metadata missing)"
            }
        }
    }

    /// Whether this loss can make a query's answer incomplete. A slow watcher's lost updates do
    /// not change what Query sees, nor do records the OTLP exporter could not send, nor records
    /// the disk could not take (memory still has them; a failing disk seldom keeps the counter
    /// across the restart that would miss them, so it could not warn then).
    pub fn affects_answers(self) -> bool {
        !matches!(
            self,
            Loss::WatchLagged
                | Loss::FlowTableFull
                | Loss::DnsTruncated
                | Loss::OtlpQueueFull
                | Loss::OtlpExportFailed
                | Loss::OtlpRejected
                | Loss::OtlpLagged
                | Loss::StoreBacklogFull
                | Loss::DnsLookupsUnattributed
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts per [`Loss`], a point-in-time copy, with when each last grew.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounts {
    counts: [u64; LOSS_KINDS],
    last: [Option<SystemTime>; LOSS_KINDS],
    /// Since when the counters count: this agent's start, or with a persistent store the first
    /// start of an agent on it (the counters continue across restarts).
    since: Option<SystemTime>,
}

impl LossCounts {
    pub fn get(&self, loss: Loss) -> u64 {
        self.counts.get(loss.index()).copied().unwrap_or(0)
    }
    pub fn set(&mut self, loss: Loss, n: u64) {
        if let Some(slot) = self.counts.get_mut(loss.index()) {
            *slot = n;
        }
    }
    /// When the counter last grew.
    pub fn last(&self, loss: Loss) -> Option<SystemTime> {
        self.last.get(loss.index()).copied().flatten()
    }
    pub fn set_last(&mut self, loss: Loss, at: Option<SystemTime>) {
        if let Some(slot) = self.last.get_mut(loss.index()) {
            *slot = at;
        }
    }
    /// Since when the counters count (`None`: not said).
    pub fn since(&self) -> Option<SystemTime> {
        self.since
    }
    pub fn set_since(&mut self, since: Option<SystemTime>) {
        self.since = since;
    }
    /// Every loss with its count, in [`Loss::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Loss, u64)> + '_ {
        Loss::ALL.iter().map(|l| (*l, self.get(*l)))
    }
    /// The non-zero losses that can make an answer incomplete.
    pub fn affecting_answers(&self) -> Vec<(Loss, u64)> {
        self.iter()
            .filter(|(l, n)| *n > 0 && l.affects_answers())
            .collect()
    }
}

/// Every loss counter (the kernel's are added by the reader as they grow), cumulative since
/// [`Counters::since`] (this start, or the first start of an agent on the persistent store,
/// which keeps them across restarts: [`Counters::restore`]), with the time each last grew.
/// Relaxed atomics: they are statistics.
#[derive(Debug, Default)]
pub struct Counters {
    events_received: AtomicU64,
    /// DNS packets read from the DNS ring (each one the agent parsed).
    dns_records: AtomicU64,
    /// DNS lookups the kernel matched to their answers and counted itself.
    dns_kernel_lookups: AtomicU64,
    /// Drains of the kernel's flow tables, of its DNS tables, and sweeps of the cgroup
    /// sampler: how far each of the agent's periodic reads has come (Status, the metrics; a
    /// test waits on them instead of sleeping).
    flow_table_drains: AtomicU64,
    dns_table_drains: AtomicU64,
    cgroup_sweeps: AtomicU64,
    lost: [AtomicU64; LOSS_KINDS],
    /// Unix milliseconds of the latest growth, 0 for never.
    last_ms: [AtomicU64; LOSS_KINDS],
    /// Unix milliseconds since which the counters count, 0 until [`Counters::begin`].
    since_ms: AtomicU64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

fn from_unix_ms(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

impl Counters {
    pub fn add(&self, loss: Loss, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(c) = self.lost.get(loss.index()) {
            c.fetch_add(n, Relaxed);
        }
        if let Some(t) = self.last_ms.get(loss.index()) {
            t.fetch_max(unix_ms(SystemTime::now()), Relaxed);
        }
    }

    /// Puts back counters kept from before a restart: their counts are added to what was
    /// counted since, their times kept when newer, and they count since `saved.since()`.
    pub fn restore(&self, saved: &LossCounts) {
        for l in Loss::ALL {
            if let Some(c) = self.lost.get(l.index()) {
                c.fetch_add(saved.get(*l), Relaxed);
            }
            if let (Some(t), Some(last)) = (self.last_ms.get(l.index()), saved.last(*l)) {
                t.fetch_max(unix_ms(last), Relaxed);
            }
        }
        if let Some(since) = saved.since() {
            let ms = unix_ms(since);
            let _ = self
                .since_ms
                .fetch_update(Relaxed, Relaxed, |now| match now {
                    0 => Some(ms),
                    now => Some(now.min(ms)),
                });
        }
    }

    /// The counters count since `at`, unless they already count since earlier (restored).
    pub fn begin(&self, at: SystemTime) {
        let _ = self
            .since_ms
            .compare_exchange(0, unix_ms(at), Relaxed, Relaxed);
    }

    /// Since when the counters count (`None` before [`Counters::begin`]).
    pub fn since(&self) -> Option<SystemTime> {
        from_unix_ms(self.since_ms.load(Relaxed))
    }
    pub fn add_events_received(&self, n: u64) {
        self.events_received.fetch_add(n, Relaxed);
    }
    pub fn events_received(&self) -> u64 {
        self.events_received.load(Relaxed)
    }
    pub fn add_dns_records(&self, n: u64) {
        self.dns_records.fetch_add(n, Relaxed);
    }
    pub fn dns_records(&self) -> u64 {
        self.dns_records.load(Relaxed)
    }
    pub fn add_dns_kernel_lookups(&self, n: u64) {
        self.dns_kernel_lookups.fetch_add(n, Relaxed);
    }
    pub fn dns_kernel_lookups(&self) -> u64 {
        self.dns_kernel_lookups.load(Relaxed)
    }
    /// The reader drained the kernel's flow tables: everything the old generation counted is
    /// in attribution's channel (or counted as lost).
    pub fn flow_table_drained(&self) {
        self.flow_table_drains.fetch_add(1, Relaxed);
    }
    pub fn flow_table_drains(&self) -> u64 {
        self.flow_table_drains.load(Relaxed)
    }
    /// The DNS task drained the kernel's DNS tables and handed the pods' lookup counters on.
    pub fn dns_table_drained(&self) {
        self.dns_table_drains.fetch_add(1, Relaxed);
    }
    pub fn dns_table_drains(&self) -> u64 {
        self.dns_table_drains.load(Relaxed)
    }
    /// The cgroup sampler read every sampled container and handed what it found on.
    pub fn cgroup_swept(&self) {
        self.cgroup_sweeps.fetch_add(1, Relaxed);
    }
    pub fn cgroup_sweeps(&self) -> u64 {
        self.cgroup_sweeps.load(Relaxed)
    }
    pub fn snapshot(&self) -> LossCounts {
        let mut out = LossCounts::default();
        for l in Loss::ALL {
            out.set(*l, self.get(*l));
            let ms = self.last_ms.get(l.index()).map_or(0, |t| t.load(Relaxed));
            out.set_last(*l, from_unix_ms(ms));
        }
        out.since = self.since();
        out
    }
    pub fn get(&self, loss: Loss) -> u64 {
        self.lost.get(loss.index()).map_or(0, |c| c.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_name() {
        let c = Counters::default();
        c.add(Loss::PipelineFull, 2);
        c.add(Loss::WatchLagged, 1);
        let s = c.snapshot();
        assert_eq!(s.get(Loss::PipelineFull), 2);
        assert!(s.last(Loss::PipelineFull).is_some());
        assert_eq!(s.last(Loss::DecodeErrors), None);
        assert_eq!(s.affecting_answers(), vec![(Loss::PipelineFull, 2)]);
        assert_eq!(s.iter().count(), LOSS_KINDS);
        let names: Vec<_> = Loss::ALL.iter().map(|l| l.as_str()).collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique);
    }

    /// Drains and sweeps count this start's progress: apart from the losses, never restored.
    #[test]
    fn drains_and_sweeps_count_apart_from_the_losses() {
        let c = Counters::default();
        c.flow_table_drained();
        c.flow_table_drained();
        c.dns_table_drained();
        c.cgroup_swept();
        assert_eq!(
            (
                c.flow_table_drains(),
                c.dns_table_drains(),
                c.cgroup_sweeps()
            ),
            (2, 1, 1)
        );
        assert!(c.snapshot().iter().all(|(_, n)| n == 0), "no loss");
        let saved = Counters::default();
        saved.flow_table_drained();
        c.restore(&saved.snapshot());
        assert_eq!(c.flow_table_drains(), 2, "not carried over a restart");
    }

    #[test]
    fn restored_counters_continue_from_the_first_start() {
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let before = Counters::default();
        before.begin(first);
        before.add(Loss::StoreEvicted, 3);
        let saved = before.snapshot();

        let after = Counters::default();
        after.add(Loss::StoreEvicted, 1);
        after.restore(&saved);
        after.begin(first + Duration::from_secs(60));
        let s = after.snapshot();
        assert_eq!(s.get(Loss::StoreEvicted), 4);
        assert_eq!(s.since(), Some(first));
        assert!(s.last(Loss::StoreEvicted).is_some());
    }
}
