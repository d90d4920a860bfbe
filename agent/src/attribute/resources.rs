//! Attribution of resource evidence: OOM victims from the kernel (by the victim's cgroup, read
//! in the kernel) and the cgroupfs samplers' findings (by the pod UID and container ID their
//! cgroup path names: exact, no lookup).
//!
//! One kill, one record: the kernel event names the victim at once; the container's OOM
//! counter confirms it at the next sample. A counter increase first consumes the kernel kills
//! it confirms; what is left (kills the kernel event did not report: no eBPF, or a victim the
//! program could not read) waits [`COUNTER_HOLD`] for a late kernel event (the ring buffer or
//! the cgroup lookup may lag the sample), then is recorded with what the counter knows.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant, SystemTime},
};

use super::{Attributor, CgroupLookup, Now};
use crate::{
    cgroup::ContainerRef,
    event::{OomCounts, OomVictim, Sample, TimedEvent},
    evidence::{Attribution, Detail, Occurrence, OomKill, OomSource, Process, Subject},
};

/// How long counted kills wait for their kernel event before being recorded without a victim.
pub const COUNTER_HOLD: Duration = Duration::from_secs(3);
/// How long a kernel-seen kill waits for its counter confirmation (samples come every
/// interval; an unconfirmed kill must not confirm a much later one).
const UNCONFIRMED_TTL: Duration = Duration::from_secs(120);
/// Bounds of the join state.
const JOIN_CAPACITY: usize = 4096;
const PER_CONTAINER: usize = 64;

#[derive(Debug)]
struct Held {
    kills: u64,
    until: Instant,
    at: SystemTime,
    counts: OomCounts,
}

/// Kernel kills awaiting confirmation and counted kills awaiting their kernel event.
#[derive(Debug, Default)]
pub(super) struct OomJoin {
    unconfirmed: HashMap<ContainerRef, VecDeque<Instant>>,
    held: HashMap<ContainerRef, Held>,
}

impl OomJoin {
    /// A kernel-seen kill: matches a held counted kill (and takes what the counter knows), or
    /// waits for the counter.
    fn kernel_kill(&mut self, key: ContainerRef, now: Instant, detail: &mut OomKill) {
        if let Some(held) = self.held.get_mut(&key) {
            held.kills = held.kills.saturating_sub(1);
            let c = &held.counts;
            detail.memory_limit_bytes = detail.memory_limit_bytes.or(c.limit_bytes);
            detail.memory_usage_bytes = detail.memory_usage_bytes.or(c.usage_bytes);
            if c.group.is_some() {
                detail.group_kill = c.group;
            }
            if held.kills == 0 {
                self.held.remove(&key);
            }
            return;
        }
        if self.unconfirmed.len() >= JOIN_CAPACITY {
            self.unconfirmed.clear();
        }
        let q = self.unconfirmed.entry(key).or_default();
        if q.len() >= PER_CONTAINER {
            q.pop_front();
        }
        q.push_back(now);
    }

    /// A counter increase: confirms kernel kills first; holds the rest.
    fn counted(&mut self, counts: &OomCounts, at: SystemTime, now: Instant) {
        let mut left = counts.kills;
        if let Some(q) = self.unconfirmed.get_mut(&counts.container) {
            q.retain(|t| now.saturating_duration_since(*t) < UNCONFIRMED_TTL);
            while left > 0 && q.pop_front().is_some() {
                left -= 1;
            }
            if q.is_empty() {
                self.unconfirmed.remove(&counts.container);
            }
        }
        if left == 0 {
            return;
        }
        if self.held.len() >= JOIN_CAPACITY {
            // Never silently: the tick records everything held, at once.
            for h in self.held.values_mut() {
                h.until = now;
            }
        }
        let held = self
            .held
            .entry(counts.container.clone())
            .or_insert_with(|| Held {
                kills: 0,
                until: now + COUNTER_HOLD,
                at,
                counts: counts.clone(),
            });
        held.kills = held.kills.saturating_add(left);
        held.at = at;
        held.counts = OomCounts {
            kills: held.kills,
            ..counts.clone()
        };
    }

    /// Counted kills whose wait ran out, and forgets stale unconfirmed kernel kills.
    fn expired(&mut self, now: Instant) -> Vec<(ContainerRef, Held)> {
        self.unconfirmed.retain(|_, q| {
            q.retain(|t| now.saturating_duration_since(*t) < UNCONFIRMED_TTL);
            !q.is_empty()
        });
        let due: Vec<ContainerRef> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| self.held.remove(&k).map(|h| (k, h)))
            .collect()
    }
}

