//! The kernel's table of UDP queries waiting for their answer: a slot's layout, its state word
//! and server notes, and the two slots a query's key may be held in.

use core::mem::size_of;

use super::{
    event::DnsEvent,
    hash::{DNS_HASH_SEED, dns_hash_step},
};
use crate::maps::DNS_HELD_SLOTS;
// Items the documentation links to.
#[cfg(doc)]
use crate::{AF_INET, AF_INET6, DNS_HELD_MAP, dns_flags};

/// A UDP DNS lookup in flight, by what both its client and a server on this host see: the
/// client's address and port and the message id. (The server may see another destination
/// address than the client used, behind a Service's DNAT.) The answer is checked against the
/// held query's socket cgroup and server before it counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsKey {
    /// IPv4 in the first 4 bytes, or IPv6.
    pub client: [u8; 16],
    /// Host order.
    pub client_port: u16,
    /// The DNS message id: the wire's two bytes read in native order.
    pub id: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    pub _pad0: u16,
}
const _: () = assert!(size_of::<DnsKey>() == 24);

/// A query held in the kernel, and what a DNS server socket of this host did with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsHeld {
    /// The query as it left the client (flags include [`dns_flags::HELD`]).
    pub query: DnsEvent,
    /// cgroup v2 id of the server socket that received it, 0 when none on this host did.
    pub server_cgroup: u64,
    /// 1 once a server socket of this host received it.
    pub reached: u32,
    /// 1 once that server sent its answer.
    pub answered: u32,
}
const _: () = assert!(size_of::<DnsHeld>() == 376);

/// A slot of [`DNS_HELD_MAP`]: its state word, the key of the query it holds and its record.
/// The key is valid while the word says [`held_state::HELD`] or [`held_state::AGENT`], the
/// record while it says `HELD`; both are written only by whoever claimed the slot (moved the
/// word to `WRITING`), and read whole only by whoever moved it out of `HELD` (a DNS server
/// socket's notes are the exception: see `notes`). 448 bytes, a multiple of a cache line.
/// The first line holds all an answer matched in the kernel reads (word, key, asking cgroup,
/// server; the query's time is the word's claim time): that one line moves between the CPU
/// that sent the query and the one that receives its answer, the record's lines stay with the
/// sender unless the lookup goes to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsSlot {
    /// [`held_state`].
    pub state: u64,
    pub key: DnsKey,
    /// The asking socket's cgroup v2 id (`held.query.cgroup_id`, repeated here).
    pub cgroup_id: u64,
    /// The server the query was sent to (`held.query.daddr` and `dport`, repeated here).
    pub server: [u8; 16],
    pub server_port: u16,
    pub _pad1: u16,
    /// What a DNS server socket of this host did with a query held here ([`held_notes`]):
    /// which occupancy the notes are about, and whether the server received it and answered.
    /// Written only by servers, in one store, on the line the answer reads anyway; with it
    /// `held.server_cgroup` (written before it) and not `held`'s other server fields, which
    /// whoever sends the query up fills from this word.
    pub notes: u32,
    pub held: DnsHeld,
    pub _pad0: u64,
}
const _: () = assert!(size_of::<DnsSlot>() == 448);
const _: () = assert!(core::mem::offset_of!(DnsSlot, held) == 64);

/// The state word of a [`DNS_HELD_MAP`] slot ([`DnsSlot::state`]): the state in the low
/// three bits, and above them ([`held_state::TIME_SHIFT`]) the CLOCK_BOOTTIME ns at which the
/// slot was last claimed for a query. Each claim stores a later time than the slot's last one,
/// so a word names one occupancy: a compare-and-swap from a word read earlier fails once the
/// slot has been freed and claimed again in between (no ABA), and the agent reads a query's age
/// from the word alone.
///
/// - A query claims a `FREE` slot (`FREE` -> `WRITING` with a new time), writes key and record,
///   then publishes it (`HELD`).
/// - Its answer claims it (`HELD` -> `TAKING`, same time), reads it, and frees it (`FREE`,
///   same time).
/// - The agent taking an old query over, or a resend handing its first send to the agent,
///   claims it the same way and leaves it `AGENT`: the agent tracks that lookup now, and the
///   slot keeps its key so that further resends and the answer go to the agent too (held
///   again in the kernel, a resend would be matched there while the agent waits for the
///   first send's answer, and reports a timeout for a lookup that succeeded). A resend moves
///   the word's time to its own, as the tracker moves the lookup's deadline. The agent frees
///   it (`AGENT` -> `FREE`) once the lookup must have ended; before that, a query that
///   finds neither of its slots free may claim it (`AGENT` -> `WRITING`), so that a timeout
///   flood cannot fill the table for everyone.
/// - Anyone finding the slot in another state, or holding another key, leaves it alone.
pub mod held_state {
    pub const FREE: u64 = 0;
    pub const WRITING: u64 = 1;
    pub const HELD: u64 = 2;
    pub const TAKING: u64 = 3;
    pub const AGENT: u64 = 4;
    /// The state bits.
    pub const MASK: u64 = 7;
    /// Where the claim time starts.
    pub const TIME_SHIFT: u32 = 3;

