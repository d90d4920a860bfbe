//! Judging a cell from what the agent said: the evidence a cell's check found in `query -o
//! json` ([`Seen`]) and the agent's own account of the signal in `status -o json` (its
//! `signals` array, or, from agents without one, its `probes`) make the [`Verdict`] and the
//! detail line.

use serde_json::Value;

use super::{Cell, Verdict, short};

/// What one cell's check found in the agent's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing yet; what was seen instead (the last answer, the workload's own view).
    Nothing(String),
    /// The evidence, in full.
    Full(String),
    /// The evidence in a reduced form (a drop without its reason, a kill without its victim).
    Reduced(String),
    /// Evidence that says something else than what happened (another reason, another victim).
    Wrong(String),
}

/// Every probe a cell depends on, for telling which parts of a signal's detail concern which
/// cell.
const KNOWN_PROBES: [&str; 9] = [
    "inet_sock_set_state",
    "tcp_receive_reset",
    "tcp_send_reset",
    "inet_sk_error_report",
    "tcp_retransmit_skb",
    "kfree_skb",
    "dns_egress",
    "dns_ingress",
    "mark_victim",
];

/// The agent's own account of a cell's signal when it is not full: (mode, why).
///
/// From `signals`: an entry named after the cell is taken whole; an entry of the cell's
/// evidence kind only with the parts of its detail (`; `-separated) that name one of the
/// cell's probes or no probe at all (refused_outbound is not degraded because the inbound side
/// lacks tcp_send_reset). Without `signals`: the cell's probes that are not attached (off) or
/// run a degraded fallback.
pub fn agent_note(cell: Cell, status: &Value) -> Option<(String, String)> {
    if let Some(signals) = status["signals"].as_array() {
        let mode = |e: &Value| e["mode"].as_str().unwrap_or("unknown").to_owned();
        if let Some(e) = signals.iter().find(|e| e["signal"] == cell.name()) {
            let detail = e["detail"].as_str().unwrap_or_default().to_owned();
            return (e["mode"] != "full").then(|| (mode(e), detail));
        }
        let e = signals.iter().find(|e| e["signal"] == cell.kind())?;
        if e["mode"] == "full" {
            return None;
        }
        let parts: Vec<&str> = e["detail"]
            .as_str()
            .unwrap_or_default()
            .split("; ")
            .filter(|part| {
                let named: Vec<&str> = KNOWN_PROBES
                    .into_iter()
                    .filter(|p| part.contains(p))
                    .collect();
                named.is_empty() || named.iter().any(|p| cell.probes().contains(p))
            })
            .collect();
        return (!parts.is_empty()).then(|| (mode(e), parts.join("; ")));
    }
    let mut notes = Vec::new();
    let mut worst = "degraded";
    for name in cell.probes() {
        let Some(p) = probe(status, name) else {
            continue;
        };
        if p["attached"] != true {
            worst = "off";
            notes.push(format!(
                "{name} not attached: {}",
                p["error"].as_str().unwrap_or("no error given")
            ));
        } else if let Some(d) = p["degraded"].as_str() {
            notes.push(format!("{name}: {d}"));
        }
    }
    (!notes.is_empty()).then(|| (worst.to_owned(), notes.join("; ")))
}

/// A probe of `status` by name.
fn probe<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["probes"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

/// Whether Status lists any of `names` as not attached.
pub fn missing_probe(status: &Value, names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| probe(status, n).is_some_and(|p| p["attached"] != true))
}

