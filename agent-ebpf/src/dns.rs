//! DNS packets at every socket of the node: cgroup_skb programs on the cgroup2 root see each
//! packet a socket sends (egress) or receives (ingress), with the socket's cgroup, in every
//! network namespace (pods and hostNetwork pods alike), after the pod's own netfilter on the
//! way out and before the application reads it on the way in.
//!
//! Names are never parsed here: the first [`DNS_PAYLOAD_CAP`] bytes of a payload are copied
//! for userspace, which parses them with a DNS library. What the kernel reads of DNS itself is
//! the fixed start of the header (id, the QR bit, TC, rcode), so that the common case never
//! leaves it: UDP lookups are matched here (see [`DNS_HELD`]).
//!
//! - A query leaving a socket waits in one of its two slots of [`DNS_HELD`], direct-mapped by
//!   (client address, port, id), its record written in place. The slot's state word is claimed and
//!   handed on with compare-and-swap: no lock, no allocation and no hashing of the key
//!   beyond the slot's index.
//! - Its answer, NOERROR, not truncated, faster than the slow threshold, for a cgroup without a
//!   recent failure: counted in the cgroup's slot of the current
//!   [`DNS_ANSWERED_SLOTS0`]/[`DNS_ANSWERED_SLOTS1`] array, or in the current
//!   [`DNS_ANSWERED0`]/[`DNS_ANSWERED1`] table when another cgroup holds that slot (lookups,
//!   latency sum and maximum); nothing goes to userspace.
//! - Any other answer: the waiting query and the answer both go to [`DNS_RING`], and the agent
//!   decides the outcome exactly as for packets it sees one by one. After a failed answer the
//!   cgroup's good answers go up too for [`DnsTiming::recent_ns`], so a search-path walk ends
//!   in the agent.
//! - Unanswered: the agent takes the query out of its slot past a handover age (at most the
//!   slow threshold), with the same compare-and-swap through its mapping of the array, and
//!   waits for its answer or the timeout itself.
//! - At a DNS server socket of this host, a query arriving and its answer leaving are noted on
//!   the held query (the agent says from them where a timed-out query went).
//! - TCP DNS, resends, unmatched answers and a query whose two slots hold others: every packet
//!   goes to [`DNS_RING`], as without any of the above. A slot the agent took a query from
//!   keeps its key for a while, so the lookup's resends and answer go up too.
//!
//! Every packet is allowed through (return 1): the programs observe, they never filter.
//!
//! Kernel interfaces: cgroup_skb (data starts at the IP header; direct reads of the linear
//! part), bpf_skb_load_bytes, bpf_skb_cgroup_id (the socket's cgroup v2 id),
//! bpf_ringbuf_reserve/output, hash and array maps, BPF_CMPXCHG and BPF_XCHG on array values
//! (kernel 5.12 and later).

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xchg};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::cgroup_skb,
    maps::HashMap,
    programs::SkBuffContext,
};
use triage_agent_common::{
    AF_INET, AF_INET6, DNS_HASH_SEED, DNS_PAYLOAD_CAP, DNS_RECENT_SLOTS, DNS_RING_BYTES,
    DnsAnswered, DnsEvent, DnsHeld, DnsKey, DnsPorts, DnsRepeatKey, DnsRepeats, DnsSlot, DnsTiming,
    EventHeader, IPPROTO_TCP, IPPROTO_UDP, LOST_DNS_ANSWERED, LOST_DNS_REPEATS, LOST_DNS_RESERVE,
    dns_answered_slot, dns_flags, dns_hash_step, dns_slot_index, held_notes, held_state, kind,
};

use crate::maps::{
    DNS_ANSWERED_SLOTS0, DNS_ANSWERED_SLOTS1, DNS_ANSWERED0, DNS_ANSWERED1, DNS_GENERATION,
    DNS_HELD, DNS_RECENT, DNS_REPEATABLE, DNS_REPEATS0, DNS_REPEATS1, DNS_RING, EEXIST, count_loss,
};
use held_state::{AGENT, FREE, HELD, MASK, TAKING};

/// Ports to capture, overwritten by the loader before load (frozen: the verifier sees
/// constants).
#[unsafe(no_mangle)]
static DNS_PORTS: DnsPorts = DnsPorts::NONE;

