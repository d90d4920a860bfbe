//! The search-path fold: NXDOMAIN answers of a resolver walking its search list are held until
//! the walk ends, then reported as one finding (`search_expansion` when a later name of the walk
//! was answered, `nxdomain` when none was).

use super::{HELD_NAMES_MAX, HeldNx, Key, NOERROR, NX_REPEATS_TO_COUNT, NXDOMAIN, Tracker};
use std::time::Duration;

use crate::{
    event::Finding,
    evidence::{DnsOutcome, Protocol},
    probes::dns_repeats::RepeatKey,
};

impl Tracker {
    pub(super) fn hold_nx(&mut self, nx: HeldNx, from_kernel: bool) -> Vec<Finding> {
        let group = self
            .search
            .entry((nx.key.cgroup, nx.key.client.ip()))
            .or_default();
        group.last_ns = group.last_ns.max(nx.at_ns);
        let mut out = Vec::new();
        if group.held.len() >= HELD_NAMES_MAX
            && !group.held.iter().any(|h| h.same_lookup(&nx))
            && let Some(oldest) = group
                .held
                .iter()
                .enumerate()
                .min_by_key(|(_, h)| h.first_ns)
                .map(|(i, _)| i)
        {
            out = nxdomain_findings(vec![group.held.swap_remove(oldest)]);
        }
        let merged = match group.held.iter_mut().find(|h| h.same_lookup(&nx)) {
            Some(h) => {
                h.count = h.count.saturating_add(nx.count);
                h.first_ns = h.first_ns.min(nx.first_ns);
                if nx.at_ns >= h.at_ns {
                    h.at_ns = nx.at_ns;
                    h.latency_ns = nx.latency_ns;
                }
                h.repeat = h.repeat.or(nx.repeat);
                h.clone()
            }
            None => {
                group.held.push(nx.clone());
                nx
            }
        };
        if !from_kernel
            && merged.count >= NX_REPEATS_TO_COUNT
            && let Some(repeat) = merged.repeat
        {
            self.count_in_kernel(repeat, &merged.key, merged.protocol);
        }
        out
    }

    pub(super) fn stop_expansions_of(&mut self, answered: &Key) {
        let Some(keys) = self.nx_known.get(&answered.cgroup) else {
            return;
        };
        let expansions: Vec<RepeatKey> = keys
            .iter()
            .filter(|r| {
                self.known.get(r).is_some_and(|k| {
                    !k.stopping
                        && k.key.client.ip() == answered.client.ip()
                        && expansion_of(&k.key.qname, &answered.qname)
                })
            })
            .copied()
            .collect();
        for repeat in expansions {
            self.stop_in_kernel(repeat);
        }
    }

    pub(super) fn fold_search(
        &mut self,
        answered: &Key,
        at_ns: u64,
        protocol: Protocol,
    ) -> Option<Finding> {
        let group_key = (answered.cgroup, answered.client.ip());
        let group = self.search.get_mut(&group_key)?;
        let (related, rest): (Vec<HeldNx>, Vec<HeldNx>) = group
            .held
            .drain(..)
            .partition(|h| expansion_of(&h.key.qname, &answered.qname));
        group.held = rest;
        if group.held.is_empty() {
            self.search.remove(&group_key);
        }
        // Search expansions: each must come up to be folded.
        for repeat in related.iter().filter_map(|h| h.repeat) {
            self.stop_in_kernel(repeat);
        }
        let first_ns = related.iter().map(|h| h.first_ns).min()?;
        let folded: u64 = related.iter().map(|h| h.count).sum();
        Some(Finding {
            outcome: DnsOutcome::SearchExpansion,
            at_ns,
            first_ns,
            cgroup_id: answered.cgroup,
            client: answered.client,
            server: answered.server,
            protocol,
            query: answered.qname.clone(),
            qtype: answered.qtype,
            rcode: Some(NOERROR),
            latency: Some(Duration::from_nanos(at_ns.saturating_sub(first_ns))),
            reached_server: None,
            server_answered: false,
            server_cgroup: None,
            search_nxdomains: u32::try_from(folded).unwrap_or(u32::MAX),
            count: 1,
        })
    }
}

