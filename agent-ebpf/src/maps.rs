//! Maps and globals shared by every program. Names match the constants in triage-agent-common,
//! which is what userspace uses to find them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use triage_agent_common::{
    BPF_F_MMAPABLE, COMM_LEN, CONNECT_SLOT_BITS, CONNECTS_ENTRIES, DNS_ANSWERED_ENTRIES,
    DNS_ANSWERED_SLOTS, DNS_HELD_SLOTS, DNS_RECENT_SLOTS, DNS_REPEATABLE_ENTRIES,
    DNS_REPEATS_ENTRIES, DNS_RING_BYTES, DROP_REASONS_ENTRIES, DnsAnswered, DnsAnsweredSlot,
    DnsRepeatKey, DnsRepeats, DnsSlot, EVENTS_RING_BYTES, FLOW_REPEAT_SLOTS, FLOWS_ENTRIES,
    FlowKey, FlowRepeat, FlowStats, LOSS_SLOTS, Offsets, PendingConnect,
};
use triage_agent_common::{
    CGROUP_LOSSES_ENTRIES, CgroupLosses, NETNS_CGROUPS_ENTRIES, NetnsCgroups, SHARE_ENTRIES, Share,
    ShareKey,
};

/// The one ring buffer every program writes its events into (`EVENTS_MAP`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// DNS packets for userspace to parse (`DNS_RING_MAP`), apart from [`EVENTS`] so a DNS flood
/// cannot crowd out other signals' first occurrences.
#[map]
pub static DNS_RING: RingBuf = RingBuf::with_byte_size(DNS_RING_BYTES, 0);

/// UDP queries waiting for their answer (`DNS_HELD_MAP`), direct-mapped by
/// `dns_slot_index` to two neighbouring slots: a query whose two slots hold other queries
/// goes to [`DNS_RING`] instead, never evicting one. Who may touch a slot is decided by its
/// state word (see `held_state`); the agent maps the array and takes over old queries with
/// the same compare-and-swap the programs use. A slot the agent keeps for a lookup it took
/// over may be claimed by a new query: the agent still has that lookup, only its later
/// resends are then held like new queries.
#[map]
pub static DNS_HELD: Array<DnsSlot> = Array::with_max_entries(DNS_HELD_SLOTS, BPF_F_MMAPABLE);

/// Lookups answered well per cgroup, double-buffered like the flow tables
/// (`DNS_ANSWERED_MAPS`, switched by [`DNS_GENERATION`]).
#[map]
pub static DNS_ANSWERED0: HashMap<u64, DnsAnswered> =
    HashMap::with_max_entries(DNS_ANSWERED_ENTRIES, 0);
#[map]
pub static DNS_ANSWERED1: HashMap<u64, DnsAnswered> =
    HashMap::with_max_entries(DNS_ANSWERED_ENTRIES, 0);

/// In front of those, switched with them (`DNS_ANSWERED_SLOTS_MAPS`): a cgroup's counts in its
/// direct-mapped slot, the hash table only when another cgroup holds the slot.
#[map]
pub static DNS_ANSWERED_SLOTS0: Array<DnsAnsweredSlot> =
    Array::with_max_entries(DNS_ANSWERED_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static DNS_ANSWERED_SLOTS1: Array<DnsAnsweredSlot> =
    Array::with_max_entries(DNS_ANSWERED_SLOTS, BPF_F_MMAPABLE);

/// Failed lookups the agent has reported, whose repeats are counted here
/// (`DNS_REPEATABLE_MAP`, written by the agent).
#[map]
pub static DNS_REPEATABLE: HashMap<DnsRepeatKey, u32> =
    HashMap::with_max_entries(DNS_REPEATABLE_ENTRIES, 0);

/// Repeats of those failures, double-buffered with the answered tables (`DNS_REPEATS_MAPS`).
#[map]
pub static DNS_REPEATS0: HashMap<DnsRepeatKey, DnsRepeats> =
    HashMap::with_max_entries(DNS_REPEATS_ENTRIES, 0);
#[map]
pub static DNS_REPEATS1: HashMap<DnsRepeatKey, DnsRepeats> =
    HashMap::with_max_entries(DNS_REPEATS_ENTRIES, 0);

/// Which answered and repeats tables are current (`DNS_GENERATION_MAP`, entry 0, written by the
/// agent), and how many programs are writing each generation (entries 1 and 2, see
/// dns/counters.rs): the agent drains a generation when its count is 0.
#[map]
pub static DNS_GENERATION: Array<u32> = Array::with_max_entries(3, 0);

/// When a cgroup's latest failed lookup was answered (kernel-internal): its good answers go to
/// the agent for a while after, to end a search-path walk there. Direct-mapped by cgroup id
/// (an array read costs a fraction of a hash lookup); a slot names its cgroup, and a cgroup
/// that takes another's slot only ends that one's window early.
#[map]
pub static DNS_RECENT: Array<RecentFailure> = Array::with_max_entries(DNS_RECENT_SLOTS, 0);

/// A cgroup and when one of its lookups last failed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecentFailure {
    pub cgroup_id: u64,
    pub boot_ns: u64,
}

