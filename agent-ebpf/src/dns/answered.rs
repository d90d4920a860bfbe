//! Lookups answered well, counted per cgroup in the kernel: in the cgroup's slot of the current
//! answered array, else in the current answered table.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::bindings::BPF_NOEXIST;
use triage_agent_common::{DnsAnswered, LOST_DNS_ANSWERED, dns_answered_slot};

use super::{
    counters::{add_lookup, enter_generation, leave_generation},
    packet::Packet,
};
use crate::maps::{
    DNS_ANSWERED_SLOTS0, DNS_ANSWERED_SLOTS1, DNS_ANSWERED0, DNS_ANSWERED1, EEXIST, count_loss,
};

/// One lookup answered well, into the cgroup's counters: its slot of the current answered
/// array when free or its own, else its entry in the current hash table.
#[inline(always)]
pub(super) fn count_answered(cgroup_id: u64, latency: u64, p: &Packet) {
    let Some(odd) = enter_generation(LOST_DNS_ANSWERED) else {
        return;
    };
    count_answered_in(odd, cgroup_id, latency, p);
    leave_generation(odd);
}

#[inline(always)]
fn count_answered_in(odd: bool, cgroup_id: u64, latency: u64, p: &Packet) {
    let slots = if odd {
        &DNS_ANSWERED_SLOTS1
    } else {
        &DNS_ANSWERED_SLOTS0
    };
    if let Some(s) = slots.get_ptr_mut(dns_answered_slot(cgroup_id)) {
        // SAFETY: an array value, valid while the program runs; its owner word only changes
        // from 0 with compare-and-swap here (the agent empties it once no program counts into
        // this generation).
        unsafe {
            let owner = core::ptr::addr_of_mut!((*s).cgroup_id);
            let mut seen = core::ptr::read_volatile(owner);
            if seen == 0 {
                let (was, took) =
                    atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                        owner, 0, cgroup_id,
                    );
                if took {
                    // Read by the agent only after the generation has moved on.
                    (*s).answered.family = p.family;
                    (*s).answered.client = p.daddr;
                }
                seen = if took { cgroup_id } else { was };
            }
            if seen == cgroup_id {
                add_answered(core::ptr::addr_of_mut!((*s).answered), latency);
                return;
            }
        }
    }
    let table = if odd { &DNS_ANSWERED1 } else { &DNS_ANSWERED0 };
    if let Some(a) = table.get_ptr_mut(cgroup_id) {
        add_answered(a, latency);
        return;
    }
    let first = DnsAnswered {
        lookups: 1,
        latency_sum_ns: latency,
        latency_max_ns: latency,
        family: p.family,
        _pad0: [0; 3],
        client: p.daddr,
    };
    match table.insert(cgroup_id, first, BPF_NOEXIST.into()) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            if let Some(a) = table.get_ptr_mut(cgroup_id) {
                add_answered(a, latency);
            }
        }
        Err(_) => count_loss(LOST_DNS_ANSWERED),
    }
}

#[inline(always)]
fn add_answered(a: *mut DnsAnswered, latency: u64) {
    // SAFETY: `a` points into a map value valid while this program runs.
    unsafe {
        add_lookup(
            core::ptr::addr_of_mut!((*a).lookups),
            core::ptr::addr_of_mut!((*a).latency_sum_ns),
            core::ptr::addr_of_mut!((*a).latency_max_ns),
            latency,
        );
    }
}