/// Thresholds, overwritten by the loader before load.
#[unsafe(no_mangle)]
static DNS_TIMING: DnsTiming = DnsTiming::UNSET;

/// 1 when stores reach other CPUs in program order (see
/// [`triage_agent_common::DNS_STORES_ORDERED_GLOBAL`]), overwritten by the loader before load.
#[unsafe(no_mangle)]
static DNS_STORES_ORDERED: u32 = 0;

/// Header flag bits (the second 16-bit word of a DNS header, host order).
const QR: u16 = 0x8000;
const TC: u16 = 0x0200;
const RCODE: u16 = 0x000f;

/// Pending bytes in the ring from which a submit wakes the reader (a quarter of the ring).
const WAKEUP_BYTES: u64 = DNS_RING_BYTES as u64 / 4;

/// The smallest power of two minus one at or above the payload cap: see [`fill`].
const PAYLOAD_LEN_MASK: u64 = (DNS_PAYLOAD_CAP as u64).next_power_of_two() - 1;

/// Smallest UDP payload worth copying: a DNS header.
const DNS_HEADER: u32 = 12;

#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    observe(&ctx, true);
    1
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    observe(&ctx, false);
    1
}

/// The same capture for kernels whose verifier takes no BPF atomics (before Linux 5.12: the
/// loader falls back to these when [`dns_egress`] is rejected): every DNS packet goes to
/// [`DNS_RING`] and the agent matches answers to queries itself, as it does for TCP DNS. The
/// evidence is the same; the cost per lookup is higher (two ring records instead of none).
/// No atomic instruction may appear here: 5.10 rejects the whole program for one
/// ("BPF_STX uses reserved fields"), reachable or not.
#[cgroup_skb(egress)]
pub fn dns_egress_all(ctx: SkBuffContext) -> i32 {
    observe_all(&ctx, true);
    1
}

/// See [`dns_egress_all`].
#[cgroup_skb(ingress)]
pub fn dns_ingress_all(ctx: SkBuffContext) -> i32 {
    observe_all(&ctx, false);
    1
}

#[inline(always)]
fn observe_all(ctx: &SkBuffContext, egress: bool) {
    if connected_elsewhere(ctx) || plainly_not_dns(ctx) {
        return;
    }
    if let Some(p) = parse(ctx) {
        send(ctx, &p, egress);
    }
}

/// Whether `port` is one of the configured DNS ports. The loader packs them from the first
/// entry, so the first unused entry (0) ends the list; the values are constants to the
/// verifier (a frozen global), which drops the compares past the last port configured: with
/// the default (53 alone) this is one compare.
#[inline(always)]
fn is_dns_port(port: u16) -> bool {
    // SAFETY: a plain static of integers that lives for the whole program.
    let ports = unsafe { core::ptr::read_volatile(&DNS_PORTS) };
    for p in ports.ports {
        if p == 0 {
            return false;
        }
        if p == port {
            return true;
        }
    }
    false
}

/// Addresses, ports and where the payload starts, from the headers.
struct Packet {
    family: u16,
    protocol: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    payload_off: u32,
    payload_len: u32,
    /// UDP: the DNS id (as on the wire) and flags word (host order) from the payload's start.
    id: u16,
    dns_flags: u16,
}

#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: buf is N writable bytes; the helper reads at most N from the packet.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset,
            buf.as_mut_ptr().cast(),
            N as u32,
        )
    };
    (ret == 0).then_some(buf)
}

/// The first `N` bytes of the packet (from the IP header): read in place when the linear part
/// holds them (the usual case: no helper call), else copied with `bpf_skb_load_bytes`.
#[inline(always)]
fn head<const N: usize>(ctx: &SkBuffContext) -> Option<[u8; N]> {
    // SAFETY: reads the context's data pointers, which the verifier gives cgroup_skb programs.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if data + N <= end {
        // SAFETY: [data, data + N) is inside the packet's linear part, checked just above.
        Some(unsafe { core::ptr::read_unaligned(data as *const [u8; N]) })
    } else {
        load(ctx, 0)
    }
}

/// Which end of a packet is the DNS client.
#[derive(Clone, Copy)]
enum Client {
    /// A query on its way to a server.
    Source,
    /// An answer on its way back.
    Destination,
}

