//! What the kernel's lookup counts share: which of each pair of switched tables is current, and
//! one lookup added to shared counters.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::maps::DNS_GENERATION;

/// Whether programs count into the second of each pair of switched tables.
#[inline(always)]
pub(super) fn odd_generation() -> bool {
    matches!(DNS_GENERATION.get(0), Some(g) if *g & 1 == 1)
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