/// Per-CPU loss counters (`LOSS_MAP`), indexed by the `LOST_*` constants.
#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// Who called connect() on a socket still in SYN_SENT, keyed by the socket's address
/// (`CONNECTS_MAP`), for attempts that outlived their slot in [`CONNECT_SLOTS`] (a SYN
/// retransmitted, or the slot taken by another attempt). Every attempt leaves at its next
/// state change (ESTABLISHED or CLOSE), so the table holds only attempts in flight; when it is
/// full, new attempts are counted as lost (an LRU map would evict older attempts silently).
#[map]
pub static CONNECTS: HashMap<u64, PendingConnect> = HashMap::with_max_entries(CONNECTS_ENTRIES, 0);

/// connect() calls in flight, one cache line each at a slot chosen by a multiplicative hash
/// of the socket's address (see conn.rs): an array, whose lookups the verifier inlines, so an
/// attempt that is answered costs no map operation.
#[map]
pub static CONNECT_SLOTS: Array<ConnectSlot> = Array::with_max_entries(1 << CONNECT_SLOT_BITS, 0);

/// An attempt in [`CONNECT_SLOTS`]: its socket (0: a free slot), who connected, and a seal over
/// both that tells a slot two CPUs wrote at once from one either wrote; and how many attempts
/// of sockets that hash to this slot are in [`CONNECTS`] (added to before an insert, taken
/// from after a removal, so never fewer than there are): at 0, nothing there is looked up.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectSlot {
    pub sk: u64,
    pub seal: u64,
    pub pending: PendingConnect,
    pub tabled: u64,
}

/// Connect attempts in flight per socket cgroup (`CONNECT_SHARES_MAP`, see share.rs).
#[map]
pub static CONNECT_SHARES: LruHashMap<u64, i64> = LruHashMap::with_max_entries(SHARE_ENTRIES, 0);

/// What each cgroup (or the peers' share) used of the flow tables and the rings in its current
/// window (`SHARES_MAP`, see share.rs).
#[map]
pub static SHARES: LruHashMap<ShareKey, Share> = LruHashMap::with_max_entries(SHARE_ENTRIES, 0);

/// What each cgroup lost (`CGROUP_LOSSES_MAPS`), switched by [`GENERATION`] with the flow tables.
#[map]
pub static CGROUP_LOSSES0: HashMap<u64, CgroupLosses> =
    HashMap::with_max_entries(CGROUP_LOSSES_ENTRIES, 0);
#[map]
pub static CGROUP_LOSSES1: HashMap<u64, CgroupLosses> =
    HashMap::with_max_entries(CGROUP_LOSSES_ENTRIES, 0);

/// The socket cgroups seen in each network namespace (`NETNS_CGROUPS_MAP`), learned at
/// connect().
#[map]
pub static NETNS_CGROUPS: LruHashMap<u32, NetnsCgroups> =
    LruHashMap::with_max_entries(NETNS_CGROUPS_ENTRIES, 0);

