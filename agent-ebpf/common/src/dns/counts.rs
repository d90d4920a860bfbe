//! Lookups counted in the kernel: failed lookups repeated after the agent reported them, and
//! lookups answered well, per cgroup.

use core::mem::size_of;

use crate::maps::DNS_ANSWERED_SLOTS;
// Items the documentation links to.
#[cfg(doc)]
use crate::{
    AF_INET, AF_INET6, DNS_ANSWERED_MAPS, DNS_ANSWERED_SLOTS_MAPS, DNS_REPEATS_MAPS,
    dns_question_hash,
};

/// A failed lookup's identity, for counting its repeats in the kernel: the asking socket's
/// cgroup, [`dns_question_hash`] of the query as sent (without its id) and of the server it
/// went to, and the answer's rcode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsRepeatKey {
    pub cgroup_id: u64,
    pub question: u64,
    pub rcode: u32,
    pub _pad0: u32,
}
const _: () = assert!(size_of::<DnsRepeatKey>() == 24);

/// Repeats of one failed lookup in one generation of [`DNS_REPEATS_MAPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsRepeats {
    pub count: u64,
    /// Sum and maximum of their latencies (query sent to answer received).
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    /// When the first and the latest of them were answered (CLOCK_BOOTTIME).
    pub first_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(size_of::<DnsRepeats>() == 40);

/// A cgroup's lookups answered well (NOERROR, not truncated, below the slow threshold) in one
/// generation of [`DNS_ANSWERED_MAPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsAnswered {
    pub lookups: u64,
    /// Sum and maximum of their latencies (query sent to answer received).
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    /// The asking address last seen ([`AF_INET`] or [`AF_INET6`]; IPv4 in the first 4 bytes).
    pub family: u16,
    pub _pad0: [u16; 3],
    pub client: [u8; 16],
}
const _: () = assert!(size_of::<DnsAnswered>() == 48);

/// A slot of [`DNS_ANSWERED_SLOTS_MAPS`]: the cgroup that took it (0: free; taken with
/// compare-and-swap, released only by the agent once no program counts into its generation)
/// and its counts. One cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsAnsweredSlot {
    pub cgroup_id: u64,
    pub answered: DnsAnswered,
    pub _pad0: u64,
}
const _: () = assert!(size_of::<DnsAnsweredSlot>() == 64);

/// The slot of [`DNS_ANSWERED_SLOTS_MAPS`] a cgroup counts in (cgroup ids are inode numbers,
/// mostly consecutive on a node, so the low bits spread them).
#[inline(always)]
pub const fn dns_answered_slot(cgroup_id: u64) -> u32 {
    (cgroup_id as u32) & (DNS_ANSWERED_SLOTS - 1)
}
