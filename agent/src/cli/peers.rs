//! The other side of a pod's failed connections. A node sees one end of a flow: a refusal
//! whose reset came from another node (`cause: unknown`) or a connection that timed out cannot
//! be explained from the pod's node alone. The destination's node can say whether its stack
//! refused (nothing listens) or where the packets were dropped, so `query --pod` asks the agent
//! of each such destination pod's node too, and keeps only its records of these flows.

use std::{collections::BTreeSet, net::IpAddr, time::SystemTime};

use crate::evidence::Evidence;

/// The flows to look up on the other side: (this pod's addresses, the destinations').
pub fn other_side_flows(evidence: &[Evidence]) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let mut own = BTreeSet::new();
    let mut destinations = BTreeSet::new();
    for e in evidence.iter().filter(|e| e.detail.needs_other_side()) {
        if let Some((_, src, dst, _)) = e.detail.endpoints() {
            own.insert(src.ip());
            destinations.insert(dst.ip());
        }
    }
    (own, destinations)
}

/// The pod holding a destination now, and this pod's records to that destination it cannot
/// be the other side of: what an answer says instead of showing that pod's side for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotShown {
    /// The destination.
    pub ip: IpAddr,
    /// The pod holding it now, (namespace, name).
    pub holder: (String, String),
    /// When that pod started (`None`: unknown, so none of the records can be said to be its).
    pub started: Option<SystemTime>,
    /// This pod's records to `ip` whose last occurrence is before `started`.
    pub records: usize,
}

/// Of this pod's records to `ip` that need the other side, how many the pod holding `ip` now
/// (started at `started`, from the cluster's pod list, which keeps no history of addresses) may
/// be the other side of, and how many it cannot: (its, before it). A record is its when the
/// record's last occurrence is at or after its start; a record whose last occurrence is before
/// it started is all from before it held the address (an earlier holder's, who is unknown).
/// A pod of unknown start is the other side of none.
pub fn held_by(evidence: &[Evidence], ip: IpAddr, started: Option<SystemTime>) -> (usize, usize) {
    let mut its = 0;
    let mut before = 0;
    for e in evidence.iter().filter(|e| e.detail.needs_other_side()) {
        if e.detail
            .endpoints()
            .is_some_and(|(_, _, dst, _)| dst.ip() == ip)
        {
            match started.is_some_and(|s| s <= e.last_seen) {
                true => its += 1,
                false => before += 1,
            }
        }
    }
    (its, before)
}