/// The cell's probes as Status has them: `name attached`, or why not.
fn probes_line(cell: Cell, status: &Value) -> String {
    let parts: Vec<String> = cell
        .probes()
        .iter()
        .map(|name| match probe(status, name) {
            None => format!("{name}: not in status"),
            Some(p) if p["attached"] == true => match p["degraded"].as_str() {
                Some(d) => format!("{name}: attached, degraded: {d}"),
                None => format!("{name}: attached"),
            },
            Some(p) => format!(
                "{name}: NOT attached: {}",
                p["error"].as_str().unwrap_or("no error given")
            ),
        })
        .collect();
    if parts.is_empty() {
        "no kernel probe (cgroupfs sampling)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `(major, minor)` of a kernel release such as `6.18.0-1-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The verdict on a cell from what was seen and the agent's Status (`Null` when unreadable).
pub fn verdict(cell: Cell, seen: &Seen, status: &Value, kernel: &str) -> (Verdict, String) {
    let note = agent_note(cell, status);
    let said = |n: &Option<(String, String)>| {
        n.as_ref()
            .map(|(mode, why)| format!("; the agent says {}: {mode}: {why}", cell.kind()))
            .unwrap_or_default()
    };
    match seen {
        Seen::Full(what) => match &note {
            Some((mode, _)) if mode == "degraded" => {
                (Verdict::Degraded, format!("{what}{}", said(&note)))
            }
            _ => (Verdict::Works, format!("{what}{}", said(&note))),
        },
        Seen::Reduced(what) => match cell {
            Cell::PacketDrop => {
                let old = kernel_version(kernel).is_some_and(|v| v < (5, 17));
                let agent_says = note.as_ref().is_some_and(|(m, _)| m == "degraded");
                if old || agent_says {
                    let why = if old {
                        format!(
                            "; kernel {kernel} has no drop reasons (skb:kfree_skb gained one in 5.17)"
                        )
                    } else {
                        String::new()
                    };
                    (Verdict::Degraded, format!("{what}{why}{}", said(&note)))
                } else {
                    (
                        Verdict::Fails,
                        format!(
                            "{what}, although kernel {kernel} has drop reasons{}",
                            said(&note)
                        ),
                    )
                }
            }
            _ => (Verdict::Degraded, format!("{what}{}", said(&note))),
        },
        Seen::Wrong(what) => (
            Verdict::Fails,
            format!(
                "{what}{}; probes: {}",
                said(&note),
                probes_line(cell, status)
            ),
        ),
        Seen::Nothing(what) => {
            // The destination's own refusals need tcp_send_reset with packet addresses (6.10+):
            // off by design before, the documented reduced form of refusals.
            let send_reset_off = cell == Cell::RefusedInbound
                && (probe(status, "tcp_send_reset").is_some_and(|p| p["attached"] != true)
                    || note.as_ref().is_some_and(|(m, _)| m != "full"));
            let verdict = if send_reset_off {
                Verdict::Degraded
            } else {
                Verdict::Fails
            };
            (
                verdict,
                format!(
                    "{what}{}; probes: {}",
                    said(&note),
                    probes_line(cell, status)
                ),
            )
        }
    }
}

/// A short account of a `query -o json` answer: its records (kind, direction, destination,
/// reason or outcome, count), at most five.
pub fn summary(answer: &Value) -> String {
    let Some(evidence) = answer["evidence"].as_array() else {
        return format!("no evidence array: {}", short(&answer.to_string(), 200));
    };
    if evidence.is_empty() {
        return "no evidence".to_owned();
    }
    let mut parts: Vec<String> = evidence
        .iter()
        .take(5)
        .map(|e| {
            let mut s = e["kind"].as_str().unwrap_or("?").to_owned();
            for key in ["direction", "dst", "reason", "outcome", "query", "source"] {
                if let Some(v) = e[key].as_str() {
                    s.push(' ');
                    s.push_str(v);
                }
            }
            format!("{s} x{}", e["count"].as_u64().unwrap_or(0))
        })
        .collect();
    if evidence.len() > 5 {
        parts.push(format!("+{} more", evidence.len() - 5));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kind_entries_concern_a_cell_only_through_its_probes() {
        let status = json!({"signals": [{"signal": "connection_refused", "mode": "degraded",
            "detail": "refusals are seen from the connecting side only (tcp_send_reset: no addresses); ICMP rejects are not seen (inet_sk_error_report is not loaded)"}]});
        assert_eq!(agent_note(Cell::RefusedOutbound, &status), None);
        let (mode, why) = agent_note(Cell::RefusedInbound, &status).unwrap_or_default();
        assert_eq!(mode, "degraded");
        assert!(
            why.contains("tcp_send_reset") && !why.contains("ICMP"),
            "{why}"
        );
        let (v, _) = verdict(
            Cell::RefusedInbound,
            &Seen::Nothing("none".into()),
            &status,
            "6.1.0",
        );
        assert_eq!(v, Verdict::Degraded);
        let (v, _) = verdict(
            Cell::RefusedOutbound,
            &Seen::Nothing("none".into()),
            &status,
            "6.1.0",
        );
        assert_eq!(v, Verdict::Fails);
    }

    #[test]
    fn without_signals_the_probes_speak() {
        let status = json!({"probes": [{"name": "tcp_send_reset", "attached": false, "error": "added in Linux 6.10"}]});
        let (v, detail) = verdict(
            Cell::RefusedInbound,
            &Seen::Nothing("none".into()),
            &status,
            "6.1.0",
        );
        assert_eq!(v, Verdict::Degraded);
        assert!(detail.contains("added in Linux 6.10"), "{detail}");
        let (v, _) = verdict(
            Cell::RefusedInbound,
            &Seen::Full("seen".into()),
            &status,
            "6.1.0",
        );
        assert_eq!(v, Verdict::Works);
    }

    #[test]
    fn a_drop_without_reason_is_degraded_only_where_kernels_have_none() {
        let seen = Seen::Reduced("drop with reason UNKNOWN".into());
        assert_eq!(
            verdict(Cell::PacketDrop, &seen, &Value::Null, "5.10.0-30-amd64").0,
            Verdict::Degraded
        );
        assert_eq!(
            verdict(Cell::PacketDrop, &seen, &Value::Null, "6.12.9").0,
            Verdict::Fails
        );
        assert_eq!(kernel_version("7.3.1-cloud-amd64"), Some((7, 3)));
    }
}
