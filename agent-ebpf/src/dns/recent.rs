//! Cgroups with a recently failed lookup (`DNS_RECENT`): their good answers go to the agent for
//! a while, so a search-path walk ends there.

use triage_agent_common::DNS_RECENT_SLOTS;

use crate::maps::DNS_RECENT;

#[inline(always)]
fn recent_slot(cgroup_id: u64) -> u32 {
    (cgroup_id as u32) & (DNS_RECENT_SLOTS - 1)
}

/// Whether a lookup of this cgroup failed within `window` ns before `now`.
#[inline(always)]
pub(super) fn recently_failed(cgroup_id: u64, now: u64, window: u64) -> bool {
    match DNS_RECENT.get(recent_slot(cgroup_id)) {
        Some(r) => r.cgroup_id == cgroup_id && now.saturating_sub(r.boot_ns) < window,
        None => false,
    }
}

/// Notes that a lookup of this cgroup failed now.
#[inline(always)]
pub(super) fn failed(cgroup_id: u64, now: u64) {
    if let Some(r) = DNS_RECENT.get_ptr_mut(recent_slot(cgroup_id)) {
        // SAFETY: an array slot, valid while the program runs; a concurrent writer of the
        // same slot can only shorten a window.
        unsafe {
            (*r).cgroup_id = cgroup_id;
            (*r).boot_ns = now;
        }
    }
}
