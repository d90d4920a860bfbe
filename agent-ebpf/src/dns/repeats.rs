//! Failed lookups the agent has reported, counted in the kernel when they repeat the same way:
//! the query's identity and the switched tables of repeats.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::HashMap};
use triage_agent_common::{
    DNS_HASH_SEED, DNS_PAYLOAD_CAP, DnsHeld, DnsRepeatKey, DnsRepeats, LOST_DNS_REPEATS,
    dns_hash_step,
};

use super::counters::{add_lookup, enter_generation, leave_generation};
use crate::maps::{DNS_REPEATS0, DNS_REPEATS1, EEXIST, count_loss};

/// [`triage_agent_common::dns_question_hash`] of a held query: its captured payload without the
/// id, then its server.
#[inline(always)]
pub(super) fn question_hash(held: &DnsHeld) -> u64 {
    let q = &held.query;
    let captured = usize::from(q.captured).min(DNS_PAYLOAD_CAP);
    let base = q.payload.as_ptr();
    let mut h = DNS_HASH_SEED;
    for i in 0..DNS_PAYLOAD_CAP / 8 {
        let at = i * 8;
        if at >= captured {
            break;
        }
        // SAFETY: at + 8 <= DNS_PAYLOAD_CAP (a multiple of 8): inside the payload array.
        let mut w = u64::from_le(unsafe { core::ptr::read_unaligned(base.add(at).cast::<u64>()) });
        let valid = captured - at;
        if valid < 8 {
            // Bytes past the capture are left over from earlier queries: not part of this one.
            w &= (1u64 << (valid * 8)) - 1;
        }
        if i == 0 {
            w &= !0xffff;
        }
        h = dns_hash_step(h, w);
    }
    // SAFETY: two halves of a 16-byte array.
    let (lo, hi) = unsafe {
        (
            core::ptr::read_unaligned(q.daddr.as_ptr().cast::<u64>()),
            core::ptr::read_unaligned(q.daddr.as_ptr().add(8).cast::<u64>()),
        )
    };
    h = dns_hash_step(h, u64::from_le(lo));
    h = dns_hash_step(h, u64::from_le(hi));
    dns_hash_step(
        h,
        u64::from(q.dport) | u64::from(q.family) << 16 | (captured as u64) << 32,
    )
}

#[inline(always)]
fn repeats_table(odd: bool) -> &'static HashMap<DnsRepeatKey, DnsRepeats> {
    if odd { &DNS_REPEATS1 } else { &DNS_REPEATS0 }
}

/// One more repeat of a failure the agent has reported.
#[inline(always)]
pub(super) fn count_repeat(key: &DnsRepeatKey, latency: u64, now: u64) {
    let Some(odd) = enter_generation(LOST_DNS_REPEATS) else {
        return;
    };
    count_repeat_in(odd, key, latency, now);
    leave_generation(odd);
}

#[inline(always)]
fn count_repeat_in(odd: bool, key: &DnsRepeatKey, latency: u64, now: u64) {
    let table = repeats_table(odd);
    if let Some(r) = table.get_ptr_mut(key) {
        add_repeat(r, latency, now);
        return;
    }
    let first = DnsRepeats {
        count: 1,
        latency_sum_ns: latency,
        latency_max_ns: latency,
        first_ns: now,
        last_ns: now,
    };
    match table.insert(key, first, BPF_NOEXIST.into()) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            if let Some(r) = table.get_ptr_mut(key) {
                add_repeat(r, latency, now);
            }
        }
        Err(_) => count_loss(LOST_DNS_REPEATS),
    }
}

#[inline(always)]
fn add_repeat(r: *mut DnsRepeats, latency: u64, now: u64) {
    // SAFETY: `r` points into a map value valid while this program runs (the latest time,
    // like the maximum, is best effort).
    unsafe {
        add_lookup(
            core::ptr::addr_of_mut!((*r).count),
            core::ptr::addr_of_mut!((*r).latency_sum_ns),
            core::ptr::addr_of_mut!((*r).latency_max_ns),
            latency,
        );
        if now > (*r).last_ns {
            (*r).last_ns = now;
        }
    }
}
