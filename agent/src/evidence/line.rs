//! One evidence record as a line, and its kind-specific cells.

use super::{CpuThrottling, Detail, Evidence, OomKill, Protocol, tcp_flags_text};
use crate::text::{clean, cleaned, mib, rfc3339};

/// Kind-specific table columns: (direction, src, dst, peer, detail).
pub fn detail_cells(d: &Detail) -> [String; 5] {
    let detail = match d {
        Detail::ConnectionRefused(c) => match (&c.cause, &c.reason) {
            (Some(cause), Some(reason)) => format!("{}: {}", cause.as_str(), clean(reason)),
            (Some(cause), None) => cause.as_str().to_owned(),
            (None, Some(reason)) => cleaned(reason),
            (None, None) => "-".to_owned(),
        },
        Detail::ConnectionTimeout(c) => format!("{} SYN retransmits", c.syn_retransmits),
        Detail::PacketDrop(p) => {
            let mut text = match p.tcp_flags {
                Some(flags) => format!(
                    "{} {} {}",
                    clean(&p.reason),
                    p.protocol.as_str(),
                    tcp_flags_text(flags)
                ),
                None => format!("{} {}", clean(&p.reason), p.protocol.as_str()),
            };
            if let Some(location) = &p.location {
                text.push_str(&format!(" at {}", clean(location)));
            }
            text
        }
        Detail::Dns(d) => {
            let mut text = format!(
                "{} {} {}",
                d.outcome.as_str(),
                clean(&d.query),
                clean(&d.qtype)
            );
            if let Some(rcode) = &d.rcode {
                text.push_str(&format!(" {}", clean(rcode)));
            }
            if let Some(ms) = d.latency_ms {
                text.push_str(&format!(" {ms}ms"));
            }
            if d.search_nxdomains > 0 {
                text.push_str(&format!(" ({} NXDOMAIN before)", d.search_nxdomains));
            }
            if d.protocol == Protocol::Tcp {
                text.push_str(" tcp");
            }
            text
        }
        Detail::OomKill(o) => oom_text(o),
        Detail::CpuThrottling(c) => throttling_text(c),
    };
    match d.endpoints() {
        Some((direction, src, dst, peer)) => [
            direction.as_str().to_owned(),
            src.to_string(),
            dst.to_string(),
            peer.map_or_else(|| "-".to_owned(), cleaned),
            detail,
        ],
        None => ["-".into(), "-".into(), "-".into(), "-".into(), detail],
    }
}

/// The detail cell of an OOM kill: who died, against which limit.
fn oom_text(o: &OomKill) -> String {
    let who = match o.main_process {
        Some(true) => "main process",
        Some(false) => "child process",
        None => "process unknown",
    };
    let mut parts = vec![who.to_owned()];
    if let Some(limit) = o.memory_limit_bytes {
        parts.push(format!("limit {}", mib(limit)));
    }
    if let Some(rss) = o.victim_rss_bytes {
        parts.push(format!("rss {}", mib(rss)));
    }
    if o.group_kill == Some(true) {
        parts.push("group kill".to_owned());
    }
    parts.push(format!("seen by {}", o.source.as_str()));
    parts.join(", ")
}

/// The detail cell of CPU throttling: ratio and limit.
fn throttling_text(c: &CpuThrottling) -> String {
    let limit = c
        .limit_cores()
        .map_or_else(|| "no limit".to_owned(), |l| format!("limit {l} cores"));
    format!(
        "{:.0}% of periods throttled ({}/{}), {:.2}s throttled in {:.0}s, {limit}",
        c.ratio() * 100.0,
        c.throttled_periods,
        c.total_periods,
        c.throttled_seconds(),
        c.interval_seconds()
    )
}

/// One line per watch update.
pub fn watch_line(e: &Evidence) -> String {
    let [direction, src, dst, _, detail] = detail_cells(&e.detail);
    format!(
        "{} {} {} {} {} -> {} ({}) count={} attribution={}",
        rfc3339(e.last_seen),
        e.pod().map_or_else(|| "-".to_owned(), cleaned),
        e.kind(),
        direction,
        src,
        dst,
        detail,
        e.count,
        e.subject.attribution.as_str()
    )
}