impl Attributor {
    /// What a cgroupfs sampler found; `None`: wait for metadata.
    pub(super) fn sample(
        &mut self,
        event: &TimedEvent,
        sample: &Sample,
        now: Now,
        last_chance: bool,
    ) -> Option<Vec<Occurrence>> {
        match sample {
            Sample::Throttled {
                container,
                throttling,
            } => {
                let subject = self.container_subject(container, None, last_chance)?;
                Some(vec![Occurrence {
                    at: event.at,
                    first_at: event.first_at.min(event.at),
                    count: 1,
                    subject,
                    detail: Detail::CpuThrottling(throttling.clone()),
                }])
            }
            Sample::OomKills(counts) => {
                self.oom.counted(counts, event.at, now.mono);
                Some(Vec::new())
            }
        }
    }

    /// The subject of a container the samplers named.
    fn container_subject(
        &self,
        c: &ContainerRef,
        process: Option<Process>,
        last_chance: bool,
    ) -> Option<Subject> {
        match self.index.by_uid(&c.pod_uid) {
            Some(pod) => Some(Subject {
                pod: Some(pod.pod.clone()),
                container: pod.containers.get(&*c.container_id).cloned(),
                process,
                attribution: Attribution::Cgroup,
            }),
            None if last_chance => Some(Subject::unattributed(process)),
            None => None,
        }
    }

    pub(super) fn oom_victim(
        &mut self,
        event: &TimedEvent,
        v: &OomVictim,
        now: Now,
        last_chance: bool,
    ) -> Option<Vec<Occurrence>> {
        let process = Some(Process {
            pid: v.tgid,
            comm: self.strings.get(&v.comm),
        });
        let mut detail = OomKill {
            main_process: v.main_process,
            memory_limit_bytes: v.memcg_limit_bytes,
            memory_usage_bytes: v.memcg_usage_bytes,
            victim_rss_bytes: v.rss_bytes,
            oom_score_adj: Some(v.oom_score_adj),
            group_kill: v.oom_group,
            source: OomSource::Kernel,
        };
        let lookup = match v.cgroup_id {
            Some(id) => self.lookup_cgroup(id, now),
            None => CgroupLookup::Gone,
        };
        let subject = match lookup {
            CgroupLookup::Pod(identity) => {
                let key = identity.container_id.as_ref().map(|cid| ContainerRef {
                    pod_uid: identity.pod_uid.as_str().into(),
                    container_id: cid.as_str().into(),
                });
                let subject = match &key {
                    Some(key) => self.container_subject(key, process, last_chance)?,
                    None => match self.index.by_uid(&identity.pod_uid) {
                        Some(pod) => Subject {
                            pod: Some(pod.pod.clone()),
                            container: None,
                            process,
                            attribution: Attribution::Cgroup,
                        },
                        None if last_chance => Subject::unattributed(process),
                        None => return None,
                    },
                };
                if let Some(key) = key {
                    self.oom.kernel_kill(key, now.mono, &mut detail);
                }
                subject
            }
            CgroupLookup::Pending if !last_chance => return None,
            // A host process (or a cgroup already gone): node-level evidence.
            _ => Subject::unattributed(process),
        };
        Some(vec![Occurrence::single(
            event.at,
            subject,
            Detail::OomKill(detail),
        )])
    }

    /// Records counted kills whose kernel event never came.
    pub(super) fn oom_tick(&mut self, now: Now) -> Vec<Occurrence> {
        self.oom
            .expired(now.mono)
            .into_iter()
            .filter_map(|(key, held)| {
                let subject = self.container_subject(&key, None, true)?;
                Some(Occurrence {
                    at: held.at,
                    first_at: held.at,
                    count: held.kills.max(1),
                    subject,
                    detail: Detail::OomKill(OomKill {
                        main_process: None,
                        memory_limit_bytes: held.counts.limit_bytes,
                        memory_usage_bytes: held.counts.usage_bytes,
                        victim_rss_bytes: None,
                        oom_score_adj: None,
                        group_kill: held.counts.group,
                        source: OomSource::Counter,
                    }),
                })
            })
            .collect()
    }
}
