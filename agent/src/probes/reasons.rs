//! Which kernel drop reasons the agent reports. The kernel drops packets for well over a
//! hundred reasons (`enum skb_drop_reason`, values differ between kernels); most are routine
//! (checksum errors, TCP window housekeeping, sockets closing). The default set is the ones
//! that mean traffic a user cares about was lost and no Kubernetes event will say so:
//!
//! | reason | what it means |
//! | --- | --- |
//! | `NETFILTER_DROP` | an iptables/nftables rule dropped it: NetworkPolicy on most CNIs, or any firewall |
//! | `NO_SOCKET` | nothing listens (UDP; TCP shows as a refused connection instead) |
//! | `TC_INGRESS`, `TC_EGRESS`, `TC_CHAIN_NOTFOUND`, `TC_RECLASSIFY_LOOP` | a tc/eBPF classifier dropped it (Cilium, Calico eBPF, ...) |
//! | `BPF_CGROUP_EGRESS` | a cgroup eBPF program refused to send it |
//! | `SOCKET_FILTER` | a socket filter dropped it |
//! | `SOCKET_RCVBUFF`, `SOCKET_BACKLOG`, `TCP_LISTEN_OVERFLOW` | the receiving application is too slow: its buffer or accept queue was full |
//! | `IP_NOROUTE`, `IP_OUTNOROUTES`, `IP_INNOROUTES`, `IP_RPFILTER`, `IP_INVALID_SOURCE` | no route, or reverse-path filtering |
//! | `NEIGH_FAILED`, `NEIGH_CREATEFAIL`, `NEIGH_QUEUEFULL`, `NEIGH_DEAD` | the next hop never answered ARP/ND |
//! | `QDISC_DROP`, `QDISC_OVERLIMIT` | an egress queue was full (rate limits, bandwidth plugins) |
//! | `XFRM_POLICY`, `SECURITY_HOOK` | IPsec policy or an LSM refused it |
//!
//! `--drop-reasons` widens or narrows the set: `default`, `all`, a list of names, or changes
//! to the default (`+TCP_ZEROWINDOW,-QDISC_DROP`). Names are the kernel's, without the
//! `SKB_DROP_REASON_` prefix; a name this kernel does not have is reported, not an error.

use std::collections::BTreeSet;

/// The default reasons (see the module docs).
pub const DEFAULT_DROP_REASONS: &[&str] = &[
    "NETFILTER_DROP",
    "NO_SOCKET",
    "TC_INGRESS",
    "TC_EGRESS",
    "TC_CHAIN_NOTFOUND",
    "TC_RECLASSIFY_LOOP",
    "BPF_CGROUP_EGRESS",
    "SOCKET_FILTER",
    "SOCKET_RCVBUFF",
    "SOCKET_BACKLOG",
    "TCP_LISTEN_OVERFLOW",
    "IP_NOROUTE",
    "IP_OUTNOROUTES",
    "IP_INNOROUTES",
    "IP_RPFILTER",
    "IP_INVALID_SOURCE",
    "NEIGH_FAILED",
    "NEIGH_CREATEFAIL",
    "NEIGH_QUEUEFULL",
    "NEIGH_DEAD",
    "QDISC_DROP",
    "QDISC_OVERLIMIT",
    "XFRM_POLICY",
    "SECURITY_HOOK",
];

/// Reasons never reported, even with `all`: every packet the kernel frees without an error
/// carries NOT_DROPPED_YET / NOT_SPECIFIED style values.
const NEVER: &[&str] = &["NOT_DROPPED_YET", "NOT_SPECIFIED", "MAX"];

/// What `--drop-reasons` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReasons {
    /// The default set with additions and removals.
    Default {
        add: BTreeSet<String>,
        remove: BTreeSet<String>,
    },
    /// Every reason this kernel has.
    All,
    /// Exactly these.
    Only(BTreeSet<String>),
}

impl Default for DropReasons {
    fn default() -> Self {
        DropReasons::Default {
            add: BTreeSet::new(),
            remove: BTreeSet::new(),
        }
    }
}

