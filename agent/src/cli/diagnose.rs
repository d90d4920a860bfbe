//! From evidence to a diagnosis: which layer is failing, what the evidence proves (and rules
//! out), and the safest next step, following the triage method "symptom -> layer -> evidence ->
//! hypothesis -> minimal test -> safe action". Steps are read-only checks first; the text says
//! when a restart would not help.

use serde::Serialize;

use crate::evidence::{Direction, Evidence, Kind};

/// One conclusion drawn from one or more records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub layer: &'static str,
    pub summary: String,
    pub next_step: String,
}

fn peer_text(e: &Evidence) -> String {
    e.peer
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
    let pod = e.pod.as_ref().map_or_else(
        || "a process outside any pod".to_owned(),
        ToString::to_string,
    );
    match (e.kind, e.direction) {
        (Kind::ConnectionRefused, Direction::Outbound) => {
            let (target, exec) = match &e.peer {
                Some(p) => (
                    format!("pod {p}"),
                    format!("kubectl exec -n {} {} -- ss -ltn", p.namespace, p.name),
                ),
                None => (
                    format!("the process behind {}", e.dst),
                    "ss -ltn where it runs".to_owned(),
                ),
            };
            Some(Finding {
                kind: e.kind,
                layer: e.kind.layer(),
                summary: format!(
                    "{pod} had {count} connection(s) to {dst}{peer} refused: the SYN reached the \
                     destination and was answered with RST, so nothing listens on port {port} \
                     there. Routing and NetworkPolicy delivered the packet (a policy drop shows \
                     as a timeout, not a refusal).",
                    count = e.count,
                    dst = e.dst,
                    peer = peer_text(e),
                    port = e.dst.port(),
                ),
                next_step: format!(
                    "Check what {target} listens on ({exec}) and compare it \
                     with the Service targetPort / EndpointSlice port for {dst}: a wrong \
                     targetPort, an app bound to 127.0.0.1, or an app not started yet are the \
                     usual causes. Restarting {pod} will not fix it.",
                    dst = e.dst,
                ),
            })
        }
        (Kind::ConnectionRefused, Direction::Inbound) => Some(Finding {
            kind: e.kind,
            layer: e.kind.layer(),
            summary: format!(
                "{pod} refused {count} connection attempt(s) on port {port} from {src}{peer}: no \
                 socket listens on {dst} in this pod.",
                count = e.count,
                port = e.dst.port(),
                src = e.src.ip(),
                peer = peer_text(e),
                dst = e.dst,
            ),
            next_step: format!(
                "Check the container's listening ports (kubectl exec -n {ns} {name} -- ss -ltn) \
                 against its containerPort and the Service targetPort; if the app listens on \
                 127.0.0.1 it must listen on 0.0.0.0. If it is still starting, a readiness probe \
                 on port {port} keeps traffic away until it listens.",
                ns = e
                    .pod
                    .as_ref()
                    .map_or("<namespace>", |p| p.namespace.as_str()),
                name = e.pod.as_ref().map_or("<pod>", |p| p.name.as_str()),
                port = e.dst.port(),
            ),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Attribution, PodRef, Protocol};
    use std::time::SystemTime;

    fn refused(direction: Direction, count: u64) -> Evidence {
        Evidence {
            kind: Kind::ConnectionRefused,
            node: "n".into(),
            pod: Some(PodRef {
                namespace: "shop".into(),
                name: "web".into(),
                uid: "u".into(),
            }),
            container: None,
            process: None,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            count,
            attribution: Attribution::Cgroup,
            direction,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:8080".parse().unwrap(),
            protocol: Protocol::Tcp,
            reason: None,
            peer: Some(PodRef {
                namespace: "shop".into(),
                name: "db".into(),
                uid: "v".into(),
            }),
        }
    }

    #[test]
    fn refusals_point_at_the_listener_not_the_network() {
        let f = diagnose(&[
            refused(Direction::Inbound, 1),
            refused(Direction::Outbound, 5),
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
