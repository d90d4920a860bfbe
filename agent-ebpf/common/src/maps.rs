//! Names, sizes and indices of the maps and globals the programs and the agent share: the
//! agent finds every map and global by one of these names and never types a name literal.

// Items the documentation links to.
#[cfg(doc)]
use crate::{
    DnsAnswered, DnsAnsweredSlot, DnsEvent, DnsKey, DnsPorts, DnsRepeatKey, DnsRepeats, DnsSlot,
    DnsTiming, FlowKey, FlowRepeat, FlowStats, Offsets, dns_answered_slot, dns_slot_index,
    held_state,
};

/// Name of the ring buffer every program writes its events to.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array of kernel-side loss counters, indexed by the `LOST_*` constants.
pub const LOSS_MAP: &str = "LOSS";
/// Name of the hash remembering who called connect() on a socket, keyed by socket address.
pub const CONNECTS_MAP: &str = "CONNECTS";
/// Names of the two flow tables ([`FlowKey`] -> [`FlowStats`]): programs count into the one
/// [`GENERATION_MAP`] selects while the agent drains the other.
pub const FLOWS_MAPS: [&str; 2] = ["FLOWS0", "FLOWS1"];
/// Name of the one-entry array holding the generation (0 or 1) programs count into.
pub const GENERATION_MAP: &str = "GENERATION";
/// Name of the per-CPU array of [`FlowRepeat`]s: per generation and recording program, the
/// flow a CPU counted last and its repeats since, which have not reached the flow table yet.
/// Index: `generation * FLOW_REPEAT_SLOTS + program`.
pub const FLOW_REPEATS_MAP: &str = "FLOW_REPEATS";
/// Slots per generation in [`FLOW_REPEATS_MAP`]: one per program that records flows.
pub const FLOW_REPEAT_SLOTS: u32 = 8;
/// Name of the array of drop reasons to report: index = `enum skb_drop_reason` value, 1 = on.
pub const DROP_REASONS_MAP: &str = "DROP_REASONS";
/// Name of the ring buffer the DNS capture programs copy packets into ([`DnsEvent`]). Its own
/// ring, so a DNS flood cannot crowd out the first occurrences of other signals.
pub const DNS_RING_MAP: &str = "DNS_RING";
/// Name of the read-only global holding the DNS ports to capture ([`DnsPorts`]).
pub const DNS_PORTS_GLOBAL: &str = "DNS_PORTS";
/// Name of the read-only global holding the DNS timing thresholds ([`DnsTiming`]).
pub const DNS_TIMING_GLOBAL: &str = "DNS_TIMING";
/// Name of the read-only global (`u32`) saying whether this host's CPUs make stores visible to
/// other CPUs in program order (x86: total store order), set by the loader from the agent's
/// own architecture. Then a program publishes a DNS slot it wrote with a plain store, without
/// waiting for its earlier stores to reach the cache (what an atomic exchange, a full barrier,
/// waits for); elsewhere it exchanges.
pub const DNS_STORES_ORDERED_GLOBAL: &str = "DNS_STORES_ORDERED";
/// Whether the CPUs the agent is built for make stores visible in program order (see
/// [`DNS_STORES_ORDERED_GLOBAL`]).
pub const STORES_ORDERED: bool = cfg!(any(target_arch = "x86_64", target_arch = "x86"));
/// Name of the table of UDP DNS queries waiting for their answer in the kernel: an array of
/// [`DNS_HELD_SLOTS`] [`DnsSlot`]s, a query in the slot [`dns_slot_index`] of its [`DnsKey`].
/// Who owns a slot is decided by its state word ([`held_state`]). An answer that ends a lookup
/// well is counted in the kernel; anything else sends the query and its answer to
/// [`DNS_RING_MAP`]; the agent takes over queries left unanswered past a handover age, through
/// its mapping of the array ([`BPF_F_MMAPABLE`]).
pub const DNS_HELD_MAP: &str = "DNS_HELD";
/// Names of the two tables of lookups answered well, per socket cgroup (`u64` ->
/// [`DnsAnswered`]): programs count into the one [`DNS_GENERATION_MAP`] selects while the agent
/// drains the other.
pub const DNS_ANSWERED_MAPS: [&str; 2] = ["DNS_ANSWERED0", "DNS_ANSWERED1"];
/// Names of the two arrays in front of [`DNS_ANSWERED_MAPS`], switched with them: a cgroup's
/// good answers are counted in its slot ([`dns_answered_slot`], [`DnsAnsweredSlot`]) when the
/// slot is free or already its own (an array read costs no helper call and no hashing), and in
/// the hash table otherwise. Mappable: the agent reads and empties them in place.
pub const DNS_ANSWERED_SLOTS_MAPS: [&str; 2] = ["DNS_ANSWERED_SLOTS0", "DNS_ANSWERED_SLOTS1"];
/// Name of the one-entry array holding the generation (0 or 1) of [`DNS_ANSWERED_MAPS`].
pub const DNS_GENERATION_MAP: &str = "DNS_GENERATION";
/// Name of the hash of failed lookups the agent has reported and wants counted in the kernel
/// from now on ([`DnsRepeatKey`] -> `u32`, written by the agent only): a UDP answer that fails
/// the same way for the same question, asker and server is then counted in
/// [`DNS_REPEATS_MAPS`] instead of travelling through [`DNS_RING_MAP`].
pub const DNS_REPEATABLE_MAP: &str = "DNS_REPEATABLE";
/// Names of the two tables of repeated failures ([`DnsRepeatKey`] -> [`DnsRepeats`]), switched
/// by [`DNS_GENERATION_MAP`] together with [`DNS_ANSWERED_MAPS`].
pub const DNS_REPEATS_MAPS: [&str; 2] = ["DNS_REPEATS0", "DNS_REPEATS1"];
/// Name of the LRU hash of the socket cgroups seen in each network namespace (`u32` namespace
/// inode -> [`NetnsCgroups`]), learned when a socket connects: the agent reads it to tell which
/// pod a network namespace belongs to, so a dropped packet is credited to the pod it came from,
/// not to whoever its source address names.
pub const NETNS_CGROUPS_MAP: &str = "NETNS_CGROUPS";
/// Entries in [`NETNS_CGROUPS_MAP`].
pub const NETNS_CGROUPS_ENTRIES: u32 = 16 * 1024;