impl std::str::FromStr for DropReasons {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        let name = |raw: &str| -> Result<String, String> {
            let n = raw
                .trim_start_matches("SKB_DROP_REASON_")
                .to_ascii_uppercase();
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{raw:?} is not a drop reason name"));
            }
            Ok(n)
        };
        match items.as_slice() {
            [] | ["default"] => Ok(DropReasons::default()),
            ["all"] => Ok(DropReasons::All),
            _ if items.iter().all(|i| i.starts_with(['+', '-'])) => {
                let mut add = BTreeSet::new();
                let mut remove = BTreeSet::new();
                for item in items {
                    let (sign, rest) = item.split_at(1);
                    if sign == "+" {
                        add.insert(name(rest)?);
                    } else {
                        remove.insert(name(rest)?);
                    }
                }
                Ok(DropReasons::Default { add, remove })
            }
            _ if items.iter().any(|i| i.starts_with(['+', '-'])) => Err(
                "mix of names and +/- changes: give a list of names, or only +NAME/-NAME changes to the default"
                    .to_owned(),
            ),
            _ => Ok(DropReasons::Only(
                items.into_iter().map(name).collect::<Result<_, _>>()?,
            )),
        }
    }
}

impl DropReasons {
    /// The values to report on this kernel, from its `(name, value)` pairs, and the asked-for
    /// names it does not have.
    pub fn resolve(&self, kernel: &[(String, u32)]) -> (Vec<(String, u32)>, Vec<String>) {
        let wanted: BTreeSet<String> = match self {
            DropReasons::All => kernel.iter().map(|(n, _)| n.clone()).collect(),
            DropReasons::Only(names) => names.clone(),
            DropReasons::Default { add, remove } => DEFAULT_DROP_REASONS
                .iter()
                .map(|n| (*n).to_owned())
                .chain(add.iter().cloned())
                .filter(|n| !remove.contains(n))
                .collect(),
        };
        let chosen: Vec<(String, u32)> = kernel
            .iter()
            .filter(|(n, _)| wanted.contains(n) && !NEVER.contains(&n.as_str()))
            .cloned()
            .collect();
        let missing = wanted
            .into_iter()
            .filter(|n| !kernel.iter().any(|(k, _)| k == n))
            .filter(|n| {
                !matches!(self, DropReasons::Default { .. })
                    || !DEFAULT_DROP_REASONS.contains(&n.as_str())
            })
            .collect();
        (chosen, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Vec<(String, u32)> {
        [
            ("NOT_SPECIFIED", 2),
            ("NO_SOCKET", 3),
            ("NETFILTER_DROP", 12),
            ("TCP_ZEROWINDOW", 32),
            ("QDISC_DROP", 64),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect()
    }

    fn values(spec: &str) -> (Vec<u32>, Vec<String>) {
        let (chosen, missing) = spec.parse::<DropReasons>().unwrap().resolve(&kernel());
        (chosen.into_iter().map(|(_, v)| v).collect(), missing)
    }

    #[test]
    fn default_all_only_and_changes() {
        assert_eq!(values("default"), (vec![3, 12, 64], vec![]));
        assert_eq!(values(""), (vec![3, 12, 64], vec![]));
        assert_eq!(
            values("all"),
            (vec![3, 12, 32, 64], vec![]),
            "never NOT_SPECIFIED"
        );
        assert_eq!(
            values("NETFILTER_DROP, tcp_zerowindow"),
            (vec![12, 32], vec![])
        );
        assert_eq!(
            values("+TCP_ZEROWINDOW,-QDISC_DROP"),
            (vec![3, 12, 32], vec![])
        );
        assert_eq!(
            values("SKB_DROP_REASON_NETFILTER_DROP,NOPE"),
            (vec![12], vec!["NOPE".to_owned()]),
            "unknown names are reported"
        );
        assert_eq!(values("+NOPE").1, vec!["NOPE".to_owned()]);
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        assert!(
            "NETFILTER_DROP,+X"
                .parse::<DropReasons>()
                .unwrap_err()
                .contains("mix")
        );
        assert!(
            "a b"
                .parse::<DropReasons>()
                .unwrap_err()
                .contains("not a drop reason")
        );
    }
}
