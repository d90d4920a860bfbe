//! What the kernel's lookup counts share: which of each pair of switched tables is current, and
//! one lookup added to shared counters.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::maps::{DNS_GENERATION, count_loss};

/// Whether programs count into the second of each pair of switched tables.
#[inline(always)]
fn odd_generation() -> bool {
    matches!(DNS_GENERATION.get(0), Some(g) if *g & 1 == 1)
}

/// Enters the current generation, counted in flight there (`DNS_GENERATION[1 + odd]`) until
/// [`leave_generation`]; the agent drains a generation only when none is (the protocol of the
/// flow tables, see flows.rs). `None` (counted as `lost`) only if the generation flipped
/// between each of three reads.
#[inline(always)]
pub(super) fn enter_generation(lost: u32) -> Option<bool> {
    for _ in 0..3 {
        let odd = odd_generation();
        let in_flight = DNS_GENERATION.get_ptr_mut(1 + u32::from(odd))?;
        // SAFETY: a map value valid while the program runs; shared between CPUs, hence atomic.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(in_flight, 1) };
        if odd_generation() == odd {
            return Some(odd);
        }
        // SAFETY: as above; adding u32::MAX subtracts one.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(in_flight, u32::MAX) };
    }
    count_loss(lost);
    None
}

/// Leaves the generation [`enter_generation`] entered.
#[inline(always)]
pub(super) fn leave_generation(odd: bool) {
    if let Some(in_flight) = DNS_GENERATION.get_ptr_mut(1 + u32::from(odd)) {
        // SAFETY: as in [`enter_generation`].
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(in_flight, u32::MAX) };
    }
}

/// One lookup into shared counters: atomic adds (they are shared between CPUs); the maximum
/// is a plain compare and store, best effort.
///
/// # Safety
/// All three point into a map value valid while the program runs.
#[inline(always)]
pub(super) unsafe fn add_lookup(
    lookups: *mut u64,
    latency_sum: *mut u64,
    latency_max: *mut u64,
    latency: u64,
) {
    // SAFETY: the caller's promise.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(lookups, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(latency_sum, latency);
        if latency > *latency_max {
            *latency_max = latency;
        }
    }
}
