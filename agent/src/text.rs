//! Text for people, shared by the model's lines and cells, the diagnosis, the CLI's tables,
//! `doctor` and the OpenTelemetry log bodies: times, sizes and escaped names. A leaf: it imports
//! nothing of the crate, so every stage can use it.
//!
//! Every string that comes from an agent or a pod (pod, container and process names, kernel
//! reasons, node names, errors) is untrusted: any process can name itself with
//! `prctl(PR_SET_NAME)`. Text passes them through [`clean`], which escapes control characters
//! and bidi overrides, so no pod can hide lines, forge them, or erase the loss warnings.

use std::{borrow::Cow, fmt::Write as _, time::SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 UTC with milliseconds; never panics (times beyond chrono's range, which the
/// conversions already reject, print as the Unix seconds they are).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_secs())
        .ok()
        .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, d.subsec_nanos()))
        .map_or_else(
            || format!("@{}", d.as_secs()),
            |dt| dt.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
}

/// How long ago `t` was, as kubectl prints an age (its `HumanDuration`): "45s", "3m20s",
/// "2h15m", "3d4h"; "0s" for a time in the future (clocks of two machines differ).
pub fn age(now: SystemTime, t: SystemTime) -> String {
    let secs = now.duration_since(t).map_or(0, |d| d.as_secs());
    let (minutes, hours) = (secs / 60, secs / 3600);
    let days = hours / 24;
    let pair = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        pair(minutes, "m", secs % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        pair(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        pair(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        pair(days / 365, "y", days % 365, "d")
    } else {
        format!("{}y", days / 365)
    }
}

/// Escapes what a terminal would interpret: C0 and C1 control characters, DEL, and the Unicode
/// bidirectional controls (which can reorder what is shown). Printable text is untouched.
pub fn clean(s: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`clean`] for an owned display value.
pub fn cleaned(s: impl std::fmt::Display) -> String {
    clean(&s.to_string()).into_owned()
}

/// Bytes as MiB with one decimal ("64.0MiB").
pub fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / f64::from(1u32 << 20))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::age;

    /// kubectl's ages (k8s.io/apimachinery/pkg/util/duration.HumanDuration), boundary by
    /// boundary.
    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let ago = |s: u64| age(now, now - Duration::from_secs(s));
        for (secs, want) in [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (800 * 86400, "2y70d"),
            (8 * 365 * 86400, "8y"),
        ] {
            assert_eq!(ago(secs), want, "{secs}s");
        }
        assert_eq!(
            age(now, now + Duration::from_secs(5)),
            "0s",
            "a future time"
        );
    }
}
