//! A UDP lookup at a DNS server socket of this host: the query's arrival and the answer's
//! departure, noted on the held query (the agent tells from them where a timed-out query went).

use aya_ebpf::{helpers::bpf_skb_cgroup_id, programs::SkBuffContext};
use triage_agent_common::{held_notes, held_state::HELD};

use super::{
    held::{Slot, bit},
    packet::{Client, Packet},
};

/// A query arriving at a DNS server socket of this host: noted on the held query when its
/// client is a socket of this host.
#[inline(always)]
pub(super) fn server_received(ctx: &SkBuffContext, p: &Packet) {
    let key = p.key(Client::Source);
    // A note, made without owning the slot: only servers write these fields (a query leaves
    // them; whoever sends a taken query up checks them), and the notes word written last
    // says which query they are about. The cgroup goes to the record's line, which stays
    // with this CPU; the word to the line the answer reads anyway.
    if let Some((slot, seen)) = Slot::find(&key, bit(HELD)) {
        // SAFETY: an array value, valid while the program runs.
        unsafe {
            (*slot.slot).held.server_cgroup = bpf_skb_cgroup_id(ctx.skb.skb);
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*slot.slot).notes),
                held_notes::tag(seen) | held_notes::REACHED,
            );
        }
    }
}

/// An answer leaving a DNS server socket of this host: noted on the held query whose arrival
/// at the server was noted.
#[inline(always)]
pub(super) fn server_answered(p: &Packet) {
    let key = p.key(Client::Destination);
    if let Some((slot, seen)) = Slot::find(&key, bit(HELD)) {
        let reached = held_notes::tag(seen) | held_notes::REACHED;
        // SAFETY: as above.
        unsafe {
            let notes = core::ptr::addr_of_mut!((*slot.slot).notes);
            if core::ptr::read_volatile(notes) == reached {
                core::ptr::write_volatile(notes, reached | held_notes::ANSWERED);
            }
        }
    }
}