/// The two flow tables (`FLOWS_MAPS`): programs count into the one [`GENERATION`] names; the
/// agent flips the generation, waits for programs still counting into the old table, and
/// drains it. Plain hashes: a full table is counted, never silently evicted.
#[map]
pub static FLOWS0: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(FLOWS_ENTRIES, 0);
#[map]
pub static FLOWS1: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(FLOWS_ENTRIES, 0);

/// Which flow table is current (`GENERATION_MAP`, entry 0: 0 or 1, written by the agent), and
/// how many programs are writing each generation (entries 1 and 2, see flows.rs): the agent
/// drains a generation when its count is 0.
#[map]
pub static GENERATION: Array<u32> = Array::with_max_entries(3, 0);

/// Per CPU, generation and recording program: the flow counted last and its repeats not yet in the
/// table (`FLOW_REPEATS_MAP`, see flows.rs).
#[map]
pub static FLOW_REPEATS: PerCpuArray<FlowRepeat> =
    PerCpuArray::with_max_entries(2 * FLOW_REPEAT_SLOTS, 0);

/// Per CPU: the jiffy of the latest precise clock read and its value (see flows.rs).
#[map]
pub static CLOCK_CACHE: PerCpuArray<ClockCache> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the input device and ifindex of the latest dropped packet with no socket, the
/// namespace found for them (0: none) and the jiffy it was found in (see drop.rs).
#[map]
pub static INGRESS_CACHE: PerCpuArray<IngressCache> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IngressCache {
    pub dev: u64,
    pub jiffies: u64,
    pub iif: i32,
    pub netns: u32,
}

/// Per CPU: the thread that connected last, as read then, and the cgroup
/// [`NETNS_CGROUPS`] was last told of (see conn.rs).
#[map]
pub static LAST_CONNECTOR: PerCpuArray<LastConnector> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastConnector {
    /// The jiffy the thread's identity was read in (0: never).
    pub jiffies: u64,
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// The cgroup this CPU last told [`NETNS_CGROUPS`] of, and the jiffy it did.
    pub learned_cgroup: u64,
    pub learned_jiffies: u64,
}

/// Per CPU: the packet `tcp_send_reset` last answered with no socket (0: none, or already
/// seen by `kfree_skb`) and the jiffy it did; the kernel frees it next as a NO_SOCKET drop on
/// the same CPU.
#[map]
pub static RESET_SKB: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// A precise boot time and the jiffy it was read in.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ClockCache {
    pub jiffies: u64,
    pub boot_ns: u64,
}

/// Drop reasons to report (`DROP_REASONS_MAP`): 1 at the index of each wanted
/// `enum skb_drop_reason` value of the running kernel, written by the agent from BTF names.
#[map]
pub static DROP_REASONS: Array<u8> = Array::with_max_entries(DROP_REASONS_ENTRIES, 0);

/// This kernel's layouts (`OFFSETS_GLOBAL`), overwritten by the loader before load.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::ABSENT;

/// The layouts. Only the pointer is read volatile: the compiler cannot tell where it points,
/// so it cannot fold in the placeholder values, and each program loads only the members it
/// uses (a volatile read of the whole struct cost every call 56 loads). The verifier sees the
/// loader's values as constants of a frozen map.
#[inline(always)]
pub fn offsets() -> &'static Offsets {
    let layouts: *const Offsets = &OFFSETS;
    // SAFETY: reads a local; the pointer it yields is OFFSETS', a static that lives for the
    // whole program.
    unsafe { &*core::ptr::read_volatile(&layouts) }
}

/// `EEXIST`: a map insert with `BPF_NOEXIST` fails with its negative when the key is already
/// in the map (another CPU entered it first).
pub const EEXIST: i32 = 17;

/// Adds one to a loss counter of this CPU.
#[inline(always)]
pub fn count_loss(slot: u32) {
    if let Some(counter) = LOSS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe { *counter += 1 };
    }
}
