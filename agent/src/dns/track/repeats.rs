//! The kernel's counting of repeated failures: which failures the kernel counts for the
//! tracker (a lookup failing the same way again and again costs one map update, not a record
//! to the agent), what it counted, and when it stops.

use super::{HeldNx, KNOWN_MAX, Key, Known, NXDOMAIN, REFUSED, SERVFAIL, Tracker, add_lookups};
use crate::{
    event::Finding,
    evidence::{DnsOutcome, Protocol},
    loss::Loss,
    probes::dns_repeats::{RepeatChange, RepeatKey, Repeated},
};

/// Drain intervals a failure may go without repeats before the kernel stops counting it.
pub(super) const REPEAT_IDLE_DRAINS: u32 = 60;

impl Tracker {
    pub(super) fn count_in_kernel(&mut self, repeat: RepeatKey, key: &Key, protocol: Protocol) {
        if let Some(k) = self.known.get_mut(&repeat) {
            if k.stopping {
                k.stopping = false;
                k.idle = 0;
                self.changes.push(RepeatChange::Count(repeat));
            }
            return;
        }
        if self.known.len() >= KNOWN_MAX {
            return;
        }
        self.known.insert(
            repeat,
            Known {
                key: key.clone(),
                protocol,
                idle: 0,
                stopping: false,
            },
        );
        if repeat.rcode == NXDOMAIN {
            self.nx_known.entry(repeat.cgroup).or_default().push(repeat);
        }
        self.changes.push(RepeatChange::Count(repeat));
    }

    pub(super) fn stop_in_kernel(&mut self, repeat: RepeatKey) {
        if let Some(k) = self.known.get_mut(&repeat)
            && !k.stopping
        {
            k.stopping = true;
            k.idle = 0;
            self.changes.push(RepeatChange::Stop(repeat));
        }
    }

    pub fn take_repeat_changes(&mut self) -> Vec<RepeatChange> {
        std::mem::take(&mut self.changes)
    }

    pub fn repeated_in_kernel(&mut self, r: Repeated) -> Vec<Finding> {
        let Repeated {
            key: repeat,
            count,
            latency_sum,
            latency_max,
            first_ns,
            last_ns,
        } = r;
        let Some(known) = self.known.get_mut(&repeat) else {
            self.counters.add(Loss::DnsRepeatsLost, count);
            return Vec::new();
        };
        self.counters.add_dns_kernel_lookups(count);
        // Counted before the kernel stopped: from then on they come up one by one.
        let stopping = known.stopping;
        if !stopping {
            known.idle = 0;
        }
        let (key, protocol) = (known.key.clone(), known.protocol);
        let mean = latency_sum / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
        {
            let t = self.tally(key.cgroup, key.client.ip());
            t.failed = t.failed.saturating_add(count);
            add_lookups(t, count, latency_sum, latency_max);
        }
        let outcome = match repeat.rcode {
            NXDOMAIN => {
                return self.hold_nx(
                    HeldNx {
                        key,
                        first_ns,
                        at_ns: last_ns,
                        latency_ns: crate::kernel::ns(mean),
                        protocol,
                        count,
                        repeat: (!stopping).then_some(repeat),
                    },
                    true,
                );
            }
            SERVFAIL => DnsOutcome::Servfail,
            REFUSED => DnsOutcome::Refused,
            _ => DnsOutcome::Error,
        };
        vec![Finding {
            outcome,
            at_ns: last_ns,
            first_ns,
            cgroup_id: key.cgroup,
            client: key.client,
            server: key.server,
            protocol,
            query: key.qname.clone(),
            qtype: key.qtype,
            rcode: Some(repeat.rcode),
            latency: Some(mean),
            reached_server: None,
            server_answered: false,
            server_cgroup: None,
            search_nxdomains: 0,
            count,
        }]
    }

    pub fn age_repeats(&mut self) {
        let mut forget = Vec::new();
        for (repeat, k) in &mut self.known {
            k.idle = k.idle.saturating_add(1);
            if k.stopping {
                // Two drains: the generation counting when it stopped, and the one after.
                if k.idle > 2 {
                    forget.push(*repeat);
                }
            } else if k.idle > REPEAT_IDLE_DRAINS {
                k.stopping = true;
                k.idle = 0;
                self.changes.push(RepeatChange::Stop(*repeat));
            }
        }
        for repeat in forget {
            self.known.remove(&repeat);
            if let Some(keys) = self.nx_known.get_mut(&repeat.cgroup) {
                keys.retain(|k| *k != repeat);
                if keys.is_empty() {
                    self.nx_known.remove(&repeat.cgroup);
                }
            }
        }
    }
}
