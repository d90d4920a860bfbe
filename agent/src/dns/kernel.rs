//! The kernel's side of DNS matching (agent-ebpf/src/dns.rs): UDP queries waiting for their
//! answer (with what a server socket of this host did with them), and lookups answered well,
//! counted per cgroup in two tables switched by a generation like the flow tables.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::{
    Pod,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
};
use triage_agent_common::{AF_INET, AF_INET6, DnsAnswered, DnsHeld, DnsRepeatKey, DnsRepeats};

use super::{
    held::HeldTable,
    track::{RepeatChange, RepeatKey, Repeated},
};

/// The maps, owned by the DNS task.
pub struct DnsMaps {
    pub held: HeldTable,
    pub answered: [BpfHashMap<MapData, u64, DnsAnswered>; 2],
    /// Failures whose repeats the kernel counts (written here only).
    pub repeatable: BpfHashMap<MapData, DnsRepeatKey, u32>,
    /// Their repeats, switched with `answered`.
    pub repeats: [BpfHashMap<MapData, DnsRepeatKey, DnsRepeats>; 2],
    pub generation: Array<MapData, u32>,
    pub current: u32,
}

/// A cgroup's lookups the kernel found answered well in one drain interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    pub cgroup_id: u64,
    pub client_ip: IpAddr,
    pub lookups: u64,
    pub latency_sum: Duration,
    pub latency_max: Duration,
}

fn kernel_key(key: RepeatKey) -> DnsRepeatKey {
    DnsRepeatKey {
        cgroup_id: key.cgroup,
        question: key.question,
        rcode: u32::from(key.rcode),
        _pad0: 0,
    }
}

/// The record's bytes, as the ring would have carried them.
pub fn record_bytes(held: &DnsHeld) -> &[u8] {
    // SAFETY: DnsHeld is #[repr(C)] plain data with explicit padding (no uninitialised
    // bytes); the slice covers exactly the value and borrows it.
    unsafe {
        std::slice::from_raw_parts((held as *const DnsHeld).cast::<u8>(), size_of::<DnsHeld>())
    }
}

fn address(family: u16, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => None,
    }
}

impl DnsMaps {
    /// Takes out of the kernel's table the queries older than `age` at `now_ns`
    /// (CLOCK_BOOTTIME): from now on their answers come through the ring. A query the kernel
    /// matched meanwhile is not returned (the slot's compare-and-swap decides who owns it).
    /// Their slots keep sending the lookups' resends and answers up until `keep` after each
    /// was sent.
    pub fn take_older_than(&mut self, now_ns: u64, age: Duration, keep: Duration) -> Vec<DnsHeld> {
        self.held.take_older_than(now_ns, age, keep)
    }

    /// Makes programs count into the other answered table; returns the one they left, to
    /// drain once programs still running on it are done.
    pub fn flip(&mut self) -> Result<usize, MapError> {
        let old = self.current;
        self.generation.set(0, old ^ 1, 0)?;
        self.current = old ^ 1;
        Ok(old as usize)
    }

    /// Applies the tracker's changes to the kernel's table of failures it counts. A change the
    /// kernel refuses (its table full) leaves that failure coming up one by one: nothing lost.
    pub fn apply(&mut self, changes: Vec<RepeatChange>) {
        for change in changes {
            let _ = match change {
                RepeatChange::Count(key) => self.repeatable.insert(kernel_key(key), 1, 0),
                RepeatChange::Stop(key) => self.repeatable.remove(&kernel_key(key)),
            };
        }
    }

    /// Reads and empties a repeats table no program counts into any more.
    pub fn drain_repeats(&mut self, index: usize) -> Vec<Repeated> {
        let Some(table) = self.repeats.get_mut(index) else {
            return Vec::new();
        };
        take_all(table)
            .into_iter()
            .map(|(k, r)| Repeated {
                key: RepeatKey {
                    cgroup: k.cgroup_id,
                    question: k.question,
                    rcode: u8::try_from(k.rcode).unwrap_or(u8::MAX),
                },
                count: r.count,
                latency_sum: Duration::from_nanos(r.latency_sum_ns),
                latency_max: Duration::from_nanos(r.latency_max_ns),
                first_ns: r.first_ns,
                last_ns: r.last_ns,
            })
            .collect()
    }

    /// Reads and empties an answered table no program counts into any more.
    pub fn drain(&mut self, index: usize) -> Vec<Answered> {
        let Some(table) = self.answered.get_mut(index) else {
            return Vec::new();
        };
        take_all(table)
            .into_iter()
            .filter_map(|(cgroup_id, a)| {
                Some(Answered {
                    cgroup_id,
                    client_ip: address(a.family, a.client)?,
                    lookups: a.lookups,
                    latency_sum: Duration::from_nanos(a.latency_sum_ns),
                    latency_max: Duration::from_nanos(a.latency_max_ns),
                })
            })
            .collect()
    }
}

/// Every entry of a table no program writes any more, each removed once read.
fn take_all<K: Pod, V: Pod>(table: &mut BpfHashMap<MapData, K, V>) -> Vec<(K, V)> {
    let keys: Vec<K> = table.keys().filter_map(Result::ok).collect();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if let Ok(v) = table.get(&k, 0) {
            out.push((k, v));
        }
        let _ = table.remove(&k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_unknown_families_are_none() {
        assert_eq!(address(3, [0; 16]), None);
        assert_eq!(
            address(AF_INET, [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        );
    }
}
