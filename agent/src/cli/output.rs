//! `-o` as kubectl spells it: `table`, `wide`, `json`, `yaml`, `jsonpath=TEMPLATE` and
//! `custom-columns=NAME:PATH,...`, over the same flat JSON that `-o json` prints.
//!
//! A template is kubectl's: text with `{PATH}` (a JSONPath from the object, `.evidence[*].kind`),
//! `{range PATH}...{end}` (the inner template for each result, its paths from that result) and
//! `{"text"}` (a quoted literal: `{"\n"}`). Several results of one path are joined by spaces,
//! strings printed raw and anything else as JSON. The JSONPath itself is RFC 9535's, as
//! jsonpath-rust (already in the tree through kube) implements it, rooted where kubectl roots
//! it. A custom column's value is its path's results joined by commas, `<none>` when there is
//! none. Templates and columns are checked before any agent is asked: a bad one is one line
//! (exit 1).

use jsonpath_rust::JsonPath as _;
use serde_json::Value;

/// `-o`: the format as given (templates are checked by [`Format::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    /// The table with more columns (and `status`: every agent's detail).
    Wide,
    Json,
    Yaml,
    JsonPath(String),
    CustomColumns(String),
}

/// The formats, for `--help` and errors.
pub const FORMATS: &str =
    "table, wide, json, yaml, jsonpath=TEMPLATE, custom-columns=NAME:PATH,...";

/// Parses `-o`; a template's syntax is checked later, by [`Format::new`].
pub fn parse_output(s: &str) -> Result<Output, String> {
    Ok(match s {
        "table" => Output::Table,
        "wide" => Output::Wide,
        "json" => Output::Json,
        "yaml" => Output::Yaml,
        _ => match s.split_once('=') {
            Some(("jsonpath", t)) => Output::JsonPath(t.to_owned()),
            Some(("custom-columns", c)) => Output::CustomColumns(c.to_owned()),
            _ => return Err(format!("unknown output format {s:?} (one of: {FORMATS})")),
        },
    })
}

impl Output {
    pub fn is_wide(&self) -> bool {
        *self == Output::Wide
    }

    /// Whether this is a table (`table`, `wide`), printed by the command's own renderer.
    pub fn is_table(&self) -> bool {
        matches!(self, Output::Table | Output::Wide)
    }
}

/// One node of a template.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    /// An RFC 9535 query, `$`-rooted.
    Path(String),
    Range(String, Vec<Node>),
}

/// A column of `custom-columns`.
#[derive(Clone, Debug, PartialEq)]
struct Column {
    name: String,
    path: String,
}

/// A checked `jsonpath=` or `custom-columns=` format.
#[derive(Clone, Debug, PartialEq)]
pub struct Format(Checked);

#[derive(Clone, Debug, PartialEq)]
enum Checked {
    Template(Vec<Node>),
    Columns(Vec<Column>),
}

impl Format {
    /// The checked template or columns of `output`; None for the other formats.
    pub fn new(output: &Output) -> Result<Option<Format>, String> {
        Ok(match output {
            Output::JsonPath(t) => {
                let nodes = template(t).map_err(|e| format!("-o jsonpath={t}: {e}"))?;
                check_nodes(&nodes).map_err(|e| format!("-o jsonpath={t}: {e}"))?;
                Some(Format(Checked::Template(nodes)))
            }
            Output::CustomColumns(c) => {
                let columns = columns(c).map_err(|e| format!("-o custom-columns={c}: {e}"))?;
                Some(Format(Checked::Columns(columns)))
            }
            _ => None,
        })
    }

