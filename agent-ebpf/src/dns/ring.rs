//! Packets copied for the agent into `DNS_RING`: the record of a packet and the batched wakeup
//! of its reader.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    maps::ring_buf::RingBufEntry,
    programs::SkBuffContext,
};
use triage_agent_common::{
    DNS_PAYLOAD_CAP, DNS_RING_BYTES, DnsEvent, EventHeader, LOST_DNS_RESERVE, cgroup_loss,
    dns_flags, kind, share_class,
};

use super::packet::Packet;
use crate::{
    maps::{DNS_RING, count_loss},
    share,
};

/// Pending bytes in the ring from which a submit wakes the reader (a quarter of the ring).
const WAKEUP_BYTES: u64 = DNS_RING_BYTES as u64 / 4;

/// Pending bytes from which the ring is shared out (half of it).
const SHARED_FROM: u64 = DNS_RING_BYTES as u64 / 2;

/// The smallest power of two minus one at or above the payload cap: see [`fill`].
const PAYLOAD_LEN_MASK: u64 = (DNS_PAYLOAD_CAP as u64).next_power_of_two() - 1;

/// Fills a record for the packet.
///
/// # Safety
/// `event` must point to a DnsEvent's worth of writable bytes.
#[inline(always)]
pub(super) unsafe fn fill(
    ctx: &SkBuffContext,
    p: &Packet,
    event: *mut DnsEvent,
    flags: u8,
    cgroup_id: u64,
    boot_ns: u64,
) {
    // The copy's size must be seen by the verifier as 1..=CAP at the helper call, on every
    // kernel. Older verifiers (Debian's 5.10-6.18 builds) lose a bound the compiler proves
    // on a copy of the register (`r1 = r7 - 1; if r6 > r1`: "R4 invalid zero-sized read"),
    // so the lower bound comes from arithmetic every verifier tracks (a mask gives
    // 0..=MASK, plus one gives 1..=MASK+1) and the upper bound from one compare of the very
    // register passed. Each step is read back opaquely, so the compiler can neither fold the
    // mask away (parse returns none for an empty payload) nor compare a copy. For
    // 1 <= len <= CAP the mask keeps len - 1 as it is, so n is len capped at CAP.
    let n: u64 = u64::from(p.payload_len).min(DNS_PAYLOAD_CAP as u64);
    // SAFETY: reads a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    let n = (n.wrapping_sub(1) & PAYLOAD_LEN_MASK) + 1;
    // SAFETY: reads a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    // SAFETY: the caller's promise; fields are written in place (the payload is too big for
    // the BPF stack).
    unsafe {
        let payload = (*event).payload.as_mut_ptr();
        let copied = p.payload_len > 0
            && n <= DNS_PAYLOAD_CAP as u64
            && bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                p.payload_off,
                payload.cast(),
                n as u32,
            ) == 0;
        (*event).header = EventHeader {
            kind: kind::DNS,
            len: size_of::<DnsEvent>() as u32,
            boot_ns,
        };
        (*event).cgroup_id = cgroup_id;
        (*event).family = p.family;
        (*event).protocol = p.protocol;
        (*event).flags = flags;
        (*event).sport = p.sport;
        (*event).dport = p.dport;
        (*event).wire_len = p.payload_len;
        (*event).captured = if copied { n as u16 } else { 0 };
        (*event)._pad0 = 0;
        (*event).saddr = p.saddr;
        (*event).daddr = p.daddr;
    }
}

/// Wake the reader only once a batch is waiting: it also drains on a short timer, so a wakeup
/// per DNS packet (the costliest part of delivery) is not needed.
#[inline(always)]
pub(super) fn wakeup() -> u64 {
    let flags = if DNS_RING.query(BPF_RB_AVAIL_DATA.into()) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags.into()
}

/// Sends the packet to the agent.
#[inline(always)]
pub(super) fn send(ctx: &SkBuffContext, p: &Packet, egress: bool) {
    // SAFETY: helpers without preconditions beyond a valid skb.
    let (cgroup_id, now) = unsafe { (bpf_skb_cgroup_id(ctx.skb.skb), bpf_ktime_get_boot_ns()) };
    let Some(mut entry) = reserve(cgroup_id, now) else {
        return;
    };
    let flags = if egress { dns_flags::EGRESS } else { 0 };
    // SAFETY: the reserved record is a DnsEvent's worth of writable bytes.
    unsafe { fill(ctx, p, entry.as_mut_ptr(), flags, cgroup_id, now) };
    entry.submit(wakeup());
}

/// Room in the ring for one record of `cgroup_id`'s, within its share of the ring once the
/// ring is half full; `None` (counted, against the cgroup too) when the share is used up or
/// the ring is full.
#[inline(always)]
pub(super) fn reserve<T: 'static>(cgroup_id: u64, now: u64) -> Option<RingBufEntry<T>> {
    // Shares apply once the ring is half full (the reader is behind): until then every
    // packet goes up, and a busy pod's lookups are counted exactly.
    let crowded = DNS_RING.query(BPF_RB_AVAIL_DATA.into()) >= SHARED_FROM;
    let entry = if !crowded || share::within(cgroup_id, share_class::DNS, now) {
        DNS_RING.reserve::<T>(0)
    } else {
        None
    };
    if entry.is_none() {
        count_loss(LOST_DNS_RESERVE);
        share::lose(cgroup_id, cgroup_loss::DNS_PACKETS);
    }
    entry
}
