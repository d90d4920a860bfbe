//! Peer-driven records folded together: what a scan or a flood against a pod looks like once
//! its single-port, single-sender records would otherwise crowd out the pod's own evidence.
//!
//! Inbound refusals and drops are caused by whoever sends to the pod, not by the pod. The store
//! keeps a pod's first [`INBOUND_RECORDS`](crate::store::INBOUND_RECORDS) of them as they are
//! (one per sender and port); beyond that, new ones are counted into one folded record per kind,
//! protocol and reason, whose senders and destination ports are tallied here. Every count is
//! exact: the named senders' counts, the occurrences from senders not named
//! ([`Folded::other_senders_count`]), the ports listed and the lowest and highest port; only how
//! many distinct senders and ports there were is bounded (listed up to [`SENDERS_NAMED`] and
//! [`PORTS_LISTED`], then "more").

use std::net::IpAddr;

use serde_json::{Map, Value, json};
use triage_agent_proto::v1 as pb;

use super::wire::ConvertError;

/// Senders a folded record names with their counts (the first distinct ones seen).
pub const SENDERS_NAMED: usize = 16;
/// Destination ports a folded record lists (the first distinct ones seen).
pub const PORTS_LISTED: usize = 64;

/// The senders and ports of a folded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded {
    /// Distinct senders with their occurrence counts, most [`SENDERS_NAMED`], first seen first.
    pub senders: Vec<(IpAddr, u64)>,
    /// Occurrences from senders not named (there were more distinct senders).
    pub other_senders_count: u64,
    /// Distinct destination ports, ascending, most [`PORTS_LISTED`].
    pub ports: Vec<u16>,
    /// More distinct ports were seen than listed.
    pub ports_more: bool,
    pub port_min: u16,
    pub port_max: u16,
}

impl Folded {
    /// The first occurrences folded: `count` from `sender` to `port`.
    pub fn new(sender: IpAddr, port: u16, count: u64) -> Folded {
        Folded {
            senders: vec![(sender, count)],
            other_senders_count: 0,
            ports: vec![port],
            ports_more: false,
            port_min: port,
            port_max: port,
        }
    }

    /// `count` more occurrences from `sender` to `port`.
    pub fn add(&mut self, sender: IpAddr, port: u16, count: u64) {
        let named = self.senders.len();
        match self.senders.iter_mut().find(|(ip, _)| *ip == sender) {
            Some((_, n)) => *n = n.saturating_add(count),
            None if named < SENDERS_NAMED => self.senders.push((sender, count)),
            None => self.other_senders_count = self.other_senders_count.saturating_add(count),
        }
        if let Err(at) = self.ports.binary_search(&port) {
            if self.ports.len() < PORTS_LISTED {
                self.ports.insert(at, port);
            } else {
                self.ports_more = true;
            }
        }
        self.port_min = self.port_min.min(port);
        self.port_max = self.port_max.max(port);
    }

    /// The named senders, most occurrences first.
    pub fn top_senders(&self) -> Vec<(IpAddr, u64)> {
        let mut top = self.senders.clone();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top
    }

    /// "3 senders" / "more than 16 senders".
    pub fn senders_text(&self) -> String {
        if self.other_senders_count > 0 {
            format!("more than {} senders", self.senders.len())
        } else if self.senders.len() == 1 {
            "1 sender".to_owned()
        } else {
            format!("{} senders", self.senders.len())
        }
    }

    /// "port 22" / "5 ports (22-8080)" / "more than 64 ports (1-40000)".
    pub fn ports_text(&self) -> String {
        match (self.ports.len(), self.ports_more) {
            (1, false) => format!("port {}", self.port_min),
            (n, more) => format!(
                "{}{n} ports ({}-{})",
                if more { "more than " } else { "" },
                self.port_min,
                self.port_max
            ),
        }
    }

    /// "10.0.0.5 (39,990), 10.0.0.6 (10)": the first `n` senders by count.
    pub fn top_text(&self, n: usize) -> String {
        let mut parts: Vec<String> = self
            .top_senders()
            .iter()
            .take(n)
            .map(|(ip, count)| format!("{ip} ({count})"))
            .collect();
        let hidden = self.senders.len().saturating_sub(n);
        if hidden > 0 || self.other_senders_count > 0 {
            parts.push("...".to_owned());
        }
        parts.join(", ")
    }

    /// The table cell's addition to the kind's own: "folded: 1 sender, more than 64 ports
    /// (1-40000)".
    pub fn cell(&self) -> String {
        format!("folded: {}, {}", self.senders_text(), self.ports_text())
    }

    /// The JSON fields of a folded record, flat beside the common ones.
    pub fn json_fields(&self, out: &mut Map<String, Value>) {
        out.insert("folded".into(), true.into());
        out.insert(
            "senders".into(),
            Value::Array(
                self.top_senders()
                    .iter()
                    .map(|(ip, count)| json!({"ip": ip.to_string(), "count": count}))
                    .collect(),
            ),
        );
        out.insert(
            "other_senders_count".into(),
            self.other_senders_count.into(),
        );
        out.insert("ports".into(), self.ports.clone().into());
        out.insert("ports_more".into(), self.ports_more.into());
        out.insert("port_min".into(), self.port_min.into());
        out.insert("port_max".into(), self.port_max.into());
    }