    /// The text of `value`: a template is applied to it whole; columns to each of its items
    /// (the elements of an array, else its `evidence`, else itself), with a header row unless
    /// `no_headers`.
    pub fn render(&self, value: &Value, no_headers: bool) -> String {
        match &self.0 {
            Checked::Template(nodes) => {
                let mut out = String::new();
                eval(nodes, value, &mut out);
                out
            }
            Checked::Columns(columns) => {
                let items: Vec<&Value> = match value {
                    Value::Array(a) => a.iter().collect(),
                    Value::Object(m) => match m.get("evidence") {
                        Some(Value::Array(a)) => a.iter().collect(),
                        _ => vec![value],
                    },
                    _ => vec![value],
                };
                let rows: Vec<Vec<String>> = items
                    .into_iter()
                    .map(|item| {
                        columns
                            .iter()
                            .map(|c| {
                                let found = results(&c.path, item);
                                if found.is_empty() {
                                    "<none>".to_owned()
                                } else {
                                    crate::text::cleaned(found.join(","))
                                }
                            })
                            .collect()
                    })
                    .collect();
                let headers: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                super::render::table(
                    &headers,
                    &rows,
                    &super::render::Style {
                        no_headers,
                        ..super::render::Style::default()
                    },
                )
            }
        }
    }
}

/// A kubectl path (`.a.b`, `{.a}` without braces, `$.a`, `@.a`, `.`) as an RFC 9535 query.
fn rooted(path: &str) -> Result<String, String> {
    let p = path.trim();
    let rest = p
        .strip_prefix('$')
        .or_else(|| p.strip_prefix('@'))
        .unwrap_or(p);
    if rest.is_empty() || rest == "." {
        return Ok("$".to_owned());
    }
    if rest.starts_with('.') || rest.starts_with('[') {
        Ok(format!("${rest}"))
    } else {
        Err(format!("{path:?} is not a path (start it with '.')"))
    }
}

/// The results of `query` on `value`, as text: strings raw, anything else as JSON.
fn results(query: &str, value: &Value) -> Vec<String> {
    value
        .query(query)
        .unwrap_or_default()
        .into_iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Parses a template into nodes; `{range}` must be closed by `{end}`.
fn template(t: &str) -> Result<Vec<Node>, String> {
    // kubectl's relaxed form: a bare path is a template of that path.
    if !t.contains('{') && (t.starts_with('.') || t.starts_with('$')) {
        return Ok(vec![Node::Path(rooted(t)?)]);
    }
    let mut stack: Vec<(Option<String>, Vec<Node>)> = vec![(None, Vec::new())];
    let mut rest = t;
    while !rest.is_empty() {
        let Some(open) = rest.find('{') else {
            push(&mut stack, Node::Text(rest.to_owned()));
            break;
        };
        if rest[..open].contains('}') {
            return Err("'}' without its '{'".into());
        }
        if open > 0 {
            push(&mut stack, Node::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = closing(after).ok_or("'{' without its '}'")?;
        let inner = after[..close].trim();
        rest = &after[close + 1..];
        if let Some(path) = inner.strip_prefix("range ") {
            stack.push((Some(rooted(path)?), Vec::new()));
        } else if inner == "end" {
            let (Some(path), nodes) = stack.pop().ok_or("{end} without {range}")? else {
                return Err("{end} without {range}".into());
            };
            push(&mut stack, Node::Range(path, nodes));
        } else if let Some(quoted) = inner.strip_prefix('"') {
            let text = quoted
                .strip_suffix('"')
                .ok_or_else(|| format!("{inner}: unterminated string"))?;
            push(&mut stack, Node::Text(unescape(text)));
        } else {
            push(&mut stack, Node::Path(rooted(inner)?));
        }
    }
    match stack.pop() {
        Some((None, nodes)) if stack.is_empty() => Ok(nodes),
        _ => Err("{range} without {end}".into()),
    }
}

fn push(stack: &mut [(Option<String>, Vec<Node>)], node: Node) {
    if let Some((_, nodes)) = stack.last_mut() {
        nodes.push(node);
    }
}

/// Where the `}` closing a `{` is, skipping quoted text.
fn closing(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Every path of a template is a query jsonpath-rust accepts.
fn check_nodes(nodes: &[Node]) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Path(p) => check(p)?,
            Node::Range(p, inner) => {
                check(p)?;
                check_nodes(inner)?;
            }
        }
    }
    Ok(())
}

fn check(query: &str) -> Result<(), String> {
    Value::Null
        .query(query)
        .map(|_| ())
        .map_err(|e| format!("{query}: {}", first_line(&e.to_string())))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

fn eval(nodes: &[Node], value: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(p) => out.push_str(&crate::text::cleaned(results(p, value).join(" "))),
            Node::Range(p, inner) => {
                for item in value.query(p).unwrap_or_default() {
                    eval(inner, item, out);
                }
            }
        }
    }
}

