//! The slots of the held-query table (`DNS_HELD`): a query's two slots, their state word
//! claimed and handed on with compare-and-swap, and what a slot holds.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use triage_agent_common::{DnsHeld, DnsKey, DnsSlot, dns_slot_index, held_notes, held_state};

use super::{
    packet::Packet,
    ring::{reserve, wakeup},
};
use crate::maps::DNS_HELD;
use held_state::{AGENT, FREE, MASK};

/// 1 when stores reach other CPUs in program order (see
/// [`triage_agent_common::DNS_STORES_ORDERED_GLOBAL`]), overwritten by the loader before load.
#[unsafe(no_mangle)]
static DNS_STORES_ORDERED: u32 = 0;

/// A held query's slot: its state word and its key and record.
pub(super) struct Slot {
    state: *mut u64,
    pub(super) slot: *mut DnsSlot,
}

/// A state as a bit, for [`Slot::find`].
pub(super) const fn bit(state: u64) -> u32 {
    1 << state
}

impl Slot {
    #[inline(always)]
    fn at(index: u32) -> Option<Self> {
        let slot = DNS_HELD.get_ptr_mut(index)?;
        Some(Self {
            // SAFETY: a field of an array value, valid while the program runs.
            state: unsafe { core::ptr::addr_of_mut!((*slot).state) },
            slot,
        })
    }

    /// The slot of `key`'s two whose word is in one of the `states` (bits) with `key`'s
    /// query, and that word.
    #[inline(always)]
    pub(super) fn find(key: &DnsKey, states: u32) -> Option<(Self, u64)> {
        let first = dns_slot_index(key);
        for index in [first, first ^ 1] {
            if let Some(slot) = Self::at(index) {
                let seen = slot.word();
                if bit(seen & MASK) & states != 0 && slot.holds(key) {
                    return Some((slot, seen));
                }
            }
        }
        None
    }

    /// Claims one of `key`'s two slots for a query sent at `now`: a free one, else one the
    /// agent keeps for an earlier lookup (whose later resends are then matched like new
    /// queries: a timeout flood must not fill the table for everyone). The slot and the word
    /// it claimed with.
    #[inline(always)]
    pub(super) fn claim(key: &DnsKey, now: u64) -> Option<(Self, u64)> {
        let first = dns_slot_index(key);
        for wanted in [FREE, AGENT] {
            for index in [first, first ^ 1] {
                if let Some(slot) = Self::at(index) {
                    let seen = slot.word();
                    if seen & MASK == wanted {
                        let claimed = held_state::claimed(seen, now);
                        // Lost to another program (or the agent): the next one is tried.
                        if slot.swap(seen, claimed) {
                            return Some((slot, claimed));
                        }
                    }
                }
            }
        }
        None
    }

    /// The state word as it is now.
    #[inline(always)]
    fn word(&self) -> u64 {
        // SAFETY: an array value, valid while the program runs; a plain 8-byte load, which
        // does not tear.
        unsafe { core::ptr::read_volatile(self.state) }
    }

    /// Moves the word from `seen` to `to`; false when it is no longer `seen` (the slot moved
    /// on meanwhile: someone else owns it now).
    #[inline(always)]
    pub(super) fn swap(&self, seen: u64, to: u64) -> bool {
        // SAFETY: as above; an atomic instruction on an array value.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                self.state, seen, to,
            )
            .1
        }
    }

    /// Stores the word of a slot this program owns (`WRITING` or `TAKING`), released: whoever
    /// reads the word next also sees what this program wrote and read before it. Where stores
    /// reach other CPUs in program order (x86) a plain store does that, and the program goes on
    /// while its stores drain (a slot's record lines are seldom in this CPU's cache); elsewhere
    /// an exchange, a full barrier. The verifier sees the global as a constant and keeps one
    /// branch.
    #[inline(always)]
    pub(super) fn set(&self, to: u64) {
        // SAFETY: a plain static of an integer that lives for the whole program.
        if unsafe { core::ptr::read_volatile(&DNS_STORES_ORDERED) } != 0 {
            // The compiler must not move earlier stores (the record's) after this one: an
            // empty asm block that may touch memory, so no instruction.
            // SAFETY: empty.
            unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
            // SAFETY: as above; an aligned 8-byte store, which does not tear.
            unsafe { core::ptr::write_volatile(self.state, to) };
        } else {
            // SAFETY: as above.
            unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(self.state, to) };
        }
    }

    /// Whether the slot's key is `key` (read without owning it: the caller checks again, or
    /// only annotates).
    #[inline(always)]
    pub(super) fn holds(&self, key: &DnsKey) -> bool {
        // SAFETY: an array value, valid while the program runs.
        let k = unsafe { &(*self.slot).key };
        k.client == key.client
            && k.client_port == key.client_port
            && k.id == key.id
            && k.family == key.family
    }

    /// Whether the slot's query was asked by the socket cgroup `cgroup_id` of the server the
    /// answer `p` comes from (read from the slot's first line).
    #[inline(always)]
    pub(super) fn asked(&self, cgroup_id: u64, p: &Packet) -> bool {
        // SAFETY: an array value, valid while the program runs.
        let s = unsafe { &*self.slot };
        s.cgroup_id == cgroup_id && s.server_port == p.sport && s.server == p.saddr
    }

    /// The record of the query this program took. Its server fields may belong to an earlier
    /// query in the slot: only [`Slot::send_taken`] reads them.
    #[inline(always)]
    pub(super) fn held(&self) -> &DnsHeld {
        // SAFETY: an array value, valid while the program runs.
        unsafe { &(*self.slot).held }
    }

    /// Sends the query this program took (`TAKING` from `seen`) to the agent, with its server
    /// notes only if they were made for it. The copy is fixed, never the slot: only servers
    /// write the notes.
    #[inline(always)]
    pub(super) fn send_taken(&self, seen: u64) {
        // The notes word first, then the server's cgroup written before it.
        // SAFETY: an array value, valid while the program runs.
        let notes = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*self.slot).notes)) };
        // SAFETY: an array value, valid while the program runs; the clock helper has no
        // preconditions.
        let (cgroup_id, now) = unsafe { ((*self.slot).cgroup_id, bpf_ktime_get_boot_ns()) };
        let Some(mut entry) = reserve::<DnsHeld>(cgroup_id, now) else {
            return;
        };
        // SAFETY: the reserved record is a DnsHeld's worth of writable bytes; the slot's
        // record is owned by this program (the notes are plain integers a server may be
        // writing: any value read is one it wrote).
        unsafe {
            let out = entry.as_mut_ptr();
            core::ptr::copy_nonoverlapping(core::ptr::addr_of!((*self.slot).held), out, 1);
            held_notes::apply(notes, seen, &mut *out);
        }
        entry.submit(wakeup());
    }
}