/// Keeps the records of the destination's side that are about flows from `own`.
/// A folded record (many senders counted together) is kept when one of its named senders is
/// one of `own`, or when it has senders it does not name (`own` may be among them).
pub fn retain_flows_from(evidence: &mut Vec<Evidence>, own: &BTreeSet<IpAddr>) {
    evidence.retain(|e| match &e.folded {
        Some(f) => f.other_senders_count > 0 || f.senders.iter().any(|(ip, _)| own.contains(ip)),
        None => e
            .detail
            .endpoints()
            .is_some_and(|(_, src, _, _)| own.contains(&src.ip())),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{
        Cause, Direction,
        fixtures::{dropped, refused, timeout},
    };

    #[test]
    fn only_unexplained_flows_ask_the_other_side() {
        let evidence = [
            // The destination's stack was seen refusing: explained here.
            refused()
                .src("10.0.0.1:40000")
                .dst("10.0.1.1:5432")
                .evidence(),
            // A reset from another node: only that node can tell.
            refused()
                .src("10.0.0.1:40001")
                .dst("10.0.2.2:5432")
                .cause(Some(Cause::Unknown))
                .evidence(),
            timeout()
                .src("10.0.0.1:40002")
                .dst("10.0.3.3:443")
                .evidence(),
            // An inbound refusal is this pod's own side.
            refused()
                .direction(Direction::Inbound)
                .src("10.0.9.9:1")
                .dst("10.0.0.1:80")
                .cause(Some(Cause::Unknown))
                .evidence(),
        ];
        let (own, destinations) = other_side_flows(&evidence);
        assert_eq!(own.into_iter().collect::<Vec<_>>(), vec![ip("10.0.0.1")]);
        assert_eq!(
            destinations.into_iter().collect::<Vec<_>>(),
            vec![ip("10.0.2.2"), ip("10.0.3.3")]
        );
    }

    #[test]
    fn the_other_side_keeps_only_flows_from_this_pod() {
        let own = BTreeSet::from([ip("10.0.0.1")]);
        let mut theirs = vec![
            refused()
                .direction(Direction::Inbound)
                .src("10.0.0.1:40001")
                .dst("10.0.2.2:5432")
                .evidence(),
            dropped()
                .direction(Direction::Inbound)
                .src("10.0.7.7:1234")
                .dst("10.0.2.2:5432")
                .evidence(),
        ];
        retain_flows_from(&mut theirs, &own);
        assert_eq!(theirs.len(), 1);
    }

    #[test]
    fn a_folded_record_is_this_pods_when_it_names_it_or_may_hide_it() {
        use crate::evidence::Folded;
        let own = BTreeSet::from([ip("10.0.0.1")]);
        let folded = |latest: &str, senders: &[(&str, u64)], others: u64| {
            let mut e = dropped()
                .direction(Direction::Inbound)
                .src(&format!("{latest}:1234"))
                .dst("10.0.2.2:5432")
                .evidence();
            let mut f = Folded::new(ip(senders[0].0), 5432, senders[0].1);
            for (sender, n) in &senders[1..] {
                f.add(ip(sender), 5432, *n);
            }
            f.other_senders_count = others;
            e.folded = Some(Box::new(f));
            e
        };
        let mut theirs = vec![
            // This pod is named, though another sender was the latest.
            folded("10.0.9.9", &[("10.0.0.1", 3), ("10.0.9.9", 1)], 0),
            // Senders beyond the named ones: this pod may be one of them.
            folded("10.0.9.9", &[("10.0.9.8", 3)], 7),
            // Every sender named, none of them this pod, though it is the latest's address
            // family and port.
            folded("10.0.9.9", &[("10.0.9.9", 2)], 0),
        ];
        retain_flows_from(&mut theirs, &own);
        assert_eq!(theirs.len(), 2);
    }

    #[test]
    fn the_pod_holding_a_destination_now_is_the_other_side_of_records_seen_since_it_started() {
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + secs);
        let record = |dst: &str, first: u64, last: u64| {
            let mut e = timeout().src("10.0.0.1:40002").dst(dst).evidence();
            e.first_seen = at(first);
            e.last_seen = at(last);
            e
        };
        let evidence = [
            // Over before the holder started: an earlier holder's.
            record("10.0.3.3:443", 10, 90),
            // Began before it started and went on after: its (the latest occurrences are).
            record("10.0.3.3:443", 80, 150),
            // Entirely since it started.
            record("10.0.3.3:5432", 120, 130),
            // Another destination.
            record("10.0.4.4:443", 10, 20),
        ];
        let holder = ip("10.0.3.3");
        assert_eq!(held_by(&evidence, holder, Some(at(100))), (2, 1));
        assert_eq!(
            held_by(&evidence, holder, Some(at(5))),
            (3, 0),
            "started before every record"
        );
        assert_eq!(
            held_by(&evidence, holder, Some(at(150))),
            (1, 2),
            "a record last seen as it started is its"
        );
        assert_eq!(
            held_by(&evidence, holder, Some(at(200))),
            (0, 3),
            "given the address since: the other side of none"
        );
        assert_eq!(held_by(&evidence, holder, None), (0, 3), "unknown start");
        // Records that need no other side are not counted either way.
        let explained = [refused()
            .src("10.0.0.1:40000")
            .dst("10.0.3.3:5432")
            .evidence()];
        assert_eq!(held_by(&explained, holder, Some(at(0))), (0, 0));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|_| unreachable!("a literal address"))
    }
}
