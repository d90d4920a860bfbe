//! The kernel's side of DNS matching (agent-ebpf/src/dns/): UDP queries waiting for their
//! answer (with what a server socket of this host did with them), and lookups answered well,
//! counted per cgroup in two tables switched by a generation like the flow tables.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError};
use triage_agent_common::{
    AF_INET, AF_INET6, DNS_ANSWERED_SLOTS, DnsAnswered, DnsAnsweredSlot, DnsHeld, DnsRepeatKey,
    DnsRepeats,
};

use super::{
    dns_held::{HeldError, HeldTable, Mapping},
    dns_repeats::{RepeatChange, RepeatKey, Repeated},
    ring::take_all,
};

/// One of the arrays in front of the answered tables, mapped into this process: a cgroup's
/// counts in its direct-mapped slot.
pub struct AnsweredSlots {
    slots: Mapping,
}

impl AnsweredSlots {
    /// Maps the array `name` (one of `DNS_ANSWERED_SLOTS_MAPS`).
    pub fn new(name: &'static str, map: Map) -> Result<Self, HeldError> {
        Ok(Self {
            slots: Mapping::new(name, map, DNS_ANSWERED_SLOTS, size_of::<DnsAnsweredSlot>())?,
        })
    }

    /// Reads and empties every taken slot (no program counts into this generation any more).
    fn take_all(&mut self) -> Vec<(u64, DnsAnswered)> {
        // SAFETY: DNS_ANSWERED_SLOTS DnsAnsweredSlots (checked in `Mapping::new`),
        // page-aligned, alive as long as `self`.
        unsafe {
            take_slots(
                self.slots.base().cast::<DnsAnsweredSlot>(),
                DNS_ANSWERED_SLOTS as usize,
            )
        }
    }
}

/// Every taken slot's cgroup and counts, each slot emptied once read (its owner word last).
///
/// # Safety
/// `slots` points to `n` aligned DnsAnsweredSlots whose owner words are only changed
/// atomically, and no program counts into them any more.
unsafe fn take_slots(slots: *mut DnsAnsweredSlot, n: usize) -> Vec<(u64, DnsAnswered)> {
    let mut out = Vec::new();
    for i in 0..n {
        // SAFETY: slot i of the n, in bounds and aligned; its owner word is an aligned u64.
        unsafe {
            let slot = slots.add(i);
            let owner = AtomicU64::from_ptr(std::ptr::addr_of_mut!((*slot).cgroup_id));
            let cgroup_id = owner.load(Ordering::Acquire);
            if cgroup_id == 0 {
                continue;
            }
            let counts = std::ptr::addr_of_mut!((*slot).answered);
            let answered = std::ptr::read_volatile(counts);
            std::ptr::write_volatile(counts, DnsAnswered::default());
            owner.store(0, Ordering::Release);
            if answered.lookups > 0 {
                out.push((cgroup_id, answered));
            }
        }
    }
    out
}

/// The maps, owned by the DNS task.
pub struct DnsMaps {
    pub held: HeldTable,
    /// In front of `answered`, switched with it.
    pub answered_slots: [AnsweredSlots; 2],
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

    /// How many programs are writing generation `index` (see agent-ebpf/src/dns/counters.rs).
    pub fn in_flight(&self, index: usize) -> Result<u32, MapError> {
        self.generation.get(&(1 + index as u32), 0)
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
        let (Some(slots), Some(table)) = (
            self.answered_slots.get_mut(index),
            self.answered.get_mut(index),
        ) else {
            return Vec::new();
        };
        let mut all = slots.take_all();
        all.extend(take_all(table));
        all.into_iter()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_answered_slots_are_read_once_and_emptied() {
        let counts = |lookups| DnsAnswered {
            lookups,
            latency_sum_ns: lookups * 1000,
            latency_max_ns: 2000,
            family: AF_INET,
            _pad0: [0; 3],
            client: [10, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let mut slots = vec![DnsAnsweredSlot::default(); 8];
        slots[1] = DnsAnsweredSlot {
            cgroup_id: 4097,
            answered: counts(3),
            _pad0: 0,
        };
        slots[6] = DnsAnsweredSlot {
            cgroup_id: 4102,
            answered: counts(40),
            _pad0: 0,
        };
        // Taken, nothing counted yet (a program between its claim and its add).
        slots[7].cgroup_id = 4103;
        // SAFETY: 8 aligned slots owned by this test.
        let taken = unsafe { take_slots(slots.as_mut_ptr(), slots.len()) };
        assert_eq!(taken, vec![(4097, counts(3)), (4102, counts(40))]);
        assert!(slots.iter().all(|s| *s == DnsAnsweredSlot::default()));
        // SAFETY: as above.
        assert!(unsafe { take_slots(slots.as_mut_ptr(), slots.len()) }.is_empty());
    }

    #[test]
    fn addresses_of_unknown_families_are_none() {
        assert_eq!(address(3, [0; 16]), None);
        assert_eq!(
            address(AF_INET, [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        );
    }
}