    pub fn to_pb(&self) -> pb::Folded {
        pb::Folded {
            senders: self
                .top_senders()
                .iter()
                .map(|(ip, count)| pb::SenderCount {
                    ip: ip.to_string(),
                    count: *count,
                })
                .collect(),
            other_senders_count: self.other_senders_count,
            ports: self.ports.iter().map(|p| u32::from(*p)).collect(),
            ports_more: self.ports_more,
            port_min: u32::from(self.port_min),
            port_max: u32::from(self.port_max),
        }
    }

    /// A peer's folded record. Lists longer than this version keeps are cut (what is cut is
    /// counted as "other" and "more"), so a peer cannot make a record hold more than its bound.
    pub fn from_pb(f: pb::Folded) -> Result<Folded, ConvertError> {
        let port = |v: u32, field: &'static str| {
            u16::try_from(v).map_err(|_| ConvertError::Unknown {
                field,
                value: v.to_string(),
            })
        };
        let mut senders = Vec::new();
        let mut other_senders_count = f.other_senders_count;
        for s in f.senders {
            let ip: IpAddr = s.ip.parse().map_err(|_| ConvertError::BadAddress {
                field: "folded.senders.ip",
                value: s.ip.clone(),
            })?;
            if senders.len() < SENDERS_NAMED && !senders.iter().any(|(known, _)| *known == ip) {
                senders.push((ip, s.count));
            } else {
                other_senders_count = other_senders_count.saturating_add(s.count);
            }
        }
        let mut ports = f
            .ports
            .iter()
            .map(|p| port(*p, "folded.ports"))
            .collect::<Result<Vec<u16>, _>>()?;
        ports.sort_unstable();
        ports.dedup();
        let ports_more = f.ports_more || ports.len() > PORTS_LISTED;
        ports.truncate(PORTS_LISTED);
        let (port_min, port_max) = (
            port(f.port_min, "folded.port_min")?,
            port(f.port_max, "folded.port_max")?,
        );
        let (Some(lowest), Some(highest), false) = (
            ports.first().copied(),
            ports.last().copied(),
            senders.is_empty(),
        ) else {
            return Err(ConvertError::Missing {
                field: "folded.senders",
            });
        };
        Ok(Folded {
            senders,
            other_senders_count,
            port_min: port_min.min(lowest),
            port_max: port_max.max(highest),
            ports,
            ports_more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn counts_stay_exact_past_the_lists() {
        let mut f = Folded::new(ip(1), 1, 1);
        for port in 2..=40_000u16 {
            f.add(ip(1), port, 1);
        }
        for last in 2..=40u8 {
            f.add(ip(last), 80, 2);
        }
        assert_eq!(f.ports.len(), PORTS_LISTED);
        assert!(f.ports_more);
        assert_eq!((f.port_min, f.port_max), (1, 40_000));
        assert_eq!(f.senders.len(), SENDERS_NAMED);
        assert_eq!(f.top_senders()[0], (ip(1), 40_000));
        // 39 senders of 2 each: 15 named, 24 not.
        assert_eq!(f.other_senders_count, 48);
        let total: u64 = f.senders.iter().map(|(_, n)| n).sum::<u64>() + f.other_senders_count;
        assert_eq!(total, 40_000 + 39 * 2);
        assert_eq!(
            f.cell(),
            "folded: more than 16 senders, more than 64 ports (1-40000)"
        );
        assert!(
            f.top_text(2)
                .starts_with("10.0.0.1 (40000), 10.0.0.2 (2), ...")
        );
    }

    #[test]
    fn round_trips_and_a_peer_cannot_overfill_it() {
        let mut f = Folded::new(ip(9), 443, 3);
        f.add(ip(8), 22, 1);
        assert_eq!(
            Folded::from_pb(f.to_pb()).unwrap().top_senders(),
            f.top_senders()
        );
        let mut big = f.to_pb();
        big.senders = (0..200u8)
            .map(|i| pb::SenderCount {
                ip: ip(i).to_string(),
                count: 1,
            })
            .collect();
        big.ports = (1..=1000).collect();
        let back = Folded::from_pb(big).unwrap();
        assert_eq!(back.senders.len(), SENDERS_NAMED);
        assert_eq!(back.other_senders_count, 200 - SENDERS_NAMED as u64);
        assert_eq!(back.ports.len(), PORTS_LISTED);
        assert!(back.ports_more);
        let mut bad = f.to_pb();
        bad.ports = vec![70_000];
        assert!(Folded::from_pb(bad).is_err());
        let mut bad = f.to_pb();
        bad.senders[0].ip = "not an ip".into();
        assert!(Folded::from_pb(bad).is_err());
    }
}
