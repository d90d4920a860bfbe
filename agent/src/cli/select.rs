//! Which records an answer keeps, on what the records have: the window's end (`--until`), and
//! `--reason`, `--outcome`, `--peer`, `--port`, `--direction` on the fields of the flat JSON
//! (docs/json.md), so a filter means what the documented field means, for every kind that has
//! it; a record without the field does not pass a filter on it. And `--since`/`--until` as a
//! duration back from now or an RFC 3339 time.

use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use serde_json::Value;

/// A point in time as given: a duration back from now ("15m") or an RFC 3339 time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Ago(Duration),
    At(SystemTime),
}

impl When {
    /// The time, counted back from `now` for a duration (never before 1970).
    pub fn at(self, now: SystemTime) -> SystemTime {
        match self {
            When::Ago(d) => now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
            When::At(t) => t,
        }
    }
}

/// Parses `--since`/`--until`: "15m", "2h30m", or "2026-12-07T08:00:00Z".
pub fn parse_when(s: &str) -> Result<When, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(When::Ago(d));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| When::At(SystemTime::from(t)))
        .map_err(|_| {
            format!(
                "{:?} is neither a duration (15m, 2h) nor an RFC 3339 time (2026-12-07T08:00:00Z)",
                crate::text::clean(s)
            )
        })
}

/// `--direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Filters on the records' fields.
#[derive(Clone, Debug, Default, Args)]
pub struct RecordFilters {
    /// Only records with this reason (`reason`: a drop's kernel reason, e.g. NETFILTER_DROP) or
    /// cause (`cause`: a refusal's, e.g. no_listener); repeatable, any case.
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,
    /// Only DNS records with this outcome (nxdomain, servfail, refused, error, timeout, slow,
    /// truncated_retry, search_expansion); repeatable.
    #[arg(long = "outcome", value_name = "OUTCOME")]
    pub outcomes: Vec<String>,
    /// Only records whose other end is this pod (NAME or NAMESPACE/NAME) or address (IP or
    /// IP:PORT).
    #[arg(long)]
    pub peer: Option<String>,
    /// Only records to or from this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only inbound (to this pod) or outbound (from it) records.
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
}

impl RecordFilters {
    /// Whether any filter is given.
    pub fn any(&self) -> bool {
        !self.reasons.is_empty()
            || !self.outcomes.is_empty()
            || self.peer.is_some()
            || self.port.is_some()
            || self.direction.is_some()
    }

    /// Whether a record (its flat JSON) passes every filter given.
    pub fn keeps(&self, record: &Value) -> bool {
        let field = |name: &str| record.get(name).and_then(Value::as_str);
        let one_of = |wanted: &[String], got: Option<&str>| {
            wanted.is_empty()
                || got.is_some_and(|g| wanted.iter().any(|w| w.eq_ignore_ascii_case(g)))
        };
        let by_reason = [field("reason"), field("cause")]
            .into_iter()
            .flatten()
            .any(|g| self.reasons.iter().any(|w| w.eq_ignore_ascii_case(g)));
        if !self.reasons.is_empty() && !by_reason {
            return false;
        }
        if !one_of(&self.outcomes, field("outcome")) {
            return false;
        }
        if let Some(d) = self.direction {
            let want = match d {
                Direction::Inbound => "inbound",
                Direction::Outbound => "outbound",
            };
            if field("direction") != Some(want) {
                return false;
            }
        }
        let ends = [field("src"), field("dst"), field("server")];
        if let Some(port) = self.port {
            let has = ends
                .iter()
                .flatten()
                .any(|a| split_port(a).is_some_and(|(_, p)| p == port));
            if !has {
                return false;
            }
        }
        if let Some(peer) = &self.peer {
            let by_pod = record.get("peer").is_some_and(|p| {
                let (ns, name) = (
                    p.get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    p.get("name").and_then(Value::as_str).unwrap_or_default(),
                );
                !name.is_empty() && (peer == name || *peer == format!("{ns}/{name}"))
            });
            // The remote end: the source of an inbound record, else the destination.
            let remote = if field("direction") == Some("inbound") {
                field("src")
            } else {
                field("dst").or(field("server"))
            };
            let by_address = remote.is_some_and(|a| {
                a == peer.as_str() || split_port(a).is_some_and(|(ip, _)| ip == peer.as_str())
            });
            if !by_pod && !by_address {
                return false;
            }
        }
        true
    }
}

