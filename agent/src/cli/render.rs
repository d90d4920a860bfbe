//! Rendering for people (tables) and machines (JSON). The JSON mirrors the proto field names,
//! flat: kind-specific fields beside the common ones; times are RFC 3339 UTC, endpoints
//! "ip:port", enums their stable snake_case names.
//!
//! Every string that comes from an agent (pod, container and process names, kernel reasons,
//! node names, errors) is untrusted: any process can name itself with `prctl(PR_SET_NAME)`.
//! Tables and lines pass them through [`clean`], which escapes control characters and bidi
//! overrides, so no agent can hide rows, forge them, or erase the loss warnings. JSON needs no
//! such care: its encoder escapes control characters.

use std::{borrow::Cow, fmt::Write as _, time::SystemTime};

mod json;
mod status;
pub use json::{evidence_json, not_shown_json, query_json, unanswered_json};
pub use status::{Paint, problems, status_json, status_summary, status_table, version_skew};

use crate::{
    cli::{client::AgentAnswer, peers::NotShown},
    codec::PeerLoss,
    diagnose::Finding,
    evidence::{DnsLookups, Evidence, Named as _, PodLosses, PodRef},
    loss::Loss,
    text::{self, clean, cleaned, rfc3339},
};

/// Words for a loss counter's name; a name this version does not know is shown as it is.
fn describe(name: &str) -> Cow<'static, str> {
    match Loss::from_name(name) {
        Ok(loss) => Cow::Borrowed(loss.describe()),
        Err(_) => Cow::Owned(cleaned(name)),
    }
}

/// Losses that may make an answer incomplete: those that can affect answers and grew inside
/// the window (or whose time the agent does not say).
fn lost_in_window(losses: &[PeerLoss], since: Option<SystemTime>) -> Vec<String> {
    losses
        .iter()
        .filter(|l| l.count > 0)
        .filter(|l| Loss::from_name(&l.name).map_or(true, Loss::affects_answers))
        .filter(|l| match (since, l.last) {
            (Some(since), Some(last)) => last >= since,
            _ => true,
        })
        .map(|l| format!("{} {}", l.count, describe(&l.name)))
        .collect()
}

/// A NetworkPolicy explanation of one record (by index into the evidence), as the CLI
/// computed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub index: usize,
    /// `denied`, `allowed` or `unknown`.
    pub verdict: &'static str,
    pub policies: Vec<String>,
    pub text: String,
    /// A NetworkPolicy that would allow the flow (YAML), for denials.
    pub fix: Option<String>,
}

/// An agent that did not answer a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unanswered {
    pub agent: String,
    /// The node it runs on, when known (agents found through the cluster).
    pub node: Option<String>,
    pub error: String,
}

/// The table's section on agents that did not answer (empty when all did).
pub fn unanswered_text(unanswered: &[Unanswered]) -> String {
    let mut out = String::new();
    if unanswered.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nINCOMPLETE: {} agent(s) did not answer; their nodes' evidence is missing:",
        unanswered.len()
    );
    for u in unanswered {
        let _ = writeln!(out, "  {}: {}", cleaned(&u.agent), cleaned(&u.error));
    }
    out
}

/// The table's section on records whose other side is not shown: the pod holding their
/// destination now started after them (empty when there are none).
pub fn not_shown_text(not_shown: &[NotShown]) -> String {
    let mut out = String::new();
    if not_shown.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nOther side");
    for n in not_shown {
        let holder = format!("{}/{}", cleaned(&n.holder.0), cleaned(&n.holder.1));
        let _ = match n.started {
            Some(started) => writeln!(
                out,
                "  {} record(s) to {} are from before {holder} held it (it started at {}): \
                 not shown as its own; who held {} then is unknown.",
                n.records,
                n.ip,
                rfc3339(started),
                n.ip
            ),
            None => writeln!(
                out,
                "  {} record(s) to {} are not shown as {holder}'s, which holds it now: when it \
                 started is unknown, so it may not have held it then.",
                n.records, n.ip
            ),
        };
    }
    out
}