/// Parses `NAME:PATH,NAME:PATH`.
fn columns(spec: &str) -> Result<Vec<Column>, String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let (name, path) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?}: expected NAME:PATH"))?;
        if name.trim().is_empty() {
            return Err(format!("{part:?}: a column needs a name"));
        }
        let path = path.trim();
        let path = path
            .strip_prefix('{')
            .and_then(|p| p.strip_suffix('}'))
            .unwrap_or(path);
        let query = rooted(path)?;
        check(&query)?;
        out.push(Column {
            name: name.trim().to_owned(),
            path: query,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer() -> Value {
        json!({
            "complete": true,
            "evidence": [
                {"kind": "connection_refused", "count": 12, "pod": {"name": "web"}, "dst": "10.0.0.1:80"},
                {"kind": "dns", "count": 3, "pod": {"name": "web"}, "outcome": "nxdomain"},
            ]
        })
    }

    fn render(output: &str, no_headers: bool) -> Result<String, String> {
        let out = parse_output(output)?;
        let format = Format::new(&out)?.ok_or("not a template")?;
        Ok(format.render(&answer(), no_headers))
    }

    #[test]
    fn templates_read_as_kubectl_reads_them() {
        assert_eq!(
            render("jsonpath={.evidence[*].kind}", false).unwrap(),
            "connection_refused dns"
        );
        assert_eq!(
            render(
                r#"jsonpath={range .evidence[*]}{.kind}{"\t"}{.count}{"\n"}{end}"#,
                false
            )
            .unwrap(),
            "connection_refused\t12\ndns\t3\n"
        );
        assert_eq!(
            render("jsonpath=complete: {.complete}", false).unwrap(),
            "complete: true"
        );
        assert_eq!(
            render("jsonpath=.evidence[0].pod", false).unwrap(),
            r#"{"name":"web"}"#
        );
        assert_eq!(render("jsonpath={.nothing}", false).unwrap(), "");
        assert_eq!(
            render("jsonpath={.evidence[?(@.kind == 'dns')].outcome}", false).unwrap(),
            "nxdomain"
        );
    }

    #[test]
    fn custom_columns_are_one_row_per_record() {
        assert_eq!(
            render(
                "custom-columns=KIND:.kind,POD:.pod.name,OUTCOME:{.outcome}",
                false
            )
            .unwrap(),
            "KIND                POD  OUTCOME\nconnection_refused  web  <none>\ndns                 web  nxdomain\n"
        );
        assert_eq!(
            render("custom-columns=KIND:.kind", true).unwrap(),
            "connection_refused\ndns\n"
        );
    }

    #[test]
    fn bad_formats_are_one_line() {
        for (given, needle) in [
            ("jsonpath={.evidence", "'{' without its '}'"),
            (
                "jsonpath={range .evidence[*]}{.kind}",
                "{range} without {end}",
            ),
            ("jsonpath={.kind}{end}", "{end} without {range}"),
            ("jsonpath={kind}", "not a path"),
            ("jsonpath={.evidence[?(@.kind ==]}", "jsonpath="),
            ("jsonpath={\"x}", "'{' without its '}'"),
            ("custom-columns=KIND", "expected NAME:PATH"),
            ("custom-columns=:.kind", "needs a name"),
            ("custom-columns=K:kind", "not a path"),
            ("xml", "unknown output format"),
        ] {
            let e = render(given, false).expect_err(given);
            assert!(e.contains(needle), "{given}: {e}");
            assert_eq!(e.lines().count(), 1, "{given}: {e}");
        }
    }

    #[test]
    fn what_a_pod_named_is_printed_escaped() {
        let v = json!({"evidence": [{"kind": "oom_kill", "process": "evil\u{1b}[2Jname"}]});
        let f = Format::new(&Output::JsonPath("{.evidence[0].process}".into()))
            .unwrap()
            .unwrap();
        assert!(!f.render(&v, false).contains('\u{1b}'));
    }
}
