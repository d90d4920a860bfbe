//! The kernel's table of held UDP queries (agent-ebpf/src/dns/), mapped into this process:
//! [`DNS_HELD_SLOTS`] slots, each a state word ([`held_state`]), a key and a record. The agent
//! takes queries left unanswered past the handover age out of their slots with the same
//! compare-and-swap the programs use, so a query is owned by exactly one of its answer's
//! program and the agent, never both and never neither; the slot then stays the agent's for a
//! while, so the lookup's resends come up too.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use aya::maps::{Map, MapData};
use triage_agent_common::{
    BPF_F_MMAPABLE, DNS_HELD_SLOTS, DnsHeld, DnsSlot, held_notes,
    held_state::{self, AGENT, FREE, HELD, MASK, TAKING},
};

use crate::kernel::ns;

/// Why the table could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error("map {name} is not an array")]
    NotArray { name: &'static str },
    #[error("map {name}: reading its kernel description: {source}")]
    Info {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "map {name} has {entries} entries of {value_size} bytes (flags {flags:#x}); this agent \
         needs {want_entries} of {want_size} bytes, mappable: agent and programs come from \
         different builds"
    )]
    Layout {
        name: &'static str,
        entries: u32,
        value_size: u32,
        flags: u32,
        want_entries: u32,
        want_size: usize,
    },
    #[error("mapping {name} into memory: {source}")]
    Mmap {
        name: &'static str,
        source: std::io::Error,
    },
}

/// One array map's values in this process's memory (shared with the kernel).
pub(super) struct Mapping {
    at: NonNull<u8>,
    len: usize,
    /// Owns the map's file descriptor for as long as the mapping is used.
    _map: MapData,
}

// SAFETY: the mapping is plain memory shared with the kernel; every access goes through
// atomics or through a slot owned by the compare-and-swap protocol. Nothing in it is tied to
// the thread that made it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// The first value's address.
    pub(super) fn base(&self) -> *mut u8 {
        self.at.as_ptr()
    }

    /// Maps the `entries` values of `size` bytes of an array created with `BPF_F_MMAPABLE`.
    pub(super) fn new(
        name: &'static str,
        map: Map,
        entries: u32,
        size: usize,
    ) -> Result<Self, HeldError> {
        let Map::Array(data) = map else {
            return Err(HeldError::NotArray { name });
        };
        let info = data
            .info()
            .map_err(|source| HeldError::Info { name, source })?;
        if info.max_entries() != entries
            || info.value_size() as usize != size
            || info.map_flags() & BPF_F_MMAPABLE == 0
        {
            return Err(HeldError::Layout {
                name,
                entries: info.max_entries(),
                value_size: info.value_size(),
                flags: info.map_flags(),
                want_entries: entries,
                want_size: size,
            });
        }
        // Array values are 8-byte aligned and start at the mapping's first byte.
        let len = entries as usize * size.next_multiple_of(8);
        // SAFETY: a new shared mapping of the map's fd, of no more than its values (the kernel
        // checks the length against them); nothing else is at the address it picks.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(HeldError::Mmap {
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        let at = NonNull::new(at.cast::<u8>()).ok_or_else(|| HeldError::Mmap {
            name,
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(Self {
            at,
            len,
            _map: data,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing borrows it any more (borrows of
        // the table end with `&self`).
        unsafe { libc::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

/// The table of held queries.
pub struct HeldTable {
    slots: Mapping,
}

impl HeldTable {
    /// Maps the array (`DNS_HELD`).
    pub fn new(slots: Map) -> Result<Self, HeldError> {
        Ok(Self {
            slots: Mapping::new(
                triage_agent_common::DNS_HELD_MAP,
                slots,
                DNS_HELD_SLOTS,
                size_of::<DnsSlot>(),
            )?,
        })
    }

    /// Takes out of the table the queries held longer than `age` at `now_ns`
    /// (CLOCK_BOOTTIME): from now on their answers come through the ring. A query whose answer
    /// took it meanwhile is not returned. Each slot taken keeps its key, so the lookup's
    /// resends come through the ring too, until `keep` after the query was sent.
    pub fn take_older_than(&mut self, now_ns: u64, age: Duration, keep: Duration) -> Vec<DnsHeld> {
        // SAFETY: DNS_HELD_SLOTS DnsSlots (checked in `Mapping::new`), page-aligned, alive as
        // long as `self`; the kernel changes their state words only atomically.
        unsafe {
            take_older(
                self.slots.at.as_ptr().cast::<DnsSlot>(),
                DNS_HELD_SLOTS as usize,
                now_ns,
                age,
                keep,
            )
        }
    }
}

/// The slots whose state word says `HELD` since longer than `age` at `now_ns`, each claimed
/// (`HELD` -> `TAKING`), read, and left to the agent (`AGENT`, keeping its claim time); and
/// the agent's slots whose lookup was last sent longer than `keep` ago (a resend moves the
/// word's time), freed.
///
/// # Safety
/// `slots` points to `n` aligned DnsSlots, whose state words are only ever changed atomically
/// and whose keys and records only the owner of the word writes (apart from a server's notes
/// on a held query).
unsafe fn take_older(
    slots: *mut DnsSlot,
    n: usize,
    now_ns: u64,
    age: Duration,
    keep: Duration,
) -> Vec<DnsHeld> {
    let (age, keep) = (ns(age), ns(keep));
    let mut out = Vec::new();
    for i in 0..n {
        // SAFETY: slot i of the n; its word is an aligned u64 only accessed atomically.
        let state = unsafe { word(slots, i) };
        let seen = state.load(Ordering::Acquire);
        let held_for = now_ns.saturating_sub(held_state::time(seen));
        let (from, to) = match seen & MASK {
            HELD if held_for >= age => (seen, held_state::with(seen, TAKING)),
            AGENT if held_for >= keep => {
                // The lookup has ended for the agent: the slot is free for another (unless a
                // query claimed it meanwhile).
                let _ = state.compare_exchange(
                    seen,
                    held_state::with(seen, FREE),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                continue;
            }
            _ => continue,
        };
        // The word names one occupancy (its claim time): if it still reads `seen`, the query
        // that was old is the one taken.
        if state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // SAFETY: slot i is ours until it is handed on below; the caller's promise for the
        // rest. Volatile: a server's note may still land on it. The notes word first, then the
        // server's cgroup written before it.
        let notes = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*slots.add(i)).notes)) };
        // SAFETY: as above.
        let mut held = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*slots.add(i)).held)) };
        // Notes about an earlier query in this slot (another tag) count as none.
        held_notes::apply(notes, seen, &mut held);
        state.store(held_state::with(seen, AGENT), Ordering::Release);
        out.push(held);
    }
    out
}