/// DNS lookup counters per pod, summed over the agents that answered.
pub fn dns_lookups(answers: &[AgentAnswer]) -> Vec<(PodRef, DnsLookups)> {
    let mut by_pod: Vec<(PodRef, DnsLookups)> = Vec::new();
    for (pod, l) in answers.iter().flat_map(|a| &a.dns_lookups) {
        match by_pod.iter_mut().find(|(p, _)| p == &**pod) {
            Some((_, sum)) => sum.add(l),
            None => by_pod.push(((**pod).clone(), *l)),
        }
    }
    by_pod
}

/// "DNS: 37 of 40 lookups succeeded (3 failed, 0 unanswered, 1 slow); answers in 2.1 ms on
/// average, 1500.0 ms at most".
fn dns_lookups_text(answers: &[AgentAnswer]) -> String {
    let mut out = String::new();
    for (pod, l) in dns_lookups(answers) {
        if l.lookups == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "\nDNS ({pod}, since the agent's store began): {ok} of {n} lookups succeeded ({failed} failed, \
             {timeouts} unanswered, {slow} slow); answers took {avg:.1} ms on average, {max:.1} ms \
             at most.",
            pod = cleaned(&pod),
            ok = l.succeeded,
            n = l.lookups,
            failed = l.failed,
            timeouts = l.timeouts,
            slow = l.slow,
            avg = l.latency_avg_us() as f64 / 1000.0,
            max = l.latency_max_us as f64 / 1000.0,
        );
    }
    out
}

/// Kernel losses per pod, summed over the agents that answered, with when they last grew.
pub fn pod_losses(answers: &[AgentAnswer]) -> Vec<(PodRef, PodLosses, SystemTime)> {
    let mut by_pod: Vec<(PodRef, PodLosses, SystemTime)> = Vec::new();
    for (pod, l, last) in answers.iter().flat_map(|a| &a.pod_losses) {
        match by_pod.iter_mut().find(|(p, _, _)| p == &**pod) {
            Some((_, sum, at)) => {
                sum.add(l);
                *at = (*at).max(*last);
            }
            None => by_pod.push(((**pod).clone(), *l, *last)),
        }
    }
    by_pod
}

/// "WARNING (shop/web, since the agent started): the kernel lost 12 connect attempt(s) ..."
fn pod_losses_text(answers: &[AgentAnswer]) -> String {
    let mut out = String::new();
    for (pod, l, last) in pod_losses(answers) {
        if l.total() == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "\nWARNING ({pod}, since the agent started): the kernel lost {what} of this pod's \
             evidence, the last at {last}. Each pod has a bounded share of the kernel's tables \
             and rings; this pod used up its share (or a table was full), so what came past it \
             is missing from this answer, and only from this pod's.",
            pod = cleaned(&pod),
            what = l.describe(),
            last = rfc3339(last),
        );
    }
    out
}

/// Left-aligned columns, two spaces apart. Cells are already clean.
/// How tables look: kubectl's `-o wide` and `--no-headers`, and colours (only on a terminal,
/// never with `NO_COLOR`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    pub wide: bool,
    pub no_headers: bool,
    pub color: bool,
}

/// `--color`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set (<https://no-color.org>).
    #[default]
    Auto,
    Always,
    Never,
}

/// The command line's `--color`, set once before a command runs.
static COLOR: std::sync::OnceLock<ColorChoice> = std::sync::OnceLock::new();

/// Sets `--color` for every table this process prints.
pub fn set_color(choice: ColorChoice) {
    let _ = COLOR.set(choice);
}

impl Style {
    /// Colours as `--color` says: by default when stdout is a terminal and `NO_COLOR` is
    /// unset or empty (<https://no-color.org>).
    pub fn detect(wide: bool, no_headers: bool) -> Style {
        let color = match COLOR.get().copied().unwrap_or_default() {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
                !no_color && std::io::IsTerminal::is_terminal(&std::io::stdout())
            }
        };
        Style {
            wide,
            no_headers,
            color,
        }
    }
}