/// "IP:PORT" or "[IPv6]:PORT" as (IP, port).
fn split_port(addr: &str) -> Option<(&str, u16)> {
    let (ip, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    Some((ip.trim_start_matches('[').trim_end_matches(']'), port))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn times_are_durations_or_rfc3339() {
        assert_eq!(parse_when("15m"), Ok(When::Ago(Duration::from_secs(900))));
        let t = parse_when("2026-12-07T08:00:00Z").unwrap();
        assert_eq!(
            t.at(SystemTime::now()),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_630_400)
        );
        assert!(parse_when("2026-12-07T08:00:00+01:00").is_ok());
        assert!(
            parse_when("yesterday")
                .unwrap_err()
                .contains("neither a duration")
        );
        assert_eq!(
            When::Ago(Duration::from_secs(u64::MAX)).at(SystemTime::now()),
            SystemTime::UNIX_EPOCH
        );
    }

    #[test]
    fn filters_read_the_documented_fields() {
        let refused = json!({"kind": "connection_refused", "direction": "outbound", "src": "10.0.0.1:40000",
            "dst": "10.244.1.7:8080", "peer": {"namespace": "shop", "name": "cart"}, "cause": "no_listener"});
        let drop = json!({"kind": "packet_drop", "direction": "inbound", "src": "10.244.2.9:51234",
            "dst": "10.244.1.5:8080", "peer": null, "reason": "NETFILTER_DROP"});
        let dns = json!({"kind": "dns", "direction": "outbound", "server": "10.96.0.10:53", "outcome": "nxdomain"});
        let f = |args: RecordFilters| -> Vec<&str> {
            [&refused, &drop, &dns]
                .into_iter()
                .filter(|r| args.keeps(r))
                .map(|r| r["kind"].as_str().unwrap())
                .collect()
        };
        let all = RecordFilters::default();
        assert!(!all.any());
        assert_eq!(f(all), ["connection_refused", "packet_drop", "dns"]);
        let reason = |r: &str| RecordFilters {
            reasons: vec![r.into()],
            ..RecordFilters::default()
        };
        assert_eq!(f(reason("netfilter_drop")), ["packet_drop"]);
        assert_eq!(f(reason("no_listener")), ["connection_refused"]);
        assert_eq!(
            f(RecordFilters {
                outcomes: vec!["NXDOMAIN".into()],
                ..RecordFilters::default()
            }),
            ["dns"]
        );
        let port = |p| RecordFilters {
            port: Some(p),
            ..RecordFilters::default()
        };
        assert_eq!(f(port(8080)), ["connection_refused", "packet_drop"]);
        assert_eq!(f(port(53)), ["dns"]);
        let dir = RecordFilters {
            direction: Some(Direction::Inbound),
            ..RecordFilters::default()
        };
        assert_eq!(f(dir), ["packet_drop"]);
        let peer = |p: &str| RecordFilters {
            peer: Some(p.into()),
            ..RecordFilters::default()
        };
        assert_eq!(f(peer("cart")), ["connection_refused"]);
        assert_eq!(f(peer("shop/cart")), ["connection_refused"]);
        assert_eq!(f(peer("10.244.2.9")), ["packet_drop"]);
        assert_eq!(f(peer("10.96.0.10:53")), ["dns"]);
        assert!(f(peer("10.244.1.5")).is_empty(), "the local end is no peer");
    }
}
