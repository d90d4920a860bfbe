//! Maps and globals shared by every program. Names match the constants in triage-agent-common,
//! which is what userspace uses to find them.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use triage_agent_common::{
    CONNECTS_ENTRIES, EVENTS_RING_BYTES, LOSS_SLOTS, Offsets, PendingConnect,
};

/// The one ring buffer every program writes its events into (`EVENTS_MAP`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Per-CPU loss counters (`LOSS_MAP`), indexed by the `LOST_*` constants.
#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// Who called connect() on a socket still in SYN_SENT, keyed by the socket's address
/// (`CONNECTS_MAP`). Every attempt leaves at its next state change (ESTABLISHED or CLOSE), so
/// the table holds only attempts in flight; when it is full, new attempts are counted as lost
/// (an LRU map would evict older attempts silently).
#[map]
pub static CONNECTS: HashMap<u64, PendingConnect> = HashMap::with_max_entries(CONNECTS_ENTRIES, 0);

/// This kernel's layouts (`OFFSETS_GLOBAL`), overwritten by the loader before load.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::ABSENT;

/// The layouts, read through a volatile load so the compiler cannot fold in the placeholder
/// values; the verifier sees the loader's values as constants of a frozen map.
#[inline(always)]
pub fn offsets() -> Offsets {
    // SAFETY: OFFSETS is a plain static of integers that lives for the whole program.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Adds one to a loss counter of this CPU.
#[inline(always)]
pub fn count_loss(slot: u32) {
    if let Some(counter) = LOSS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe { *counter += 1 };
    }
}
