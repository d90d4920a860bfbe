//! A UDP lookup at the asking socket: its query held in the kernel on the way out, its answer
//! matched to it on the way in and counted there, or both sent to the agent.

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use triage_agent_common::{DnsRepeatKey, DnsTiming, dns_flags, held_state};

use super::{
    answered::count_answered,
    held::{Slot, bit},
    packet::{Client, Packet, RCODE, TC},
    recent::{failed, recently_failed},
    repeats::{count_repeat, question_hash},
    ring::{fill, send},
};
use crate::maps::DNS_REPEATABLE;
use held_state::{AGENT, FREE, HELD, MASK, TAKING};

// Items the documentation links to.
#[cfg(doc)]
use crate::maps::DNS_HELD;

/// Thresholds, overwritten by the loader before load.
#[unsafe(no_mangle)]
static DNS_TIMING: DnsTiming = DnsTiming::UNSET;

/// A query leaving the asking socket: it waits in a slot of [`DNS_HELD`] with its record.
#[inline(always)]
pub(super) fn client_query(ctx: &SkBuffContext, p: &Packet) {
    let key = p.key(Client::Source);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // Any slot with this key, whatever its state (being taken over by the agent, too): a
    // resend with the same id from the same address. The agent sees both sends (it keeps the
    // first one's time and refreshes the deadline), and the answer too.
    if let Some((slot, seen)) = Slot::find(&key, !bit(FREE)) {
        match seen & MASK {
            // The first send still held goes up first; the slot is the agent's from now on.
            HELD if slot.swap(seen, held_state::with(seen, TAKING)) => {
                if slot.holds(&key) {
                    slot.send_taken(seen);
                    slot.set(held_state::with(seen, AGENT));
                } else {
                    slot.set(seen);
                }
            }
            // The agent's slot stays its own for as long after this send as after the first
            // (the tracker refreshes the lookup's deadline too).
            AGENT => {
                let _ = slot.swap(
                    seen,
                    held_state::with(held_state::claimed(seen, now), AGENT),
                );
            }
            _ => {}
        }
        send(ctx, p, true);
        return;
    }
    // Both slots hold other queries (or are being written or taken): this one is matched in
    // userspace, as without the table.
    let Some((slot, claimed)) = Slot::claim(&key, now) else {
        send(ctx, p, true);
        return;
    };
    // SAFETY: the slot is this program's until it publishes it; an array value, a DnsSlot's
    // worth of writable bytes, valid while the program runs. The server fields are left to
    // the servers (`notes` tells whose they are).
    unsafe {
        let cgroup_id = bpf_skb_cgroup_id(ctx.skb.skb);
        (*slot.slot).key = key;
        (*slot.slot).cgroup_id = cgroup_id;
        (*slot.slot).server = p.daddr;
        (*slot.slot).server_port = p.dport;
        fill(
            ctx,
            p,
            core::ptr::addr_of_mut!((*slot.slot).held.query),
            dns_flags::EGRESS | dns_flags::HELD,
            cgroup_id,
            now,
        );
    }
    slot.set(held_state::with(claimed, HELD));
}

/// An answer arriving at the asking socket.
#[inline(always)]
pub(super) fn client_answer(ctx: &SkBuffContext, p: &Packet) {
    let key = p.key(Client::Destination);
    // SAFETY: helper without preconditions beyond a valid skb.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // Its query, from the same socket's cgroup to the server it asked, taken out of the table;
    // anything else (asked before the agent started, resent, taken over by the agent, another
    // socket's, not held): the agent matches it.
    let Some((slot, seen)) = Slot::find(&key, bit(HELD)) else {
        send(ctx, p, false);
        return;
    };
    // (`find` has compared the key.)
    if !slot.asked(cgroup_id, p) || !slot.swap(seen, held_state::with(seen, TAKING)) {
        send(ctx, p, false);
        return;
    }
    // Checked again now that the slot is ours: the first reads could have been made before
    // the word's on a CPU that reorders loads.
    if !slot.holds(&key) || !slot.asked(cgroup_id, p) {
        slot.set(seen);
        send(ctx, p, false);
        return;
    }
    let free = held_state::with(seen, FREE);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // The claim time is the query's send time (the record's `boot_ns`), on the line already read.
    let latency = now.saturating_sub(held_state::time(seen));
    // SAFETY: a plain static of integers that lives for the whole program.
    let timing = unsafe { core::ptr::read_volatile(&DNS_TIMING) };
    let rcode = p.dns_flags & RCODE;
    let good = rcode == 0 && p.dns_flags & TC == 0 && latency < timing.slow_ns;
    if good && !recently_failed(cgroup_id, now, timing.recent_ns) {
        slot.set(free);
        count_answered(cgroup_id, latency, p);
        return;
    }
    // A failure the agent has reported before, asked and answered the same way: counted here.
    if rcode != 0 && p.dns_flags & TC == 0 && latency < timing.slow_ns {
        let repeat = DnsRepeatKey {
            cgroup_id,
            question: question_hash(slot.held()),
            rcode: u32::from(rcode),
            _pad0: 0,
        };
        // SAFETY: a map value, valid while the program runs (only its presence is read).
        if unsafe { DNS_REPEATABLE.get(repeat) }.is_some() {
            slot.set(free);
            failed(cgroup_id, now);
            count_repeat(&repeat, latency, now);
            return;
        }
    }
    // The agent decides: the query first, then its answer.
    slot.send_taken(seen);
    slot.set(free);
    if rcode != 0 {
        failed(cgroup_id, now);
    }
    send(ctx, p, false);
}
