//! What the kernel lost of each pod's evidence (see `evidence::PodLosses`), kept beside the
//! records for the pod's answers: counters, never records, so they take no record's room.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use crate::evidence::{Filter, PodLosses, PodRef};

/// Pods whose kernel losses are kept, at most: the least recently grown go first. Their
/// losses stay in the node-wide counters; only which pod they were is forgotten.
pub const LOSS_PODS: usize = 8192;

/// Per pod uid: the pod, its losses since the agent started, and when they last grew.
#[derive(Debug, Default)]
pub struct PodLossBook {
    by_pod: HashMap<String, (Arc<PodRef>, PodLosses, SystemTime)>,
}

impl PodLossBook {
    pub fn add(&mut self, pod: &Arc<PodRef>, losses: &PodLosses, at: SystemTime) {
        if !self.by_pod.contains_key(&pod.uid)
            && self.by_pod.len() >= LOSS_PODS
            && let Some(oldest) = self
                .by_pod
                .iter()
                .min_by_key(|(_, (_, _, t))| *t)
                .map(|(uid, _)| uid.clone())
        {
            self.by_pod.remove(&oldest);
        }
        let entry = self
            .by_pod
            .entry(pod.uid.clone())
            .or_insert_with(|| (pod.clone(), PodLosses::default(), at));
        entry.1.add(losses);
        entry.2 = entry.2.max(at);
    }

    /// The losses of the pods `filter` asks about, with when each last grew.
    pub fn select(&self, filter: &Filter) -> Vec<(Arc<PodRef>, PodLosses, SystemTime)> {
        self.by_pod
            .values()
            .filter(|(pod, _, _)| filter.matches_pod(Some(pod)))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::evidence::fixtures::pod_ref;

    #[test]
    fn adds_per_pod_and_forgets_the_stalest_pod_past_the_bound() {
        let mut book = PodLossBook::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let a = pod_ref("ns", "a");
        let one = PodLosses {
            connects: 1,
            ..PodLosses::default()
        };
        book.add(&a, &one, t0);
        book.add(&a, &one, t0 + Duration::from_secs(1));
        let got = book.select(&Filter::default());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.connects, 2);
        assert_eq!(got[0].2, t0 + Duration::from_secs(1));
        for i in 0..LOSS_PODS {
            book.add(
                &pod_ref("ns", &format!("p{i}")),
                &one,
                t0 + Duration::from_secs(2),
            );
        }
        let all = book.select(&Filter::default());
        assert_eq!(all.len(), LOSS_PODS);
        assert!(
            all.iter().all(|(p, _, _)| p.name != "a"),
            "the stalest pod goes"
        );
    }
}