impl Packet {
    /// The key its lookup is held under in [`DNS_HELD`]: the client's address and port and the
    /// id, which the client and a server on this host both see.
    #[inline(always)]
    fn key(&self, client: Client) -> DnsKey {
        let (addr, port) = match client {
            Client::Source => (self.saddr, self.sport),
            Client::Destination => (self.daddr, self.dport),
        };
        DnsKey {
            client: addr,
            client_port: port,
            id: self.id,
            family: self.family,
            _pad0: 0,
        }
    }
}

/// Addresses, ports and payload of a packet to or from a DNS port; `None` for any other
/// packet, decided from one read of the headers in the common case (IPv4 without options,
/// IPv6 without extension headers), since most packets are not DNS.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    let mut p = Packet {
        family: 0,
        protocol: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        payload_off: 0,
        payload_len: 0,
        id: 0,
        dns_flags: 0,
    };
    // IPv4 header, the first 8 transport bytes (both ports; the UDP length) and the first 4
    // of a UDP payload (DNS id and flags). A packet shorter than this carries no DNS header.
    let v4: [u8; 32] = head(ctx)?;
    // (transport header offset, its first 8 bytes, the 4 bytes after them)
    let (l4, first8, after8) = match v4[0] >> 4 {
        4 => {
            // Later fragments carry no transport header.
            if u16::from_be_bytes([v4[6], v4[7]]) & 0x1fff != 0 {
                return None;
            }
            p.family = AF_INET;
            p.protocol = v4[9];
            p.saddr[..4].copy_from_slice(&v4[12..16]);
            p.daddr[..4].copy_from_slice(&v4[16..20]);
            let l4 = u32::from(v4[0] & 0x0f) * 4;
            if l4 < 20 {
                return None;
            }
            let mut first12 = [0u8; 12];
            if l4 == 20 {
                first12.copy_from_slice(&v4[20..32]);
            } else {
                first12 = load(ctx, l4)?;
            }
            let (mut first8, mut after8) = ([0u8; 8], [0u8; 4]);
            first8.copy_from_slice(&first12[..8]);
            after8.copy_from_slice(&first12[8..]);
            (l4, first8, after8)
        }
        6 => {
            let ip: [u8; 52] = head(ctx)?;
            // Extension headers are not followed: DNS is sent without them.
            p.family = AF_INET6;
            p.protocol = ip[6];
            p.saddr.copy_from_slice(&ip[8..24]);
            p.daddr.copy_from_slice(&ip[24..40]);
            let (mut first8, mut after8) = ([0u8; 8], [0u8; 4]);
            first8.copy_from_slice(&ip[40..48]);
            after8.copy_from_slice(&ip[48..52]);
            (40, first8, after8)
        }
        _ => return None,
    };
    if u16::from(p.protocol) != IPPROTO_TCP && p.protocol != IPPROTO_UDP {
        return None;
    }
    p.sport = u16::from_be_bytes([first8[0], first8[1]]);
    p.dport = u16::from_be_bytes([first8[2], first8[3]]);
    if !is_dns_port(p.dport) && !is_dns_port(p.sport) {
        return None;
    }
    if u16::from(p.protocol) == IPPROTO_TCP {
        let tcp: [u8; 14] = load(ctx, l4)?;
        p.payload_off = l4 + u32::from(tcp[12] >> 4) * 4;
        p.payload_len = ctx.len().checked_sub(p.payload_off)?;
        if p.payload_len == 0 {
            return None;
        }
    } else {
        p.payload_off = l4 + 8;
        p.payload_len = u32::from(u16::from_be_bytes([first8[4], first8[5]])).checked_sub(8)?;
        if p.payload_len < DNS_HEADER {
            return None;
        }
        p.id = u16::from_ne_bytes([after8[0], after8[1]]);
        p.dns_flags = u16::from_be_bytes([after8[2], after8[3]]);
    }
    Some(p)
}