/// The socket cgroups seen connecting in one network namespace: the first, and the latest
/// other one (0: none yet). Two are enough to tell a pod's own namespace (one pod's cgroups,
/// perhaps a host process dialling inside it) from a shared one (the node's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsCgroups {
    pub first: u64,
    pub other: u64,
}
const _: () = assert!(size_of::<NetnsCgroups>() == 16);

/// Name of the read-only global carrying the running kernel's layouts ([`Offsets`]).
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Index in [`LOSS_MAP`]: an event was dropped because the ring buffer was full.
pub const LOST_RESERVE: u32 = 0;
/// Index in [`LOSS_MAP`]: a connect() could not be remembered (the table was full).
pub const LOST_CONNECT_TABLE: u32 = 1;
/// Index in [`LOSS_MAP`]: an event was seen but a field of its record could not be read.
pub const LOST_FIELD_READ: u32 = 2;
/// Index in [`LOSS_MAP`]: a new flow could not be entered in the flow table (it was full); its
/// occurrence went through the ring buffer instead (and [`LOST_RESERVE`] counts if that failed).
pub const LOST_FLOW_TABLE: u32 = 3;
/// Index in [`LOSS_MAP`]: a DNS packet was not copied because [`DNS_RING_MAP`] was full.
pub const LOST_DNS_RESERVE: u32 = 4;
/// Index in [`LOSS_MAP`]: a lookup answered well could not be counted (the answered table was
/// full).
pub const LOST_DNS_ANSWERED: u32 = 5;
/// Index in [`LOSS_MAP`]: a repeated failed lookup could not be counted (the repeats table was
/// full).
pub const LOST_DNS_REPEATS: u32 = 6;
/// Number of slots in [`LOSS_MAP`].
pub const LOSS_SLOTS: u32 = 7;

/// Size of the ring buffer in bytes (a power of two multiple of the page size). It carries only
/// first occurrences of flows (repeats are counted in the flow tables): 256 KiB holds about
/// 1,900 of them, enough for bursts while userspace is descheduled.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Size of [`DNS_RING_MAP`] in bytes: about 2,800 [`DnsEvent`]s, a burst of that many DNS
/// packets while userspace is descheduled.
pub const DNS_RING_BYTES: u32 = 1024 * 1024;
/// Slots in [`DNS_HELD_MAP`] (a power of two). A query may be held in either of two
/// neighbouring slots; when both hold others it goes to [`DNS_RING_MAP`] at once (nothing is
/// lost; the agent does the matching). More slots cost more than the queries they would keep
/// off the ring: the table is touched at random, and at 16,384 slots (7 MiB) cache and TLB
/// misses made every lookup dearer.
pub const DNS_HELD_SLOTS: u32 = 4 * 1024;
/// `BPF_F_MMAPABLE`: an array map userspace can map into its memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Slots in each of [`DNS_ANSWERED_SLOTS_MAPS`] (a power of two): one cache line each, 64 KiB.
pub const DNS_ANSWERED_SLOTS: u32 = 1024;
/// Entries in each of [`DNS_ANSWERED_MAPS`]: cgroups with lookups per drain interval.
pub const DNS_ANSWERED_ENTRIES: u32 = 8 * 1024;
/// Entries in [`DNS_REPEATABLE_MAP`]: failures the kernel counts instead of copying.
pub const DNS_REPEATABLE_ENTRIES: u32 = 4 * 1024;
/// Entries in each of [`DNS_REPEATS_MAPS`]: repeated failures per drain interval.
pub const DNS_REPEATS_ENTRIES: u32 = 4 * 1024;
/// Slots in the kernel's direct-mapped table of cgroups with a recent failed lookup, whose
/// good answers go to the agent for a while (it folds a search-path walk into one finding from
/// them). A power of two.
pub const DNS_RECENT_SLOTS: u32 = 4 * 1024;
/// Entries in [`CONNECTS_MAP`]: concurrent connect() calls still waiting for SYN-ACK or RST
/// after their first SYN retransmission (or moved there from a slot another attempt took).
pub const CONNECTS_ENTRIES: u32 = 16 * 1024;
/// log2 of the slots of the kernel's direct-mapped table of connect() calls in flight (one
/// cache line each), where an attempt waits for its answer with no map operation.
pub const CONNECT_SLOT_BITS: u32 = 13;

/// The slot of socket `sk` (its kernel address) among the `1 << CONNECT_SLOT_BITS`: a
/// multiplicative hash (sockets come from slabs, so the low bits alone would crowd a few
/// slots).
#[inline(always)]
pub const fn connect_slot(sk: u64) -> u32 {
    (sk.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CONNECT_SLOT_BITS)) as u32
}
/// Entries in each flow table: distinct flows per drain interval.
pub const FLOWS_ENTRIES: u32 = 16 * 1024;
/// Entries in [`DROP_REASONS_MAP`]: reason values at or above it are never reported.
pub const DROP_REASONS_ENTRIES: u32 = 1024;
