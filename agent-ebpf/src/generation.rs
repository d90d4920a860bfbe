//! Double-buffered tables switched by a generation word the agent writes, with an exact
//! handover: a program counts itself in flight in the generation it writes
//! (`map[1 + generation]`) until it leaves; the agent flips `map[0]` before it reads that count
//! and drains a generation only when the count is 0. A program that counted itself in after the
//! agent's read sees the flip when it reads the generation again, and moves to the new one, so
//! no write lands in a table being read, however long a program is preempted.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::maps::Array;

use crate::maps::count_loss;

/// The generation word as the agent wrote it: the flow tables' counts every switch, so it
/// tells one generation from the next (its lowest bit is [`current`]).
#[inline(always)]
pub fn epoch(map: &Array<u32>) -> u32 {
    match map.get(0) {
        Some(g) => *g,
        None => 0,
    }
}

/// The current generation (0 or 1).
#[inline(always)]
pub fn current(map: &Array<u32>) -> u32 {
    match map.get(0) {
        Some(g) => *g & 1,
        None => 0,
    }
}

/// Enters the current generation of `map` until [`leave`]. `None` (one occurrence counted as
/// `lost`) only if the generation flipped between each of three reads, which a program
/// preempted across three drains could see.
#[inline(always)]
pub fn enter(map: &Array<u32>, lost: u32) -> Option<u32> {
    for _ in 0..3 {
        let g = current(map);
        let in_flight = map.get_ptr_mut(1 + g)?;
        // SAFETY: a map value valid while the program runs; shared between CPUs, hence atomic.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(in_flight, 1) };
        if current(map) == g {
            return Some(g);
        }
        // SAFETY: as above; adding u32::MAX subtracts one.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(in_flight, u32::MAX) };
    }
    count_loss(lost);
    None
}

/// Leaves generation `g` of `map` (see [`enter`]).
#[inline(always)]
pub fn leave(map: &Array<u32>, g: u32) {
    if let Some(in_flight) = map.get_ptr_mut(1 + g) {
        // SAFETY: as in [`enter`].
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(in_flight, u32::MAX) };
    }
}