/// Whether the packet's socket is connected to a peer and neither end uses a DNS port: then the
/// packet is not DNS, known from the socket alone (no packet read). Bulk traffic of connected
/// sockets (TCP streams, connected UDP) leaves here. Unconnected sockets (remote port 0: a DNS
/// server, a resolver using sendto) go on to the packet's own ports.
#[inline(always)]
fn connected_elsewhere(ctx: &SkBuffContext) -> bool {
    // __sk_buff.remote_port holds the port in network order, in the upper 16 bits on
    // little-endian kernels (in the lower ones on others): take the half that is set.
    let r = ctx.skb.remote_port();
    let raw = if r & 0xffff == 0 {
        (r >> 16) as u16
    } else {
        r as u16
    };
    let remote = u16::from_be(raw);
    remote != 0 && !is_dns_port(remote) && !is_dns_port(ctx.skb.local_port() as u16)
}

/// Whether the packet is certainly not DNS, from three plain loads of its linear part: the IP
/// version and header length, the protocol, and both ports (for IPv4 without options and IPv6
/// without extension headers: the common case). Anything it cannot decide this cheaply goes to
/// [`parse`]. Unconnected sockets' bulk traffic (a UDP flood sent with sendto) leaves here,
/// before the full parse builds anything.
#[inline(always)]
fn plainly_not_dns(ctx: &SkBuffContext) -> bool {
    // SAFETY: reads the context's data pointers, which the verifier gives cgroup_skb programs.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    // (protocol offset, transport offset) by the first byte; the ports end 4 bytes after the
    // transport offset.
    if data + 24 > end {
        return false;
    }
    // SAFETY: the first byte, inside the linear part (checked just above).
    let (protocol_at, ports_at) = match unsafe { *(data as *const u8) } {
        0x45 => (9, 20),
        b if b >> 4 == 6 && data + 44 <= end => (6, 40),
        _ => return false,
    };
    // SAFETY: both inside the linear part: the checks above cover ports_at + 4.
    let (protocol, ports) = unsafe {
        (
            *((data + protocol_at) as *const u8),
            core::ptr::read_unaligned((data + ports_at) as *const u32),
        )
    };
    if protocol != IPPROTO_UDP && u16::from(protocol) != IPPROTO_TCP {
        return true;
    }
    // Both ports in network order: source first.
    let bytes = ports.to_ne_bytes();
    let sport = u16::from_be_bytes([bytes[0], bytes[1]]);
    let dport = u16::from_be_bytes([bytes[2], bytes[3]]);
    !is_dns_port(sport) && !is_dns_port(dport)
}

/// Where a UDP DNS packet stands, from its direction, its ports and the QR bit.
#[inline(always)]
fn observe(ctx: &SkBuffContext, egress: bool) {
    if connected_elsewhere(ctx) || plainly_not_dns(ctx) {
        return;
    }
    let Some(p) = parse(ctx) else { return };
    if p.protocol == IPPROTO_UDP {
        let answer = p.dns_flags & QR != 0;
        match (egress, answer) {
            (true, false) if is_dns_port(p.dport) => return client_query(ctx, &p),
            (false, true) if is_dns_port(p.sport) => return client_answer(ctx, &p),
            (false, false) if is_dns_port(p.dport) => return server_received(ctx, &p),
            (true, true) if is_dns_port(p.sport) => return server_answered(&p),
            _ => {}
        }
    }
    send(ctx, &p, egress);
}

/// A held query's slot: its state word and its key and record.
struct Slot {
    state: *mut u64,
    slot: *mut DnsSlot,
}

/// A state as a bit, for [`Slot::find`].
const fn bit(state: u64) -> u32 {
    1 << state
}

impl Slot {
    #[inline(always)]
    fn at(index: u32) -> Option<Self> {
        let slot = DNS_HELD.get_ptr_mut(index)?;
        Some(Self {
            // SAFETY: a field of an array value, valid while the program runs.
            state: unsafe { core::ptr::addr_of_mut!((*slot).state) },
            slot,
        })
    }

    /// The slot of `key`'s two whose word is in one of the `states` (bits) with `key`'s
    /// query, and that word.
    #[inline(always)]
    fn find(key: &DnsKey, states: u32) -> Option<(Self, u64)> {
        let first = dns_slot_index(key);
        for index in [first, first ^ 1] {
            if let Some(slot) = Self::at(index) {
                let seen = slot.word();
                if bit(seen & MASK) & states != 0 && slot.holds(key) {
                    return Some((slot, seen));
                }
            }
        }
        None
    }

