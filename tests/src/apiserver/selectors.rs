//! Query parameters and the label and field selectors of list and watch requests, for
//! every kind (which fields a kind supports comes from [`super::kinds`]).

use std::time::Duration;

use super::kinds::Kind;
use super::store::Object;

/// Query parameters this server understands; unknown ones are ignored like the real
/// server does.
pub(super) struct Params {
    pub(super) watch: bool,
    pub(super) field_selector: String,
    pub(super) label_selector: String,
    /// None for unset, "" and "0" (all mean "any/most recent" to the server).
    pub(super) rv: Option<u64>,
    pub(super) rv_match: Option<String>,
    pub(super) timeout: Option<Duration>,
    pub(super) bookmarks: bool,
    pub(super) send_initial_events: Option<bool>,
}

impl Params {
    pub(super) fn parse(query: &[(String, String)]) -> Result<Params, String> {
        let get = |key: &str| {
            query
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let flag = |key: &str| -> Result<Option<bool>, String> {
            match get(key) {
                None | Some("") => Ok(None),
                Some("true" | "1" | "t" | "True" | "TRUE") => Ok(Some(true)),
                Some("false" | "0" | "f" | "False" | "FALSE") => Ok(Some(false)),
                Some(v) => Err(format!("invalid boolean value for {key}: {v:?}")),
            }
        };
        let rv = match get("resourceVersion") {
            None | Some("" | "0") => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| format!("invalid resource version: {v:?}"))?,
            ),
        };
        let rv_match = get("resourceVersionMatch")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        match rv_match.as_deref() {
            None | Some("NotOlderThan" | "Exact") => {}
            Some(v) => return Err(format!("invalid resourceVersionMatch: {v:?}")),
        }
        let timeout = match get("timeoutSeconds") {
            None | Some("") => None,
            Some(v) => Some(Duration::from_secs(
                v.parse::<u64>()
                    .map_err(|_| format!("invalid timeoutSeconds: {v:?}"))?,
            )),
        }
        .filter(|t| !t.is_zero()); // 0 means "server default", as in the real server
        Ok(Params {
            watch: flag("watch")?.unwrap_or(false),
            field_selector: get("fieldSelector").unwrap_or_default().to_owned(),
            label_selector: get("labelSelector").unwrap_or_default().to_owned(),
            rv,
            rv_match,
            timeout,
            bookmarks: flag("allowWatchBookmarks")?.unwrap_or(false),
            send_initial_events: flag("sendInitialEvents")?,
        })
    }
}

/// Decodes an `application/x-www-form-urlencoded` query strictly: invalid escapes or
/// non-UTF-8 bytes are an error (→ 400), never replaced or panicked on.
pub(super) fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    fn decode(s: &str) -> Result<String, String> {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'+' => out.push(b' '),
                b'%' => {
                    let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2)))
                    else {
                        return Err("invalid percent-encoding in query".to_owned());
                    };
                    out.extend(u8::try_from(hi * 16 + lo).ok());
                    i += 2;
                }
                _ => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| "query is not valid UTF-8".to_owned())
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Kind and namespace (from the path) plus field and label selector requirements, all
/// ANDed.
pub(super) struct Selector {
    pub(super) kind: Kind,
    namespace: Option<String>,
    /// (field path, wanted equal?, value)
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
}

enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
}

impl Selector {
    pub(super) fn parse(
        kind: Kind,
        namespace: Option<&str>,
        p: &Params,
    ) -> Result<Selector, String> {
        let mut fields = Vec::new();
        for term in terms(&p.field_selector) {
            let (field, eq, value) = split_op(term)
                .ok_or_else(|| format!("invalid field selector: {:?}", p.field_selector))?;
            if !kind.supports_field(field) {
                return Err(format!(
                    "field label not supported: {field}: \"{field}\" is not a known field selector"
                ));
            }
            fields.push((field.to_owned(), eq, value.to_owned()));
        }
        let mut labels = Vec::new();
        for term in terms(&p.label_selector) {
            let bad = || format!("unable to parse requirement: invalid label selector {term:?}");
            let req = match split_op(term) {
                Some((k, eq, v)) if valid_label(k, false) && valid_label(v, true) => {
                    let (k, v) = (k.to_owned(), v.to_owned());
                    if eq {
                        LabelReq::Eq(k, v)
                    } else {
                        LabelReq::Ne(k, v)
                    }
                }
                Some(_) => return Err(bad()),
                None => match term.strip_prefix('!').map(str::trim) {
                    Some(k) if valid_label(k, false) => LabelReq::NotExists(k.to_owned()),
                    None if valid_label(term, false) => LabelReq::Exists(term.to_owned()),
                    _ => return Err(bad()),
                },
            };
            labels.push(req);
        }
        Ok(Selector {
            kind,
            namespace: namespace.map(str::to_owned),
            fields,
            labels,
        })
    }

    pub(super) fn matches(&self, object: &Object) -> bool {
        if object.kind != self.kind
            || self
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != object.namespace())
        {
            return false;
        }
        let fields_ok = self
            .fields
            .iter()
            .all(|(f, eq, v)| (object.field(f) == Some(v.as_str())) == *eq);
        fields_ok
            && self.labels.iter().all(|req| match req {
                LabelReq::Eq(k, v) => object.label(k) == Some(v.as_str()),
                // Like the real server, `k!=v` also matches objects without label k.
                LabelReq::Ne(k, v) => object.label(k) != Some(v.as_str()),
                LabelReq::Exists(k) => object.label(k).is_some(),
                LabelReq::NotExists(k) => object.label(k).is_none(),
            })
    }
}

/// Splits a selector on commas; an empty selector has no terms.
fn terms(selector: &str) -> impl Iterator<Item = &str> {
    let selector = selector.trim();
    selector
        .split(',')
        .filter(move |_| !selector.is_empty())
        .map(str::trim)
}

/// `k!=v` → (k, false, v); `k==v` / `k=v` → (k, true, v); otherwise None.
fn split_op(term: &str) -> Option<(&str, bool, &str)> {
    let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
        (k, false, v)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, true, v)
    } else {
        let (k, v) = term.split_once('=')?;
        (k, true, v)
    };
    Some((k.trim(), eq, v.trim()))
}

/// Accepts only the equality-based label grammar's keys and values, so unsupported
/// syntax (e.g. set-based `k in (a,b)`) fails loudly instead of matching wrongly.
fn valid_label(s: &str, is_value: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    (is_value || !s.is_empty()) && s.chars().all(ok_char)
}
