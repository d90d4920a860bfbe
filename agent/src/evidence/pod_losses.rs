//! What the kernel lost of one pod's evidence because the pod had used up its share of a
//! shared table or ring (or the table was full): the pod's own loss counters, shown in its
//! answer beside its records (not evidence itself).

use serde_json::{Value, json};

/// A pod's kernel-side losses, each in its unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodLosses {
    /// connect() attempts the kernel could not remember: their refusal or timeout is not seen.
    pub connects: u64,
    /// Failure occurrences (refusals, timeouts, drops) neither counted nor sent.
    pub occurrences: u64,
    /// DNS packets not copied to the agent: the lookups they belong to may be missing.
    pub dns_packets: u64,
}

impl PodLosses {
    pub fn add(&mut self, other: &PodLosses) {
        self.connects = self.connects.saturating_add(other.connects);
        self.occurrences = self.occurrences.saturating_add(other.occurrences);
        self.dns_packets = self.dns_packets.saturating_add(other.dns_packets);
    }

    /// Everything lost, whatever its unit (for "lost nothing" checks and loss accounting).
    pub fn total(&self) -> u64 {
        self.connects
            .saturating_add(self.occurrences)
            .saturating_add(self.dns_packets)
    }

    pub fn json(&self) -> Value {
        json!({
            "connects": self.connects,
            "occurrences": self.occurrences,
            "dns_packets": self.dns_packets,
        })
    }

    /// "12 connect attempts not watched, 3 failure occurrences not counted" (only what is not 0).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (
                self.connects,
                "connect attempt(s) not watched (no refusal or timeout of theirs can be seen)",
            ),
            (self.occurrences, "failure occurrence(s) not counted"),
            (
                self.dns_packets,
                "DNS packet(s) not copied (their lookups may be missing)",
            ),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_and_says_only_what_was_lost() {
        let mut a = PodLosses {
            connects: 2,
            ..PodLosses::default()
        };
        a.add(&PodLosses {
            connects: 1,
            dns_packets: 4,
            occurrences: 0,
        });
        assert_eq!(a.total(), 7);
        assert_eq!(
            a.describe(),
            "3 connect attempt(s) not watched (no refusal or timeout of theirs can be seen), \
             4 DNS packet(s) not copied (their lookups may be missing)"
        );
        assert_eq!(PodLosses::default().describe(), "");
    }
}