    /// Claims one of `key`'s two slots for a query sent at `now`: a free one, else one the
    /// agent keeps for an earlier lookup (whose later resends are then matched like new
    /// queries: a timeout flood must not fill the table for everyone). The slot and the word
    /// it claimed with.
    #[inline(always)]
    fn claim(key: &DnsKey, now: u64) -> Option<(Self, u64)> {
        let first = dns_slot_index(key);
        for wanted in [FREE, AGENT] {
            for index in [first, first ^ 1] {
                if let Some(slot) = Self::at(index) {
                    let seen = slot.word();
                    if seen & MASK == wanted {
                        let claimed = held_state::claimed(seen, now);
                        // Lost to another program (or the agent): the next one is tried.
                        if slot.swap(seen, claimed) {
                            return Some((slot, claimed));
                        }
                    }
                }
            }
        }
        None
    }

    /// The state word as it is now.
    #[inline(always)]
    fn word(&self) -> u64 {
        // SAFETY: an array value, valid while the program runs; a plain 8-byte load, which
        // does not tear.
        unsafe { core::ptr::read_volatile(self.state) }
    }

    /// Moves the word from `seen` to `to`; false when it is no longer `seen` (the slot moved
    /// on meanwhile: someone else owns it now).
    #[inline(always)]
    fn swap(&self, seen: u64, to: u64) -> bool {
        // SAFETY: as above; an atomic instruction on an array value.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                self.state, seen, to,
            )
            .1
        }
    }

    /// Stores the word of a slot this program owns (`WRITING` or `TAKING`), released: whoever
    /// reads the word next also sees what this program wrote and read before it. Where stores
    /// reach other CPUs in program order (x86) a plain store does that, and the program goes on
    /// while its stores drain (a slot's record lines are seldom in this CPU's cache); elsewhere
    /// an exchange, a full barrier. The verifier sees the global as a constant and keeps one
    /// branch.
    #[inline(always)]
    fn set(&self, to: u64) {
        // SAFETY: a plain static of an integer that lives for the whole program.
        if unsafe { core::ptr::read_volatile(&DNS_STORES_ORDERED) } != 0 {
            // The compiler must not move earlier stores (the record's) after this one: an
            // empty asm block that may touch memory, so no instruction.
            // SAFETY: empty.
            unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
            // SAFETY: as above; an aligned 8-byte store, which does not tear.
            unsafe { core::ptr::write_volatile(self.state, to) };
        } else {
            // SAFETY: as above.
            unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(self.state, to) };
        }
    }

    /// Whether the slot's key is `key` (read without owning it: the caller checks again, or
    /// only annotates).
    #[inline(always)]
    fn holds(&self, key: &DnsKey) -> bool {
        // SAFETY: an array value, valid while the program runs.
        let k = unsafe { &(*self.slot).key };
        k.client == key.client
            && k.client_port == key.client_port
            && k.id == key.id
            && k.family == key.family
    }

    /// Whether the slot's query was asked by the socket cgroup `cgroup_id` of the server the
    /// answer `p` comes from (read from the slot's first line).
    #[inline(always)]
    fn asked(&self, cgroup_id: u64, p: &Packet) -> bool {
        // SAFETY: an array value, valid while the program runs.
        let s = unsafe { &*self.slot };
        s.cgroup_id == cgroup_id && s.server_port == p.sport && s.server == p.saddr
    }

    /// The record of the query this program took. Its server fields may belong to an earlier
    /// query in the slot: only [`Slot::send_taken`] reads them.
    #[inline(always)]
    fn held(&self) -> &DnsHeld {
        // SAFETY: an array value, valid while the program runs.
        unsafe { &(*self.slot).held }
    }

    /// Sends the query this program took (`TAKING` from `seen`) to the agent, with its server
    /// notes only if they were made for it. The copy is fixed, never the slot: only servers
    /// write the notes.
    #[inline(always)]
    fn send_taken(&self, seen: u64) {
        // The notes word first, then the server's cgroup written before it.
        // SAFETY: an array value, valid while the program runs.
        let notes = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*self.slot).notes)) };
        let Some(mut entry) = DNS_RING.reserve::<DnsHeld>(0) else {
            count_loss(LOST_DNS_RESERVE);
            return;
        };
        // SAFETY: the reserved record is a DnsHeld's worth of writable bytes; the slot's
        // record is owned by this program (the notes are plain integers a server may be
        // writing: any value read is one it wrote).
        unsafe {
            let out = entry.as_mut_ptr();
            core::ptr::copy_nonoverlapping(core::ptr::addr_of!((*self.slot).held), out, 1);
            held_notes::apply(notes, seen, &mut *out);
        }
        entry.submit(wakeup());
    }
}

