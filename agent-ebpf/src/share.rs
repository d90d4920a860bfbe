//! Each cgroup's share of the shared tables and rings (see triage_agent_common's `share`
//! module for the limits and why): checked before a program takes room, and what a cgroup
//! lost counted against it.
//!
//! The windowed shares are counted with plain increments: two CPUs racing on one key may each
//! miss the other's, which only lets that key use a little more than its share. The connect
//! share is a count of entries in flight, added to and taken from with atomic adds, so it
//! cannot drift.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;
use triage_agent_common::{
    CONNECTS_PER_CGROUP, CgroupLosses, FlowKey, LOST_FLOW_TABLE, Share, ShareKey, cgroup_loss,
    flow_flags, share_class,
};

use crate::{
    generation,
    maps::{CGROUP_LOSSES0, CGROUP_LOSSES1, CONNECT_SHARES, EEXIST, GENERATION, SHARES},
};

/// Takes one of `cgroup`'s places in the connect table; `false` when its share is used up.
/// Every `true` is matched by one [`give_connect`] when the entry leaves (or was never made).
#[inline(always)]
pub fn take_connect(cgroup: u64) -> bool {
    if let Some(n) = CONNECT_SHARES.get_ptr_mut(cgroup) {
        return add_connect(n);
    }
    match CONNECT_SHARES.insert(cgroup, 1, BPF_NOEXIST.into()) {
        Ok(()) => true,
        // Another CPU counted the cgroup's first attempt at the same time.
        Err(e) if e == -EEXIST => match CONNECT_SHARES.get_ptr_mut(cgroup) {
            Some(n) => add_connect(n),
            None => true,
        },
        // An LRU hash makes room rather than fail; a count it cannot keep loosens the share.
        Err(_) => true,
    }
}

#[inline(always)]
fn add_connect(n: *mut i64) -> bool {
    // SAFETY: a map value, valid while the program runs; shared between CPUs, hence atomic.
    unsafe {
        if core::ptr::read_volatile(n) >= CONNECTS_PER_CGROUP {
            return false;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n.cast(), 1);
    }
    true
}

/// Gives back a place [`take_connect`] took. A count the LRU hash forgot is not recreated.
#[inline(always)]
pub fn give_connect(cgroup: u64) {
    if let Some(n) = CONNECT_SHARES.get_ptr_mut(cgroup) {
        // SAFETY: as in [`add_connect`]; adding u64::MAX subtracts one.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n.cast(), u64::MAX) };
    }
}

/// Whose share a flow uses: its socket's cgroup; else the network namespace it came from; else
/// the peers' one share (id 0). Returns (id, tag added to the class).
#[inline(always)]
pub fn owner(key: &FlowKey) -> (u64, u32) {
    if key.cgroup_id != 0 {
        (key.cgroup_id, 0)
    } else if key.flags & flow_flags::INGRESS_NETNS != 0 {
        (u64::from(key.ingress_netns), share_class::NETNS)
    } else {
        (0, 0)
    }
}

/// Counts one new entry of `(id, tag)` ([`owner`]) in the flow table of generation `epoch`
/// (the generation word); `false` (nothing counted) when it has added its share to this
/// generation's table. Counted per generation, not per time, so a drain that comes late cannot
/// let a share grow.
#[inline(always)]
pub fn within_generation((id, tag): (u64, u32), epoch: u32) -> bool {
    let limit = if id == 0 && tag == 0 {
        share_class::PEER_FLOWS_LIMIT
    } else {
        share_class::FLOWS_LIMIT
    };
    count(
        id,
        share_class::FLOWS | tag,
        u64::from(epoch),
        limit,
        |start| start != u64::from(epoch),
    )
}

/// Counts one use of the share of ring `class` ([`share_class::EVENTS`], with an [`owner`]'s
/// tag, or [`share_class::DNS`]) of `id` at boot time `now`; `false` (nothing counted) when the
/// share of the current window is used up.
#[inline(always)]
pub fn within(id: u64, class: u32, now: u64) -> bool {
    let limit = match class {
        share_class::EVENTS if id == 0 => share_class::PEER_EVENTS_LIMIT,
        share_class::DNS => share_class::DNS_LIMIT,
        _ => share_class::EVENTS_LIMIT,
    };
    count(id, class, now, limit, |start| {
        now.wrapping_sub(start) >= share_class::WINDOW_NS
    })
}

/// One use of `id`'s share of `class`: a new window (starting at `start`) when `expired` says the
/// current one is over.
#[inline(always)]
fn count(id: u64, class: u32, start: u64, limit: u32, expired: impl Fn(u64) -> bool) -> bool {
    let key = ShareKey {
        id,
        class,
        _pad0: 0,
    };
    match SHARES.get_ptr_mut(key) {
        // SAFETY: a map value, valid while the program runs; see the module's note on races.
        Some(s) => unsafe {
            if expired((*s).window_start) {
                (*s).window_start = start;
                (*s).used = 1;
                return true;
            }
            if (*s).used >= limit {
                return false;
            }
            (*s).used += 1;
            true
        },
        None => {
            let first = Share {
                window_start: start,
                used: 1,
                _pad0: 0,
            };
            let _ = SHARES.insert(key, first, 0);
            true
        }
    }
}

/// Counts one loss of kind `field` ([`cgroup_loss`]) against `cgroup` (0: no cgroup known,
/// counted node-wide only, by the caller), in the current generation's table.
#[inline(always)]
pub fn lose(cgroup: u64, field: u32) {
    if cgroup == 0 {
        return;
    }
    // A generation that kept flipping is a flow table loss the node-wide counter has.
    let Some(g) = generation::enter(&GENERATION, LOST_FLOW_TABLE) else {
        return;
    };
    let table = if g == 1 {
        &CGROUP_LOSSES1
    } else {
        &CGROUP_LOSSES0
    };
    let entry = match table.get_ptr_mut(cgroup) {
        Some(e) => Some(e),
        None => {
            let _ = table.insert(cgroup, CgroupLosses::default(), BPF_NOEXIST.into());
            table.get_ptr_mut(cgroup)
        }
    };
    if let Some(e) = entry {
        // SAFETY: a map value, valid while the program runs; shared between CPUs, hence atomic.
        unsafe {
            let counter = match field {
                cgroup_loss::CONNECTS => core::ptr::addr_of_mut!((*e).connects),
                cgroup_loss::OCCURRENCES => core::ptr::addr_of_mut!((*e).occurrences),
                _ => core::ptr::addr_of_mut!((*e).dns_packets),
            };
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1);
        }
    }
    generation::leave(&GENERATION, g);
}
