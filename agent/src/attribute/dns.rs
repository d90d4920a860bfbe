//! From DNS findings and lookup counters to occurrences: the asking pod by its socket's cgroup
//! (exact, hostNetwork pods included), else by the client IP; the server by the cgroup of the
//! server socket on this node that received the query, else by its IP.

use super::{Attributor, CgroupLookup, Clues, Now};
use crate::{
    dns::packet,
    event::{Finding, Tally, TimedEvent},
    evidence::{Detail, Dns, Occurrence, PodRef},
};
use std::sync::Arc;

impl Attributor {
    pub(super) fn dns(
        &mut self,
        event: &TimedEvent,
        d: &Finding,
        now: Now,
        last_chance: bool,
    ) -> Option<Vec<Occurrence>> {
        let clues = Clues {
            cgroup: Some(d.cgroup_id),
            ip: Some(d.client.ip()),
        };
        let subject = self.subject(clues, None, event.at, now, last_chance)?;
        let server_pod = d
            .server_cgroup
            .and_then(|id| self.pod_of_cgroup(id, now))
            .or_else(|| self.peer(d.server.ip(), event.at));
        let detail = Detail::Dns(Dns {
            query: d.query.clone(),
            qtype: packet::qtype_name(d.qtype).into(),
            outcome: d.outcome,
            rcode: d.rcode.map(|r| packet::rcode_name(r).into()),
            client: d.client,
            server: d.server,
            protocol: d.protocol,
            latency_ms: d
                .latency
                .map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
            server_pod,
            reached_server: d.reached_server,
            search_nxdomains: d.search_nxdomains,
        });
        Some(vec![Occurrence {
            at: event.at,
            first_at: event.first_at.min(event.at),
            count: d.count.max(1),
            subject,
            detail,
        }])
    }

    pub(super) fn dns_lookups(
        &mut self,
        event: &TimedEvent,
        t: &Tally,
        now: Now,
        last_chance: bool,
    ) -> Option<Vec<Occurrence>> {
        let clues = Clues {
            cgroup: Some(t.cgroup_id),
            ip: Some(t.client_ip),
        };
        let subject = self.subject(clues, None, event.at, now, last_chance)?;
        // Lookups nobody can be named for are in no pod's counters: counted, by their lookups
        // (a host process's, or a pod's whose metadata never came).
        match subject.pod {
            Some(pod) => self.lookups.push(super::PodLookups {
                at: event.at,
                pod,
                lookups: t.lookups,
            }),
            None => self
                .counters
                .add(crate::loss::Loss::DnsLookupsUnattributed, t.lookups.lookups),
        }
        Some(Vec::new())
    }

    /// The pod a cgroup belongs to, when it is known now (no waiting).
    fn pod_of_cgroup(&mut self, id: u64, now: Now) -> Option<Arc<PodRef>> {
        match self.lookup_cgroup(id, now) {
            CgroupLookup::Pod(identity) => {
                self.index.by_uid(&identity.pod_uid).map(|p| p.pod.clone())
            }
            _ => None,
        }
    }
}