/// A query leaving the asking socket: it waits in a slot of [`DNS_HELD`] with its record.
#[inline(always)]
fn client_query(ctx: &SkBuffContext, p: &Packet) {
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
fn client_answer(ctx: &SkBuffContext, p: &Packet) {
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

/// [`triage_agent_common::dns_question_hash`] of a held query: its captured payload without the
/// id, then its server.
#[inline(always)]
fn question_hash(held: &DnsHeld) -> u64 {
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
fn repeats_table() -> &'static HashMap<DnsRepeatKey, DnsRepeats> {
    if odd_generation() {
        &DNS_REPEATS1
    } else {
        &DNS_REPEATS0
    }
}

/// One more repeat of a failure the agent has reported.
#[inline(always)]
fn count_repeat(key: &DnsRepeatKey, latency: u64, now: u64) {
    let table = repeats_table();
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

#[inline(always)]
fn recent_slot(cgroup_id: u64) -> u32 {
    (cgroup_id as u32) & (DNS_RECENT_SLOTS - 1)
}

/// Whether a lookup of this cgroup failed within `window` ns before `now`.
#[inline(always)]
fn recently_failed(cgroup_id: u64, now: u64, window: u64) -> bool {
    match DNS_RECENT.get(recent_slot(cgroup_id)) {
        Some(r) => r.cgroup_id == cgroup_id && now.saturating_sub(r.boot_ns) < window,
        None => false,
    }
}

/// Notes that a lookup of this cgroup failed now.
#[inline(always)]
fn failed(cgroup_id: u64, now: u64) {
    if let Some(r) = DNS_RECENT.get_ptr_mut(recent_slot(cgroup_id)) {
        // SAFETY: an array slot, valid while the program runs; a concurrent writer of the
        // same slot can only shorten a window.
        unsafe {
            (*r).cgroup_id = cgroup_id;
            (*r).boot_ns = now;
        }
    }
}

/// Whether programs count into the second of each pair of switched tables.
#[inline(always)]
fn odd_generation() -> bool {
    matches!(DNS_GENERATION.get(0), Some(g) if *g & 1 == 1)
}

/// One lookup answered well, into the cgroup's counters: its slot of the current answered
/// array when free or its own, else its entry in the current hash table.
#[inline(always)]
fn count_answered(cgroup_id: u64, latency: u64, p: &Packet) {
    let odd = odd_generation();
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

/// One lookup into shared counters: atomic adds (they are shared between CPUs); the maximum
/// is a plain compare and store, best effort.
///
/// # Safety
/// All three point into a map value valid while the program runs.
#[inline(always)]
unsafe fn add_lookup(
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

/// A query arriving at a DNS server socket of this host: noted on the held query when its
/// client is a socket of this host.
#[inline(always)]
fn server_received(ctx: &SkBuffContext, p: &Packet) {
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
fn server_answered(p: &Packet) {
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

/// Fills a record for the packet.
///
/// # Safety
/// `event` must point to a DnsEvent's worth of writable bytes.
#[inline(always)]
unsafe fn fill(
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
fn wakeup() -> u64 {
    let flags = if DNS_RING.query(BPF_RB_AVAIL_DATA.into()) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags.into()
}

/// Sends the packet to the agent.
#[inline(always)]
fn send(ctx: &SkBuffContext, p: &Packet, egress: bool) {
    let Some(mut entry) = DNS_RING.reserve::<DnsEvent>(0) else {
        count_loss(LOST_DNS_RESERVE);
        return;
    };
    // SAFETY: helper without preconditions beyond a valid skb.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let flags = if egress { dns_flags::EGRESS } else { 0 };
    // SAFETY: the reserved record is a DnsEvent's worth of writable bytes; the clock helper
    // has no preconditions.
    unsafe {
        fill(
            ctx,
            p,
            entry.as_mut_ptr(),
            flags,
            cgroup_id,
            bpf_ktime_get_boot_ns(),
        )
    };
    entry.submit(wakeup());
}
