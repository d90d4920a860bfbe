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