/// Column widths count terminal columns (a CJK character takes two, a combining mark none:
/// Unicode's East Asian Width, as terminals draw them); ANSI colour sequences (only ours:
/// cells are cleaned) take no room.
fn visible_width(cell: &str) -> usize {
    use unicode_width::UnicodeWidthChar as _;
    let mut n = 0;
    let mut in_escape = false;
    for c in cell.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += c.width().unwrap_or(0),
        }
    }
    n
}

pub(super) fn table(headers: &[&str], rows: &[Vec<String>], style: &Style) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(visible_width(cell));
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut parts = Vec::new();
        for (cell, w) in cells.zip(&widths) {
            let pad = w.saturating_sub(visible_width(cell));
            parts.push(format!("{cell}{}", " ".repeat(pad)));
        }
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    if !style.no_headers {
        line(&mut headers.iter().copied(), &mut out);
    }
    for row in rows {
        line(&mut row.iter().map(String::as_str), &mut out);
    }
    out
}

/// The `query -o table` text. `since` is the query's window start.
pub fn query_table(
    pod: &str,
    namespace: &str,
    since: Option<SystemTime>,
    evidence: &[Evidence],
    findings: &[Finding],
    answers: &[AgentAnswer],
    notes: &[Note],
) -> String {
    let answer = Answer {
        pod,
        namespace,
        since,
        now: SystemTime::now(),
        pod_column: false,
        evidence,
        findings,
        answers,
        notes,
    };
    query_table_styled(&answer, &Style::default())
}

/// What a query answer holds, for rendering.
pub struct Answer<'a> {
    pub pod: &'a str,
    pub namespace: &'a str,
    /// The window's start.
    pub since: Option<SystemTime>,
    /// When the answer is printed: ages are counted to it.
    pub now: SystemTime,
    /// Whether rows name their pod (the subject is more than one pod).
    pub pod_column: bool,
    pub evidence: &'a [Evidence],
    pub findings: &'a [Finding],
    pub answers: &'a [AgentAnswer],
    pub notes: &'a [Note],
}

/// [`query_table`] with `-o wide` (first seen and the pod's UID too), `--no-headers` and
/// colours.
pub fn query_table_styled(a: &Answer<'_>, style: &Style) -> String {
    let Answer {
        pod,
        namespace,
        since,
        now,
        pod_column,
        evidence,
        findings,
        answers,
        notes,
    } = *a;
    let mut out = String::new();
    let nodes: Vec<String> = answers.iter().map(|a| cleaned(&a.node)).collect();
    let subject = subject_text(pod, namespace);
    let _ = writeln!(
        out,
        "{subject}: {} record(s) from {} agent(s) ({})",
        evidence.len(),
        answers.len(),
        nodes.join(", ")
    );
    if evidence.is_empty() {
        let _ = writeln!(
            out,
            "\nNo silent failures recorded for this pod in the requested window."
        );
    } else {
        let pod_of = |e: &Evidence| e.pod().map_or_else(|| "-".to_owned(), |p| cleaned(&p.name));
        let (headers, rows): (Vec<&str>, Vec<Vec<String>>) = if style.wide {
            let mut headers = vec!["KIND"];
            if pod_column {
                headers.push("POD");
            }
            headers.extend([
                "DIRECTION",
                "COUNT",
                "LAST SEEN",
                "SRC",
                "DST",
                "PEER",
                "DETAIL",
                "CONTAINER",
                "PROCESS",
                "ATTRIBUTION",
                "NODE",
                "FIRST SEEN",
                "POD UID",
            ]);
            let rows = evidence
                .iter()
                .map(|e| {
                    let [direction, src, dst, peer, detail] = e.detail_cells();
                    let s = &e.subject;
                    let mut row = vec![e.kind().to_string()];
                    if pod_column {
                        row.push(pod_of(e));
                    }
                    row.extend([
                        direction,
                        e.count.to_string(),
                        rfc3339(e.last_seen),
                        src,
                        dst,
                        peer,
                        detail,
                        s.container
                            .as_deref()
                            .map_or_else(|| "-".to_owned(), cleaned),
                        s.process.as_ref().map_or_else(
                            || "-".to_owned(),
                            |p| format!("{}[{}]", clean(&p.comm), p.pid),
                        ),
                        s.attribution.as_str().to_owned(),
                        cleaned(&e.node),
                        rfc3339(e.first_seen),
                        s.pod
                            .as_ref()
                            .map_or_else(|| "-".to_owned(), |p| cleaned(&p.uid)),
                    ]);
                    row
                })
                .collect();
            (headers, rows)
        } else {
            // The columns read first; the rest is under -o wide.
            let mut headers = vec!["KIND", "COUNT", "LAST SEEN"];
            if pod_column {
                headers.push("POD");
            }
            headers.extend(["PEER", "DETAIL"]);
            let rows = evidence
                .iter()
                .map(|e| {
                    let [direction, src, dst, peer, detail] = e.detail_cells();
                    let mut row = vec![
                        e.kind().to_string(),
                        e.count.to_string(),
                        text::age(now, e.last_seen),
                    ];
                    if pod_column {
                        row.push(pod_of(e));
                    }
                    let own = e.pod().map(|p| p.namespace.as_str());
                    row.extend([peer_cell(&direction, &src, &dst, &peer, own), detail]);
                    row
                })
                .collect();
            (headers, rows)
        };
        out.push('\n');
        out.push_str(&table(&headers, &rows, style));
    }
    if !findings.is_empty() {
        let _ = writeln!(out, "\nDiagnosis");
        for f in findings {
            let layer = style.paint(&format!("[{}]", f.layer), Paint::Warn);
            let _ = writeln!(out, "  {layer} {}", clean(&f.summary));
            let _ = writeln!(out, "    next step: {}", clean(&f.next_step));
        }
    }
    out.push_str(&dns_lookups_text(answers));
    out.push_str(&pod_losses_text(answers));
    out.push_str(&notes_text(notes, false));
    let _ = writeln!(out);
    for a in answers {
        out.push_str(&completeness(a, since));
    }
    out
}

