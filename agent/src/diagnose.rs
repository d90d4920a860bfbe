//! From evidence to a diagnosis: which layer is failing, what the evidence proves (and rules
//! out), and the safest next step, following the triage method "symptom -> layer -> evidence ->
//! hypothesis -> minimal test -> safe action". Steps are read-only checks first; the text says
//! when a restart would not help. Each kind's reading is its own (`KindDetail::diagnose`, in
//! `evidence/kinds/`); this module orders the findings and names the pod.

use crate::evidence::Evidence;
pub use crate::evidence::Finding;

/// Findings for a pod's evidence, most frequent first.
pub fn diagnose(evidence: &[Evidence]) -> Vec<Finding> {
    let mut sorted: Vec<&Evidence> = evidence.iter().collect();
    sorted.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)));
    sorted.into_iter().map(|e| finding(e, evidence)).collect()
}

/// [`diagnose`] with the index (into `evidence`) of the record each finding reads, so a
/// report can cite it.
pub fn diagnose_cited(evidence: &[Evidence]) -> Vec<(usize, Finding)> {
    let mut order: Vec<(usize, &Evidence)> = evidence.iter().enumerate().collect();
    order.sort_by(|(_, a), (_, b)| b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)));
    order
        .into_iter()
        .map(|(i, e)| (i, finding(e, evidence)))
        .collect()
}

/// `all`: every record of the answer, for findings that read one record in the light of
/// another (a DNS timeout and the drops of its queries).
fn finding(e: &Evidence, all: &[Evidence]) -> Finding {
    let pod = e.pod().map_or_else(
        || "a process outside any pod".to_owned(),
        ToString::to_string,
    );
    e.detail.diagnose(e, &pod, all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Cause, Direction, fixtures::refused};

    fn refusal(direction: Direction, count: u64) -> Evidence {
        refused()
            .pod("shop", "web")
            .direction(direction)
            .count(count)
            .peer("shop", "db")
            .evidence()
    }

    #[test]
    fn drops_timeouts_and_rejects_point_at_the_path() {
        use crate::evidence::fixtures::{dropped, timeout};
        let f = diagnose(&[
            dropped()
                .pod("shop", "web")
                .peer("data", "db")
                .count(9)
                .evidence(),
            timeout().pod("shop", "web").count(3).evidence(),
            refused()
                .pod("shop", "web")
                .cause(Some(Cause::Rejected))
                .reason("ICMP_ADMIN_PROHIBITED")
                .evidence(),
        ]);
        assert!(
            f[0].summary.contains(
                "shop/web's tcp SYN packets to 10.0.0.2:5432 (pod data/db) are being dropped \
                 by the kernel (NETFILTER_DROP): 9 since"
            ),
            "{}",
            f[0].summary
        );
        assert!(f[0].next_step.contains("NetworkPolicy"));
        assert!(
            f[1].summary
                .contains("never answered (2 SYN retransmission(s))")
        );
        assert!(f[1].summary.contains("Not a refusal"));
        assert!(
            f[2].summary
                .contains("rejected by a firewall rule (ICMP_ADMIN_PROHIBITED)")
        );
        assert!(!f[2].summary.contains("nothing listens on"));
    }

    #[test]
    fn a_child_oom_says_which_process_the_limit_and_that_kubernetes_did_not_report_it() {
        use crate::evidence::fixtures::{oom_killed, throttled};
        let f = diagnose(&[oom_killed().pod("shop", "web").evidence()]);
        let s = &f[0].summary;
        assert!(s.contains("worker[42]"), "{s}");
        assert!(s.contains("64.0MiB"), "{s}");
        assert!(s.contains("Kubernetes did not report it"), "{s}");
        assert!(f[0].next_step.contains("kubectl top pod -n shop web"));
        assert_eq!(f[0].layer, "memory");
        let main = diagnose(&[oom_killed().main_process(Some(true)).evidence()]);
        assert!(main[0].summary.contains("OOMKilled"));
        assert!(!main[0].summary.contains("did not report"));

        let t = diagnose(&[throttled().pod("shop", "web").evidence()]);
        assert!(
            t[0].summary.contains("80% of its CPU periods"),
            "{}",
            t[0].summary
        );
        assert!(t[0].summary.contains("0.1 cores"));
        assert!(t[0].next_step.contains("Review the CPU limit"));
        assert!(t[0].next_step.contains("Restarting will not help"));
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
