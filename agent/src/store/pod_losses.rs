//! What the kernel lost of each pod's evidence (see `evidence::PodLosses`), kept beside the
//! records for the pod's answers: counters, never records, so they take no record's room. With
//! the store on disk they are kept in the file too (the store tells its backend of every pod
//! whose losses changed or were forgotten), so a pod's answer after a restart still says what
//! the kernel lost of it before.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use crate::{
    attribute::PodLossTally,
    evidence::{Filter, PodLosses, PodRef},
};

/// Pods whose kernel losses are kept, at most: the least recently grown go first. Their
/// losses stay in the node-wide counters; only which pod they were is forgotten.
pub const LOSS_PODS: usize = 8192;

/// Per pod uid: the pod, its losses since the agent started (with the store on disk, since
/// the store began), and when they last grew.
#[derive(Debug, Default)]
pub struct PodLossBook {
    by_pod: HashMap<String, (Arc<PodRef>, PodLosses, SystemTime)>,
}

impl PodLossBook {
    /// Adds a pod's losses; returns the uid of the pod forgotten for room (the least recently
    /// grown, when a new pod comes past [`LOSS_PODS`]), if one was.
    pub fn add(&mut self, pod: &Arc<PodRef>, losses: &PodLosses, at: SystemTime) -> Option<String> {
        let mut forgotten = None;
        if !self.by_pod.contains_key(&pod.uid)
            && self.by_pod.len() >= LOSS_PODS
            && let Some(oldest) = self
                .by_pod
                .iter()
                .min_by_key(|(_, (_, _, t))| *t)
                .map(|(uid, _)| uid.clone())
        {
            self.by_pod.remove(&oldest);
            forgotten = Some(oldest);
        }
        let entry = self
            .by_pod
            .entry(pod.uid.clone())
            .or_insert_with(|| (pod.clone(), PodLosses::default(), at));
        entry.1.add(losses);
        entry.2 = entry.2.max(at);
        forgotten
    }

    /// The pod's losses, as the backend keeps them (`None`: none kept, or forgotten).
    pub fn get(&self, uid: &str) -> Option<PodLossTally> {
        self.by_pod.get(uid).map(|(pod, losses, at)| PodLossTally {
            at: *at,
            pod: pod.clone(),
            losses: *losses,
        })
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
        assert_eq!(book.add(&a, &one, t0), None);
        assert_eq!(book.add(&a, &one, t0 + Duration::from_secs(1)), None);
        let got = book.select(&Filter::default());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.connects, 2);
        assert_eq!(got[0].2, t0 + Duration::from_secs(1));
        for i in 1..LOSS_PODS {
            book.add(
                &pod_ref("ns", &format!("p{i}")),
                &one,
                t0 + Duration::from_secs(2),
            );
        }
        assert_eq!(book.get(&a.uid).map(|l| l.losses.connects), Some(2));
        // One pod more than the book keeps: the stalest goes, and the store is told which.
        assert_eq!(
            book.add(&pod_ref("ns", "p0"), &one, t0 + Duration::from_secs(2)),
            Some(a.uid.clone())
        );
        assert!(book.get(&a.uid).is_none());
        let all = book.select(&Filter::default());
        assert_eq!(all.len(), LOSS_PODS);
        assert!(
            all.iter().all(|(p, _, _)| p.name != "a"),
            "the stalest pod goes"
        );
    }
}