/// What an answer is about, for its first line: a pod as "Pod NAMESPACE/NAME", a workload as
/// "TYPE/NAME in namespace NAMESPACE".
pub fn subject_text(pod: &str, namespace: &str) -> String {
    match pod.split_once('/') {
        Some(_) => format!("{} in namespace {}", clean(pod), clean(namespace)),
        None => format!("Pod {}/{}", clean(namespace), clean(pod)),
    }
}

/// The other end of a record, as `hubble observe` writes it: "-> NAME:PORT" to where it went
/// (outbound), "<- NAME:PORT" from where it came (inbound); NAME is the peer pod when known
/// (without its namespace when it is the record's own), else the address; "-" for none.
fn peer_cell(direction: &str, src: &str, dst: &str, peer: &str, own: Option<&str>) -> String {
    let (arrow, remote) = match direction {
        "inbound" => ("<-", src),
        _ if dst != "-" => ("->", dst),
        _ => return "-".to_owned(),
    };
    if peer == "-" {
        return format!("{arrow} {remote}");
    }
    let name = match (own, peer.split_once('/')) {
        (Some(own), Some((ns, name))) if ns == own => name,
        _ => peer,
    };
    match remote.rsplit_once(':') {
        Some((_, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{arrow} {name}:{port}")
        }
        _ => format!("{arrow} {name}"),
    }
}

/// The NetworkPolicy section: one line per explained record (and the fixes, when asked).
pub fn notes_text(notes: &[Note], with_fixes: bool) -> String {
    let mut out = String::new();
    if notes.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nNetworkPolicy");
    let mut seen = Vec::new();
    for n in notes {
        let line = format!("  [{}] {}", n.verdict, clean(&n.text));
        if seen.contains(&line) {
            continue;
        }
        let _ = writeln!(out, "{line}");
        if with_fixes && let Some(fix) = &n.fix {
            let _ = writeln!(
                out,
                "    a policy that would allow it, to review before applying:"
            );
            for l in fix.lines() {
                let _ = writeln!(out, "      {}", clean(l));
            }
        }
        seen.push(line);
    }
    out
}

/// Where an agent's memory of the window begins, when not before it.
enum Start {
    /// Its store and loss counters begin inside the window (its start, or the first start on
    /// its persistent store): nothing from before then.
    Began { at: SystemTime, restart: bool },
    /// It restarted inside the window, and its persistent store kept records, evictions and
    /// loss counters from before (since `kept`): only what happened while no agent ran, and
    /// changes of the last second before it stopped, were not seen.
    Restarted { at: SystemTime, kept: SystemTime },
}

fn start_in_window(a: &AgentAnswer, since: Option<SystemTime>) -> Option<Start> {
    let inside = |t: &SystemTime| since.is_none_or(|since| *t > since);
    // An agent that does not say since when it counts counts since its start.
    let kept = a.losses_since.or(a.agent_started)?;
    if inside(&kept) {
        let restart = a.agent_started.is_some_and(|started| started > kept);
        return Some(Start::Began { at: kept, restart });
    }
    let started = a.agent_started.filter(inside)?;
    (started > kept).then_some(Start::Restarted { at: started, kept })
}

/// What one agent's answer may lack, in words.
fn completeness(a: &AgentAnswer, since: Option<SystemTime>) -> String {
    let mut out = String::new();
    let node = cleaned(&a.node);
    let lost = lost_in_window(&a.loss, since);
    let start = start_in_window(a, since);
    let clean = lost.is_empty() && a.evicted_in_window == 0;
    match (clean, &start) {
        (true, None) => {
            let _ = writeln!(
                out,
                "Completeness: node {node} lost no events in this window."
            );
        }
        (true, Some(Start::Began { at, restart: false })) => {
            let _ = writeln!(
                out,
                "Completeness: node {node} lost no events since its agent started at {}, inside \
                 this window: evidence from before then is not in its store.",
                rfc3339(*at)
            );
        }
        (true, Some(Start::Began { at, restart: true })) => {
            let _ = writeln!(
                out,
                "Completeness: node {node} lost no events since its evidence store began at {}, \
                 inside this window: evidence from before then is not in its store.",
                rfc3339(*at)
            );
        }
        (true, Some(Start::Restarted { at, kept })) => {
            let _ = writeln!(
                out,
                "Completeness: node {node} counted no lost events since {} (its store on disk \
                 outlives restarts), but its agent restarted at {} inside this window: what \
                 happened while no agent ran was not seen.",
                rfc3339(*kept),
                rfc3339(*at)
            );
        }
        (false, _) => {
            if !lost.is_empty() {
                let _ = writeln!(
                    out,
                    "WARNING: node {node} lost events ({}): evidence may be incomplete.",
                    lost.join(", ")
                );
            }
            if a.evicted_in_window > 0 {
                let _ = writeln!(
                    out,
                    "WARNING: node {node} evicted {} record(s) of this pod seen in this window \
                     to make room (store quota): those are missing here.",
                    a.evicted_in_window
                );
            }
            match start {
                None => {}
                Some(Start::Began { at, restart: false }) => {
                    let _ = writeln!(
                        out,
                        "WARNING: the agent on node {node} started at {} inside this window: \
                         evidence from before then is not in its store.",
                        rfc3339(at)
                    );
                }
                Some(Start::Began { at, restart: true }) => {
                    let _ = writeln!(
                        out,
                        "WARNING: the evidence store of node {node} began at {} inside this \
                         window: evidence from before then is not in its store.",
                        rfc3339(at)
                    );
                }
                Some(Start::Restarted { at, kept }) => {
                    let _ = writeln!(
                        out,
                        "WARNING: the agent on node {node} restarted at {} inside this window: \
                         what happened while no agent ran was not seen (its records and loss \
                         counters are kept on disk since {}).",
                        rfc3339(at),
                        rfc3339(kept)
                    );
                }
            }
        }
    }
    if a.truncated {
        let _ = writeln!(
            out,
            "WARNING: node {node} returned only its newest records (answer truncated)."
        );
    }
    out
}

/// The line a watch prints when an agent's loss counters grew: what the stream missed.
pub fn watch_loss_line(node: &str, grown: &[PeerLoss]) -> String {
    let parts: Vec<String> = grown
        .iter()
        .map(|l| format!("{} {}", l.count, describe(&l.name)))
        .collect();
    format!(
        "WARNING: node {} lost events since the last update ({}): this stream is incomplete.",
        clean(node),
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests;