/// The labels of a name, lowercased comparison left to the caller.
pub(super) fn labels(name: &str) -> Vec<&str> {
    name.split('.').filter(|l| !l.is_empty()).collect()
}

/// Whether `nx` is a search expansion related to `answered`: after their common leading labels
/// (at least one), `answered` has no labels left or a suffix of what `nx` has left (search
/// domains of a pod get shorter: `ns.svc.cluster.local`, `svc.cluster.local`, `cluster.local`).
pub fn expansion_of(nx: &str, answered: &str) -> bool {
    let (n, a) = (labels(nx), labels(answered));
    if n.len() <= a.len() && n == a {
        return false;
    }
    let common = n
        .iter()
        .zip(&a)
        .take_while(|(x, y)| x.eq_ignore_ascii_case(y))
        .count();
    if common == 0 {
        return false;
    }
    let (n_rest, a_rest) = (
        n.get(common..).unwrap_or_default(),
        a.get(common..).unwrap_or_default(),
    );
    a_rest.len() < n_rest.len()
        && n_rest
            .iter()
            .rev()
            .zip(a_rest.iter().rev())
            .all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// The leading labels two names share, when they share any.
pub(super) fn common_prefix(a: &str, b: &str) -> Option<String> {
    let (a, b) = (labels(a), labels(b));
    let n = a
        .iter()
        .zip(&b)
        .take_while(|(x, y)| x.eq_ignore_ascii_case(y))
        .count();
    a.get(..n).filter(|l| !l.is_empty()).map(|l| l.join("."))
}

/// NXDOMAINs nothing answered after: one finding per name asked (the shortest of each related
/// set), counting its expansions.
pub(super) fn nxdomain_findings(mut held: Vec<HeldNx>) -> Vec<Finding> {
    held.sort_by_key(|h| (h.key.qname.len(), h.first_ns));
    let mut out = Vec::new();
    while let Some(base) = (!held.is_empty()).then(|| held.remove(0)) {
        let (related, rest): (Vec<HeldNx>, Vec<HeldNx>) = held.into_iter().partition(|h| {
            *h.key.qname == *base.key.qname || expansion_of(&h.key.qname, &base.key.qname)
        });
        held = rest;
        // The name as the application asked it: what every name tried begins with.
        let query = related.iter().fold(base.key.qname.clone(), |asked, h| {
            common_prefix(&asked, &h.key.qname).map_or(asked, Into::into)
        });
        let first_ns = related
            .iter()
            .map(|h| h.first_ns)
            .fold(base.first_ns, u64::min);
        let at_ns = related.iter().map(|h| h.at_ns).fold(base.at_ns, u64::max);
        // Lookups: how often the shortest name was asked with the base's type (a resolver asks
        // each name once per walk); the other answers were its expansions.
        let walks = base.count.max(1)
            + related
                .iter()
                .filter(|h| *h.key.qname == *base.key.qname && h.key.qtype == base.key.qtype)
                .map(|h| h.count)
                .sum::<u64>();
        let expansions: u64 = related
            .iter()
            .filter(|h| *h.key.qname != *base.key.qname)
            .map(|h| h.count)
            .sum();
        out.push(Finding {
            outcome: DnsOutcome::Nxdomain,
            at_ns,
            first_ns,
            cgroup_id: base.key.cgroup,
            client: base.key.client,
            server: base.key.server,
            protocol: base.protocol,
            query,
            qtype: base.key.qtype,
            rcode: Some(NXDOMAIN),
            latency: Some(Duration::from_nanos(base.latency_ns)),
            reached_server: None,
            server_answered: false,
            server_cgroup: None,
            search_nxdomains: u32::try_from(expansions / walks).unwrap_or(u32::MAX),
            count: walks,
        });
    }
    out
}
