//! What the kernel's lookup counts share: which of each pair of switched tables is current, and
//! one lookup added to shared counters.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::{generation, maps::DNS_GENERATION};

/// Enters the current generation of the DNS counting tables: `Some(odd)` (see
/// `crate::generation`); `None` counted as `lost`.
#[inline(always)]
pub(super) fn enter_generation(lost: u32) -> Option<bool> {
    generation::enter(&DNS_GENERATION, lost).map(|g| g == 1)
}

/// Leaves the generation [`enter_generation`] entered.
#[inline(always)]
pub(super) fn leave_generation(odd: bool) {
    generation::leave(&DNS_GENERATION, u32::from(odd));
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
