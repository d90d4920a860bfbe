//! One evidence record as a line, and its table cells (the kind-specific one is the kind's
//! own, [`KindDetail::cell`](super::KindDetail::cell)).

use super::{Detail, Evidence};
use crate::text::{cleaned, rfc3339};

/// Kind-specific table columns: (direction, src, dst, peer, detail).
pub fn detail_cells(d: &Detail) -> [String; 5] {
    let detail = d.cell();
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

/// One line per watch update.
pub fn watch_line(e: &Evidence) -> String {
    let [direction, src, dst, _, detail] = e.detail_cells();
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