/// Slot i's state word.
///
/// # Safety
/// Slot i is one of the caller's aligned DnsSlots, alive for `'a`, whose word is only ever
/// accessed atomically.
unsafe fn word<'a>(slots: *mut DnsSlot, i: usize) -> &'a AtomicU64 {
    // SAFETY: the caller's promise.
    unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*slots.add(i)).state)) }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use triage_agent_common::{DNS_HELD_SLOTS, DnsEvent, DnsKey, EventHeader, held_state::WRITING};

    use super::*;

    const SLOTS: usize = 1024;
    const MS: u64 = 1_000_000;

    fn empty() -> DnsSlot {
        DnsSlot {
            state: FREE,
            key: DnsKey::default(),
            cgroup_id: 0,
            server: [0; 16],
            server_port: 53,
            _pad1: 0,
            notes: 0,
            held: DnsHeld {
                query: DnsEvent {
                    header: EventHeader {
                        kind: 16,
                        len: 360,
                        boot_ns: 0,
                    },
                    cgroup_id: 0,
                    family: 2,
                    protocol: 17,
                    flags: 3,
                    sport: 40000,
                    dport: 53,
                    wire_len: 12,
                    captured: 12,
                    _pad0: 0,
                    saddr: [0; 16],
                    daddr: [0; 16],
                    payload: [0; 288],
                },
                server_cgroup: 0,
                reached: 0,
                answered: 0,
            },
            _pad0: 0,
        }
    }

    /// A table shared between threads the way the kernel's is: through a raw pointer, words
    /// changed atomically. Leaked: the threads of a test may outlive its borrows.
    fn table() -> *mut DnsSlot {
        Box::leak((0..SLOTS).map(|_| empty()).collect::<Box<[DnsSlot]>>()).as_mut_ptr()
    }

    fn state(slots: *mut DnsSlot, i: usize) -> &'static AtomicU64 {
        assert!(i < SLOTS);
        // SAFETY: one of the table's SLOTS slots, leaked; words only accessed atomically.
        unsafe { word(slots, i) }
    }

    /// What a query's program does: claim a free slot, write it, publish it.
    fn hold(slots: *mut DnsSlot, i: usize, now_ns: u64, id: u16) -> bool {
        let w = state(slots, i);
        let seen = w.load(Ordering::Acquire);
        if seen & MASK != FREE {
            return false;
        }
        let claimed = held_state::claimed(seen, now_ns);
        if w.compare_exchange(seen, claimed, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // SAFETY: slot i is ours (claimed just above) until it is published.
        unsafe {
            let slot = slots.add(i);
            (*slot).key.id = id;
            (*slot).held.query.header.boot_ns = now_ns;
            (*slot).held.query.cgroup_id = u64::from(id);
        }
        w.store(held_state::with(claimed, HELD), Ordering::Release);
        true
    }

    const KEEP: Duration = Duration::from_secs(10);

    fn take(slots: *mut DnsSlot, now_ns: u64, age: Duration) -> Vec<DnsHeld> {
        // SAFETY: the table's SLOTS slots, leaked.
        unsafe { take_older(slots, SLOTS, now_ns, age, KEEP) }
    }

    fn state_of(slots: *mut DnsSlot, i: usize) -> u64 {
        state(slots, i).load(Ordering::Acquire) & MASK
    }

    /// What a DNS server socket's programs note on the query held in slot i: received, and
    /// answered when `answered`.
    fn note(slots: *mut DnsSlot, i: usize, server_cgroup: u64, answered: bool) {
        let seen = state(slots, i).load(Ordering::Acquire);
        assert_eq!(seen & MASK, HELD);
        // SAFETY: one of the table's slots, leaked.
        unsafe {
            let slot = slots.add(i);
            (*slot).held.server_cgroup = server_cgroup;
            (*slot).notes = held_notes::tag(seen)
                | held_notes::REACHED
                | if answered { held_notes::ANSWERED } else { 0 };
        }
    }

    #[test]
    fn only_held_queries_past_the_age_are_taken_and_their_slots_kept_for_the_agent() {
        let slots = table();
        assert!(hold(slots, 1, 100 * MS, 1));
        assert!(hold(slots, 2, 900 * MS, 2));
        assert!(hold(slots, 3, 50 * MS, 3));
        // Slot 4: being written; slot 5: being taken by its answer. Neither is touched.
        state(slots, 4).store(held_state::claimed(0, 10 * MS), Ordering::Release);
        state(slots, 5).store(
            held_state::with(held_state::claimed(0, 10 * MS), TAKING),
            Ordering::Release,
        );
        // A held slot is not claimed a second time.
        assert!(!hold(slots, 1, 120 * MS, 9));

        let taken = take(slots, 1_000 * MS, Duration::from_millis(500));
        let ids: Vec<u64> = taken.iter().map(|h| h.query.cgroup_id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(taken[0].query.header.boot_ns, 100 * MS);
        // Taken slots stay the agent's, with their key (the kernel sends resends up).
        for i in [1, 3] {
            assert_eq!(state_of(slots, i), AGENT);
        }
        assert_eq!(state_of(slots, 2), HELD);
        assert_eq!(state_of(slots, 4), WRITING);
        assert_eq!(state_of(slots, 5), TAKING);
        // Nothing is taken twice, and the agent's slots are kept until KEEP after their query.
        let later = take(slots, 10_049 * MS, Duration::from_millis(500));
        assert_eq!(later.len(), 1, "only slot 2's query, now old too");
        assert_eq!(later[0].query.cgroup_id, 2);
        assert_eq!(state_of(slots, 3), AGENT);
        assert_eq!(state_of(slots, 1), AGENT);
        // A query that found no free slot claimed slot 1 meanwhile: it is not freed under it.
        let seen = state(slots, 1).load(Ordering::Acquire);
        state(slots, 1).store(held_state::claimed(seen, 9_000 * MS), Ordering::Release);
        assert!(take(slots, 10_050 * MS, Duration::from_millis(500)).is_empty());
        assert_eq!(state_of(slots, 3), FREE);
        assert_eq!(state_of(slots, 1), WRITING);
        // A freed slot's next claim gets a later time than its last, whatever the clock says.
        let w = state(slots, 3).load(Ordering::Acquire);
        assert_eq!(held_state::time(w), 50 * MS);
        assert!(hold(slots, 3, 0, 7));
        assert_eq!(
            held_state::time(state(slots, 3).load(Ordering::Acquire)),
            50 * MS + 1
        );
    }

    #[test]
    fn server_notes_reach_the_agent_only_with_the_query_they_were_made_for() {
        let slots = table();
        // Slot 1: noted for the query held now. Slot 2: noted for an earlier query, whose
        // slot was taken and freed before this one claimed it (a query never clears notes).
        assert!(hold(slots, 1, 100 * MS, 1));
        note(slots, 1, 77, true);
        assert!(hold(slots, 2, 100 * MS, 2));
        note(slots, 2, 88, true);
        let seen = state(slots, 2).load(Ordering::Acquire);
        state(slots, 2).store(held_state::with(seen, FREE), Ordering::Release);
        assert!(hold(slots, 2, 200 * MS, 3));
        // Slot 3: received by a server that has not answered.
        assert!(hold(slots, 3, 300 * MS, 4));
        note(slots, 3, 99, false);

        let taken = take(slots, 1_000 * MS, Duration::from_millis(500));
        assert_eq!(taken.len(), 3);
        assert_eq!(taken[0].query.cgroup_id, 1);
        assert_eq!(
            (taken[0].server_cgroup, taken[0].reached, taken[0].answered),
            (77, 1, 1)
        );
        assert_eq!(taken[1].query.cgroup_id, 3);
        assert_eq!(
            (taken[1].server_cgroup, taken[1].reached, taken[1].answered),
            (0, 0, 0)
        );
        assert_eq!(taken[2].query.cgroup_id, 4);
        assert_eq!(
            (taken[2].server_cgroup, taken[2].reached, taken[2].answered),
            (99, 1, 0)
        );
    }

    /// A client's queries spread over the slots at least as well as a random choice would,
    /// whatever pattern its ids and ports follow: sequential ids from one port, one id from sequential ports, and IPv6 clients
    /// that differ in one byte.
    #[test]
    fn slot_indexes_spread_queries_at_least_as_well_as_a_random_choice() {
        let n = DNS_HELD_SLOTS as usize;
        let spread = |keys: &mut dyn Iterator<Item = DnsKey>| {
            let mut used = vec![0u32; n];
            for k in keys {
                let i = triage_agent_common::dns_slot_index(&k) as usize;
                used[i] += 1;
            }
            (
                used.iter().filter(|&&c| c > 0).count(),
                used.into_iter().max().unwrap_or(0),
            )
        };
        let v4 = |port: u16, id: u16| DnsKey {
            client: [10, 244, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            client_port: port,
            id,
            family: 2,
            _pad0: 0,
        };
        // n keys into n slots at random fill 1 - 1/e of them (63%), at most a handful each.
        let sets: [(&str, Box<dyn Iterator<Item = DnsKey>>); 3] = [
            ("ids", Box::new((0..n as u16).map(|id| v4(40000, id)))),
            ("ports", Box::new((0..n as u16).map(|p| v4(1024 + p, 7)))),
            (
                "v6",
                Box::new((0..n).map(|i| DnsKey {
                    client: [
                        0xfd,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        (i >> 8) as u8,
                        i as u8,
                    ],
                    client_port: 53000,
                    id: 1,
                    family: 10,
                    _pad0: 0,
                })),
            ),
        ];
        for (name, mut keys) in sets {
            let (filled, most) = spread(&mut keys);
            assert!(filled > n * 60 / 100, "{name}: {filled} of {n}");
            assert!(most <= 8, "{name}: {most} keys in one slot");
        }
    }

    /// Answers racing the agent for the same old queries: each query is owned by exactly one
    /// of them. Both sides start each round spinning on one flag and sweep the table from
    /// opposite ends, so they meet in the middle; over the rounds, each wins some.
    #[test]
    fn every_query_is_owned_once_when_answers_race_the_takeover() {
        const ROUNDS: u64 = 500;
        let slots = table();
        let shared = slots as usize;
        let go = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let answers = {
            let (go, done, answered) = (go.clone(), done.clone(), answered.clone());
            std::thread::spawn(move || {
                let slots = shared as *mut DnsSlot;
                for round in 1..=ROUNDS {
                    while go.load(Ordering::Acquire) != round {
                        std::hint::spin_loop();
                    }
                    for i in (0..SLOTS).rev() {
                        let w = state(slots, i);
                        let seen = w.load(Ordering::Acquire);
                        if seen & MASK == HELD
                            && w.compare_exchange(
                                seen,
                                held_state::with(seen, TAKING),
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            )
                            .is_ok()
                        {
                            answered.fetch_add(1, Ordering::Relaxed);
                            w.store(held_state::with(seen, FREE), Ordering::Release);
                        }
                    }
                    done.store(round, Ordering::Release);
                }
            })
        };
        let mut taken = 0u64;
        for round in 1..=ROUNDS {
            let sent = round * 100 * MS;
            for i in 0..SLOTS {
                assert!(hold(slots, i, sent, i as u16));
            }
            go.store(round, Ordering::Release);
            let got = take(slots, sent + 1, Duration::ZERO);
            while done.load(Ordering::Acquire) != round {
                std::hint::spin_loop();
            }
            for h in &got {
                assert_eq!(h.query.header.boot_ns, sent, "a query of this round");
            }
            taken += got.len() as u64;
            // Answered slots are free; taken ones the agent's, until it frees them.
            let agent = (0..SLOTS).filter(|&i| state_of(slots, i) == AGENT).count();
            let free = (0..SLOTS).filter(|&i| state_of(slots, i) == FREE).count();
            assert_eq!((agent, free), (got.len(), SLOTS - got.len()));
            assert!(take(slots, sent + KEEP.as_nanos() as u64, Duration::MAX).is_empty());
            assert!((0..SLOTS).all(|i| state_of(slots, i) == FREE));
        }
        answers.join().unwrap();
        let answered = answered.load(Ordering::Relaxed);
        assert_eq!(taken + answered, ROUNDS * SLOTS as u64);
        assert!(
            taken > 0 && answered > 0,
            "no race: taken {taken}, answered {answered}"
        );
    }
}
