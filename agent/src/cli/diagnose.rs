//! From evidence to a diagnosis: which layer is failing, what the evidence proves (and rules
//! out), and the safest next step, following the triage method "symptom -> layer -> evidence ->
//! hypothesis -> minimal test -> safe action". Steps are read-only checks first; the text says
//! when a restart would not help.

use serde::Serialize;

use crate::evidence::{Connection, Detail, Direction, Evidence, Kind};

/// One conclusion drawn from one or more records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub layer: &'static str,
    pub summary: String,
    pub next_step: String,
}

fn peer_text(c: &Connection) -> String {
    c.peer
        .as_ref()
        .map(|p| format!(" (pod {p})"))
        .unwrap_or_default()
}

/// Findings for a pod's evidence, most frequent first.
pub fn diagnose(evidence: &[Evidence]) -> Vec<Finding> {
    let mut sorted: Vec<&Evidence> = evidence.iter().collect();
    sorted.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)));
    sorted.into_iter().filter_map(finding).collect()
}

fn finding(e: &Evidence) -> Option<Finding> {
    let pod = e.pod().map_or_else(
        || "a process outside any pod".to_owned(),
        ToString::to_string,
    );
    match &e.detail {
        Detail::ConnectionRefused(c) => Some(refused(e, c, &pod)),
    }
}

fn refused(e: &Evidence, c: &Connection, pod: &str) -> Finding {
    let kind = e.kind();
    match c.direction {
        Direction::Outbound => {
            let (target, exec) = match &c.peer {
                Some(p) => (
                    format!("pod {p}"),
                    format!("kubectl exec -n {} {} -- ss -ltn", p.namespace, p.name),
                ),
                None => (
                    format!("the process behind {}", c.dst),
                    "ss -ltn where it runs".to_owned(),
                ),
            };
            Finding {
                kind,
                layer: kind.layer(),
                summary: format!(
                    "{pod} had {count} connection(s) to {dst}{peer} refused: the SYN reached the \
                     destination and was answered with RST, so nothing listens on port {port} \
                     there. Routing and NetworkPolicy delivered the packet (a policy drop shows \
                     as a timeout, not a refusal).",
                    count = e.count,
                    dst = c.dst,
                    peer = peer_text(c),
                    port = c.dst.port(),
                ),
                next_step: format!(
                    "Check what {target} listens on ({exec}) and compare it \
                     with the Service targetPort / EndpointSlice port for {dst}: a wrong \
                     targetPort, an app bound to 127.0.0.1, or an app not started yet are the \
                     usual causes. Restarting {pod} will not fix it.",
                    dst = c.dst,
                ),
            }
        }
        Direction::Inbound => Finding {
            kind,
            layer: kind.layer(),
            summary: format!(
                "{pod} refused {count} connection attempt(s) on port {port} from {src}{peer}: no \
                 socket listens on {dst} in this pod.",
                count = e.count,
                port = c.dst.port(),
                src = c.src.ip(),
                peer = peer_text(c),
                dst = c.dst,
            ),
            next_step: format!(
                "Check the container's listening ports (kubectl exec -n {ns} {name} -- ss -ltn) \
                 against its containerPort and the Service targetPort; if the app listens on \
                 127.0.0.1 it must listen on 0.0.0.0. If it is still starting, a readiness probe \
                 on port {port} keeps traffic away until it listens.",
                ns = e.pod().map_or("<namespace>", |p| p.namespace.as_str()),
                name = e.pod().map_or("<pod>", |p| p.name.as_str()),
                port = c.dst.port(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::fixtures::refused;

    fn refusal(direction: Direction, count: u64) -> Evidence {
        refused()
            .pod("shop", "web")
            .direction(direction)
            .count(count)
            .peer("shop", "db")
            .evidence()
    }

    #[test]
    fn refusals_point_at_the_listener_not_the_network() {
        let f = diagnose(&[
            refusal(Direction::Inbound, 1),
            refusal(Direction::Outbound, 5),
        ]);
        assert_eq!(f.len(), 2);
        assert!(
            f[0].summary
                .contains("5 connection(s) to 10.0.0.2:8080 (pod shop/db) refused"),
            "{}",
            f[0].summary
        );
        assert!(f[0].next_step.contains("pod shop/db"));
        assert!(
            f[0].next_step
                .contains("kubectl exec -n shop db -- ss -ltn")
        );
        assert!(f[0].next_step.contains("will not fix"));
        assert_eq!(f[0].layer, "connection");
        assert!(
            f[1].summary
                .contains("shop/web refused 1 connection attempt(s) on port 8080")
        );
        assert!(f[1].next_step.contains("kubectl exec -n shop web"));
    }
}