    /// The word `seen` with its state replaced by `state`.
    #[inline(always)]
    pub const fn with(seen: u64, state: u64) -> u64 {
        (seen & !MASK) | state
    }

    /// The word a claim at `now_ns` stores over `seen`: a time later than `seen`'s.
    #[inline(always)]
    pub const fn claimed(seen: u64, now_ns: u64) -> u64 {
        let last = seen >> TIME_SHIFT;
        let time = if now_ns > last { now_ns } else { last + 1 };
        (time << TIME_SHIFT) | WRITING
    }

    /// When the slot was claimed (CLOCK_BOOTTIME ns, its top three bits cut).
    #[inline(always)]
    pub const fn time(word: u64) -> u64 {
        word >> TIME_SHIFT
    }
}

/// [`DnsSlot::notes`]: the tag of the occupancy whose query a DNS server socket of this host
/// received (above [`held_notes::TAG_SHIFT`]), and what it did ([`held_notes::REACHED`],
/// [`held_notes::ANSWERED`]). A query never clears the word, so a note made late for an earlier
/// occupancy (its tag differs) is ignored, never credited to the next query.
pub mod held_notes {
    /// A server socket received the query.
    pub const REACHED: u32 = 1;
    /// That server sent its answer.
    pub const ANSWERED: u32 = 2;
    /// Where the tag starts.
    pub const TAG_SHIFT: u32 = 2;

    /// The tag of the occupancy whose state word is `word`: its claim time in units of
    /// 1,024 ns, cut to 30 bits (it repeats every 1,100 s; two claims of one slot are always
    /// further apart than 1,024 ns, a query's round trip).
    #[inline(always)]
    pub const fn tag(word: u64) -> u32 {
        ((super::held_state::time(word) >> 10) as u32) << TAG_SHIFT
    }

    /// (reached, answered) for the occupancy of `word`, from the notes `notes`.
    #[inline(always)]
    pub const fn of(notes: u32, word: u64) -> (bool, bool) {
        if notes & !(REACHED | ANSWERED) != tag(word) {
            return (false, false);
        }
        (notes & REACHED != 0, notes & ANSWERED != 0)
    }

    /// Sets the server fields of `held`, a copy of the record of the occupancy whose word is
    /// `word`, from the slot's notes read before the copy: notes about another occupancy
    /// count as none (and its server cgroup is then not this query's).
    #[inline(always)]
    pub fn apply(notes: u32, word: u64, held: &mut super::DnsHeld) {
        let (reached, answered) = of(notes, word);
        if !reached {
            held.server_cgroup = 0;
        }
        held.reached = u32::from(reached);
        held.answered = u32::from(answered);
    }
}

/// The first of the two slots of [`DNS_HELD_MAP`] a query's key may be held in; the other is
/// its neighbour (`index ^ 1`, in the same 896 bytes).
#[inline(always)]
pub fn dns_slot_index(key: &DnsKey) -> u32 {
    let lo = u64::from_le_bytes([
        key.client[0],
        key.client[1],
        key.client[2],
        key.client[3],
        key.client[4],
        key.client[5],
        key.client[6],
        key.client[7],
    ]);
    let hi = u64::from_le_bytes([
        key.client[8],
        key.client[9],
        key.client[10],
        key.client[11],
        key.client[12],
        key.client[13],
        key.client[14],
        key.client[15],
    ]);
    let rest = u64::from(key.client_port) | u64::from(key.id) << 16 | u64::from(key.family) << 32;
    let h = dns_hash_step(dns_hash_step(dns_hash_step(DNS_HASH_SEED, lo), hi), rest);
    (h as u32) & (DNS_HELD_SLOTS - 1)
}
