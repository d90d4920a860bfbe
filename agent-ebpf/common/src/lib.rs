//! Types shared by the eBPF programs (agent-ebpf) and the node agent (agent/src/probes).
//!
//! Everything here is `#[repr(C)]`, `Copy`, made of fixed-size integers and arrays with explicit
//! padding, and has its size pinned by a `const` assertion so a layout change cannot slip by.
//! Discriminants travel as `u32`; userspace converts them with `TryFrom` and never transmutes
//! kernel bytes into an enum.
#![no_std]

use core::mem::size_of;

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
/// Bytes of a DNS payload copied into a [`DnsEvent`]: the 12-byte header and the question of
/// any legal name (at most 255 bytes on the wire, plus type and class), also behind TCP's
/// 2-byte length prefix (12 + 255 + 4 + 2 = 273, rounded up to a multiple of 8). Answers are
/// not needed: the outcome is the header's rcode.
pub const DNS_PAYLOAD_CAP: usize = 288;
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
/// How many DNS ports can be configured.
pub const DNS_PORTS_MAX: usize = 8;
/// Entries in [`CONNECTS_MAP`]: concurrent connect() calls still waiting for SYN-ACK or RST.
pub const CONNECTS_ENTRIES: u32 = 16 * 1024;
/// Entries in each flow table: distinct flows per drain interval.
pub const FLOWS_ENTRIES: u32 = 16 * 1024;
/// Entries in [`DROP_REASONS_MAP`]: reason values at or above it are never reported.
pub const DROP_REASONS_ENTRIES: u32 = 1024;

/// Length of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Event kinds (in [`FlowKey::kind`] and [`EventHeader::kind`]). Ids are fixed forever and never
/// reused.
pub mod kind {
    /// This host's connect() was refused while in SYN_SENT: by a RST, or (flag
    /// [`super::flow_flags::ICMP_REJECT`]) by an ICMP error.
    pub const CONNECT_REFUSED: u32 = 1;
    /// This host answered a SYN with RST because no socket listens.
    pub const SYN_REFUSED: u32 = 2;
    /// The kernel dropped a packet for a reason in [`super::DROP_REASONS_MAP`].
    pub const PACKET_DROP: u32 = 3;
    /// This host's connect() ended in SYN_SENT without any answer.
    pub const CONNECT_TIMEOUT: u32 = 4;
    /// A DNS packet (query or answer) a socket on this host sent or received ([`super::DnsEvent`]).
    pub const DNS: u32 = 16;
    /// The OOM killer chose a victim ([`super::OomEvent`]).
    pub const OOM_VICTIM: u32 = 5;
}

/// Flags in [`FlowKey::flags`].
pub mod flow_flags {
    /// [`super::FlowStats`] `pid`, `tgid`, `comm` describe the process that called connect().
    pub const HAS_PROCESS: u32 = 1 << 0;
    /// `reason` holds a kernel enum value (`sk_rst_reason`, `skb_drop_reason`).
    pub const HAS_REASON: u32 = 1 << 1;
    /// The connection was refused by an ICMP error, not a RST; `reason` holds the socket's
    /// errno (ECONNREFUSED, EHOSTUNREACH, ...).
    pub const ICMP_REJECT: u32 = 1 << 2;
    /// `cgroup_id` is the cgroup of the socket that sent the dropped packet.
    pub const SOCKET_CGROUP: u32 = 1 << 3;
    /// A drop on a kernel without drop reasons (before Linux 5.17): `reason` holds the low 32
    /// bits of the address of the kernel code that freed the packet (kernel and module text
    /// sit in the top 2 GiB, so the high half is all ones).
    pub const LOCATION: u32 = 1 << 4;
}

/// Address family values as the kernel reports them.
pub const AF_INET: u16 = 2;
/// See [`AF_INET`].
pub const AF_INET6: u16 = 10;

/// First field of every event in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Size in bytes of the whole event, header included.
    pub len: u32,
    /// `bpf_ktime_get_boot_ns()` when the event happened (CLOCK_BOOTTIME).
    pub boot_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 16);

/// What makes occurrences of a hot signal "the same flow" in the kernel: repeats are counted
/// in one entry. Ephemeral client ports are not part of the key (`sport` is 0 where it would
/// be one; the latest is in [`FlowStats::last_sport`]).
///
/// Addresses read the same for every kind: `saddr` sent the packet or SYN, `daddr` was its
/// destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// One of [`kind`].
    pub kind: u32,
    /// Kernel reason value or errno, see [`flow_flags`].
    pub reason: u32,
    /// cgroup v2 id of the process (connects) or socket (drops) involved, 0 when none.
    pub cgroup_id: u64,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// TCP flags of a dropped segment (SYN, ACK, FIN, RST bits only).
    pub tcp_flags: u8,
    /// Source port, 0 when ephemeral (host order). For ICMP: the type.
    pub sport: u16,
    /// Destination port (host order). For ICMP: the code.
    pub dport: u16,
    /// Interface the dropped packet was on, 0 when none.
    pub ifindex: u32,
    /// Bitset of [`flow_flags`].
    pub flags: u32,
    /// Source address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Destination address: IPv4 in the first 4 bytes, or IPv6.
    pub daddr: [u8; 16],
}
const _: () = assert!(size_of::<FlowKey>() == 64);

/// A flow's counts since it entered the current table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Occurrences counted in the table (the first one, reported through the ring buffer, is
    /// not counted here unless the ring buffer was full).
    pub count: u64,
    /// `bpf_ktime_get_boot_ns()` of the first and the latest occurrence.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Process that called connect(), with [`flow_flags::HAS_PROCESS`].
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
    /// Kind-specific sum: SYN retransmissions for [`kind::CONNECT_TIMEOUT`].
    pub extra: u32,
    /// The latest occurrence's source port (the key has 0 where it is ephemeral).
    pub last_sport: u16,
    pub _pad0: u16,
}
const _: () = assert!(size_of::<FlowStats>() == 56);

/// The flow a CPU counted last, per recording program, and its repeats since: a run of the same flow on one
/// CPU (a flood) is counted here, without the hash lookup and atomic add of the flow table;
/// the count moves to the table entry when the program records another flow, and the agent adds
/// what is left when it drains the table of the same generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRepeat {
    pub key: FlowKey,
    /// Repeats counted here and not yet in the table.
    pub count: u64,
    /// Boot time of the latest of them (to a jiffy).
    pub last_ns: u64,
    /// Their kind-specific sum (see [`FlowStats::extra`]).
    pub extra: u32,
    pub last_sport: u16,
    /// 1 when `key` has an entry in the flow table of this slot's generation.
    pub valid: u16,
}
const _: () = assert!(size_of::<FlowRepeat>() == 88);

/// A flow's first occurrence, sent through the ring buffer at once (detection stays immediate;
/// repeats are counted in the flow table and drained periodically).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    pub header: EventHeader,
    pub key: FlowKey,
    /// `count` is 1.
    pub stats: FlowStats,
}
const _: () = assert!(size_of::<FlowEvent>() == 136);

/// What the kernel side remembers between connect() and the answer to the SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingConnect {
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
    /// SYN retransmissions so far.
    pub syn_retransmits: u32,
    /// An error was reported on the socket while it waited (0: none; [`ERROR_UNKNOWN`]: one
    /// whose errno the woken application had already taken; else the errno).
    pub error: u32,
}

/// [`PendingConnect::error`]: an error was reported but its errno was already consumed.
pub const ERROR_UNKNOWN: u32 = u32::MAX;
const _: () = assert!(size_of::<PendingConnect>() == 40);

/// [`OomEvent`] fields the kernel could not read.
pub const UNKNOWN_U64: u64 = u64::MAX;
/// [`OomEvent::oom_group`] when unknown.
pub const UNKNOWN_U8: u8 = u8::MAX;

/// A process the OOM killer chose (raw tracepoint `mark_victim`), read from the victim's own
/// task in the kernel: the victim exits right after, and the program runs in the context of the
/// task that ran out of memory, which may be another process (or another container).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    pub header: EventHeader,
    /// cgroup v2 id of the victim (`task->cgroups->dfl_cgrp`), 0 when unreadable.
    pub cgroup_id: u64,
    /// cgroup v2 id of the victim's parent process: a parent outside the victim's cgroup makes
    /// the victim the container's first process. 0 when unreadable.
    pub parent_cgroup_id: u64,
    /// Pages charged to the victim's memory cgroup, [`UNKNOWN_U64`] when unreadable.
    pub memcg_usage_pages: u64,
    /// The tightest page limit of the victim's memory cgroup and its ancestors (at most
    /// [`OOM_LIMIT_LEVELS`] levels), [`UNKNOWN_U64`] when unreadable.
    pub memcg_limit_pages: u64,
    /// The victim's resident pages (file + anon + shmem), [`UNKNOWN_U64`] when unreadable.
    pub rss_pages: u64,
    /// Thread id and process id of the victim.
    pub pid: u32,
    pub tgid: u32,
    /// The tracepoint's uid argument (the victim's uid).
    pub uid: u32,
    pub oom_score_adj: i16,
    /// `mem_cgroup.oom_group` (v2 `memory.oom.group`): 0/1, [`UNKNOWN_U8`] when unreadable.
    pub oom_group: u8,
    pub _pad0: u8,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<OomEvent>() == 88);

/// Memory cgroup levels walked up for the limit that applies (container, pod, QoS, kubepods).
pub const OOM_LIMIT_LEVELS: usize = 5;

/// Member offsets for the OOM victim program (BTF), and enumerator values it needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomOffsets {
    /// `task_struct.{pid, tgid, comm, real_parent, cgroups, signal, mm}`.
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_real_parent: u32,
    pub task_cgroups: u32,
    pub task_signal: u32,
    pub task_mm: u32,
    /// `css_set.dfl_cgrp` (the cgroup2 cgroup) and `css_set.subsys` (array of css pointers).
    pub css_set_dfl_cgrp: u32,
    pub css_set_subsys: u32,
    /// `enum cgroup_subsys_id` value of the memory controller.
    pub memory_cgrp_id: u32,
    /// `mem_cgroup.memory` (a page_counter; the css is mem_cgroup's first member) and
    /// `mem_cgroup.oom_group`.
    pub memcg_memory: u32,
    pub memcg_oom_group: u32,
    /// `page_counter.{usage, max, parent}`.
    pub page_counter_usage: u32,
    pub page_counter_max: u32,
    pub page_counter_parent: u32,
    /// `signal_struct.oom_score_adj` (short).
    pub signal_oom_score_adj: u32,
    /// `mm_struct.rss_stat` (array of percpu_counter), `percpu_counter.count` (s64) and
    /// `sizeof(struct percpu_counter)`.
    pub mm_rss_stat: u32,
    pub percpu_counter_count: u32,
    pub percpu_counter_size: u32,
    /// Indices in rss_stat: MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES.
    pub rss_file: u32,
    pub rss_anon: u32,
    pub rss_shmem: u32,
}

/// Field offsets of a tracepoint record, read from tracefs `format` at load time.
/// `u32::MAX` marks a field this kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// Layout of `tcp:tcp_send_reset` on this kernel.
pub mod send_reset_layout {
    /// Tracepoint missing or layout not understood: the program does nothing.
    pub const UNSUPPORTED: u32 = 0;
    /// Since Linux 6.10: `saddr`/`daddr` are `struct sockaddr_in6`-sized buffers filled from the
    /// socket or, when there is none, from the packet.
    pub const SOCKADDR: u32 = 1;
}

/// `tcp:tcp_retransmit_skb` record offsets (tracefs `format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitOffsets {
    pub skaddr: u32,
    pub state: u32,
}

/// `skb:kfree_skb` record offsets (tracefs `format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KfreeSkbOffsets {
    pub skbaddr: u32,
    pub protocol: u32,
    pub reason: u32,
    /// This kernel's value of `SKB_DROP_REASON_NO_SOCKET` (BTF), [`ABSENT`] when unknown.
    pub no_socket: u32,
}

/// Member offsets of `struct sock` and what hangs off it (BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock.sk_err`: the errno a failed connect() ends with.
    pub sk_err: u32,
    /// `sock.sk_err_soft`: an ICMP error that arrived while the socket was busy (the
    /// application may give up before the kernel makes it `sk_err`).
    pub sk_err_soft: u32,
    /// `sock.__sk_common.skc_state` (u8): full sockets only have their cgroup read.
    pub state: u32,
    /// `sock.sk_cgrp_data.cgroup`, `cgroup.kn`, `kernfs_node.id`: the socket's cgroup2 id.
    pub cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// `sock.sk_protocol` (u16).
    pub protocol: u32,
    /// `sock.__sk_common.*`: family (u16), remote port (skc_dport, network order), IPv4
    /// addresses, IPv6 addresses; and `inet_sock.inet_sport` (network order; `struct sock` is
    /// the first member of `struct inet_sock`), which unlike skc_num survives the port's
    /// release when the socket closes.
    pub family: u32,
    pub sport: u32,
    pub dport: u32,
    pub rcv_saddr: u32,
    pub daddr: u32,
    pub v6_rcv_saddr: u32,
    pub v6_daddr: u32,
}

/// `tcp:tcp_send_reset` record offsets (tracefs `format`) and which layout this kernel has.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResetOffsets {
    /// One of [`send_reset_layout`].
    pub layout: u32,
    pub skbaddr: u32,
    pub skaddr: u32,
    pub reason: u32,
    pub saddr: u32,
    pub daddr: u32,
}

/// Member offsets of `struct sk_buff` and `struct net_device` (BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    pub data: u32,
    pub head: u32,
    pub network_header: u32,
    pub transport_header: u32,
    pub sk: u32,
    pub dev: u32,
    /// `net_device.ifindex`.
    pub dev_ifindex: u32,
    /// `sk_buff.protocol` (__be16, the ETH_P_* of the packet).
    pub protocol: u32,
}

/// The running kernel's layouts, one typed struct per hook family, handed to the programs as a
/// read-only global so the verifier sees them as constants. Tracepoint record offsets come from
/// tracefs `format` files; struct member offsets from /sys/kernel/btf/vmlinux.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub send_reset: SendResetOffsets,
    pub retransmit: RetransmitOffsets,
    pub kfree_skb: KfreeSkbOffsets,
    pub sock: SockOffsets,
    pub skb: SkbOffsets,
    pub oom: OomOffsets,
}
const _: () = assert!(size_of::<Offsets>() == 224);

impl Offsets {
    /// Every offset absent: the programs attach but do nothing until real offsets are set.
    pub const ABSENT: Self = Self {
        send_reset: SendResetOffsets {
            layout: send_reset_layout::UNSUPPORTED,
            skbaddr: ABSENT,
            skaddr: ABSENT,
            reason: ABSENT,
            saddr: ABSENT,
            daddr: ABSENT,
        },
        retransmit: RetransmitOffsets {
            skaddr: ABSENT,
            state: ABSENT,
        },
        kfree_skb: KfreeSkbOffsets {
            skbaddr: ABSENT,
            protocol: ABSENT,
            reason: ABSENT,
            no_socket: ABSENT,
        },
        sock: SockOffsets {
            sk_err: ABSENT,
            sk_err_soft: ABSENT,
            state: ABSENT,
            cgroup: ABSENT,
            cgroup_kn: ABSENT,
            kn_id: ABSENT,
            protocol: ABSENT,
            family: ABSENT,
            sport: ABSENT,
            dport: ABSENT,
            rcv_saddr: ABSENT,
            daddr: ABSENT,
            v6_rcv_saddr: ABSENT,
            v6_daddr: ABSENT,
        },
        skb: SkbOffsets {
            data: ABSENT,
            head: ABSENT,
            network_header: ABSENT,
            transport_header: ABSENT,
            sk: ABSENT,
            dev: ABSENT,
            dev_ifindex: ABSENT,
            protocol: ABSENT,
        },
        oom: OomOffsets {
            task_pid: ABSENT,
            task_tgid: ABSENT,
            task_comm: ABSENT,
            task_real_parent: ABSENT,
            task_cgroups: ABSENT,
            task_signal: ABSENT,
            task_mm: ABSENT,
            css_set_dfl_cgrp: ABSENT,
            css_set_subsys: ABSENT,
            memory_cgrp_id: ABSENT,
            memcg_memory: ABSENT,
            memcg_oom_group: ABSENT,
            page_counter_usage: ABSENT,
            page_counter_max: ABSENT,
            page_counter_parent: ABSENT,
            signal_oom_score_adj: ABSENT,
            mm_rss_stat: ABSENT,
            percpu_counter_count: ABSENT,
            percpu_counter_size: ABSENT,
            rss_file: ABSENT,
            rss_anon: ABSENT,
            rss_shmem: ABSENT,
        },
    };
}

/// TCP states as in include/net/tcp_states.h (part of the kernel ABI: the tracepoint's print
/// format names them with these values).
pub mod tcp_state {
    pub const SYN_SENT: i32 = 2;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const NEW_SYN_RECV: i32 = 12;
}

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Socket errnos a failed connect() ends with (asm-generic/errno.h; the same on every
/// architecture Kubernetes nodes run).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EACCES: u32 = 13;
    pub const ENETUNREACH: u32 = 101;
    pub const ETIMEDOUT: u32 = 110;
    pub const ECONNREFUSED: u32 = 111;
    pub const EHOSTUNREACH: u32 = 113;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data of integers and byte arrays with explicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::DnsTiming {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsHeld {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsAnswered {}
    // SAFETY: plain #[repr(C)] data of integers and byte arrays with explicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingConnect {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowRepeat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsRepeatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsRepeats {}
}

/// The ports whose traffic is DNS (host order), set by the loader: packed from the first
/// entry, every unused entry after them 0 (the programs stop at the first 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsPorts {
    pub ports: [u16; DNS_PORTS_MAX],
}
const _: () = assert!(size_of::<DnsPorts>() == 16);

impl DnsPorts {
    /// Nothing configured: the programs capture nothing until the loader sets the ports.
    pub const NONE: Self = Self {
        ports: [0; DNS_PORTS_MAX],
    };
}

/// Flags in [`DnsEvent::flags`].
pub mod dns_flags {
    /// The packet was leaving the socket (cgroup_skb egress); otherwise arriving.
    pub const EGRESS: u8 = 1 << 0;
    /// A query the kernel held while waiting for its answer: the record is a
    /// [`super::DnsHeld`], the event followed by what a server socket of this host did with it.
    pub const HELD: u8 = 1 << 1;
}

/// A DNS packet seen at a socket: addresses, the socket's cgroup, and a bounded prefix of the
/// payload (`captured` of `wire_len` bytes; TCP payloads start with the 2-byte length prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    /// kind [`kind::DNS`].
    pub header: EventHeader,
    /// cgroup v2 id of the socket that sent or received the packet.
    pub cgroup_id: u64,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// IP protocol number (TCP or UDP).
    pub protocol: u8,
    /// [`dns_flags`].
    pub flags: u8,
    /// Host order.
    pub sport: u16,
    pub dport: u16,
    /// Payload length on the wire (UDP: datagram payload; TCP: segment payload).
    pub wire_len: u32,
    /// Bytes of `payload` that are valid (at most [`DNS_PAYLOAD_CAP`]).
    pub captured: u16,
    pub _pad0: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub payload: [u8; DNS_PAYLOAD_CAP],
}
const _: () = assert!(size_of::<DnsEvent>() == 360);

/// DNS timing thresholds, set by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsTiming {
    /// An answer at least this late (ns) is `slow`: it goes to the agent.
    pub slow_ns: u64,
    /// A cgroup's good answers go to the agent for this long (ns) after one of its lookups
    /// failed (the rest of a search-path walk).
    pub recent_ns: u64,
}
const _: () = assert!(size_of::<DnsTiming>() == 16);

impl DnsTiming {
    /// Placeholder until the loader sets it: everything is slow, so everything goes up.
    pub const UNSET: Self = Self {
        slow_ns: 0,
        recent_ns: 0,
    };
}

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

/// The multiplier of [`dns_question_hash`] (2^64 divided by the golden ratio, odd).
pub const DNS_HASH_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
/// The starting value of [`dns_question_hash`].
pub const DNS_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// One step of [`dns_question_hash`]: the word mixed in by a multiplication (which carries
/// each bit to the higher ones) and a shift back down (so a difference in a word's high bytes
/// reaches every bit after the next step, not only the top ones).
#[inline(always)]
pub const fn dns_hash_step(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(DNS_HASH_MULTIPLIER);
    x ^ (x >> 32)
}

/// The identity of a query as the kernel and the agent both compute it: its payload as sent
/// (`payload`: the captured bytes, at most [`DNS_PAYLOAD_CAP`]) read as little-endian 64-bit
/// words, the last one zero-padded, with the id (bytes 0 and 1) left out; then the server's
/// address (16 bytes, IPv4 in the first 4), its port and the family. The kernel computes the
/// same steps over the held query in agent-ebpf/src/dns.rs.
pub fn dns_question_hash(payload: &[u8], server: &[u8; 16], server_port: u16, family: u16) -> u64 {
    let mut h = DNS_HASH_SEED;
    let payload = payload.get(..DNS_PAYLOAD_CAP).unwrap_or(payload);
    for (i, chunk) in payload.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        for (to, from) in word.iter_mut().zip(chunk) {
            *to = *from;
        }
        let mut w = u64::from_le_bytes(word);
        if i == 0 {
            w &= !0xffff;
        }
        h = dns_hash_step(h, w);
    }
    let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
    for (i, b) in server.iter().enumerate() {
        if let Some(to) = if i < 8 {
            lo.get_mut(i)
        } else {
            hi.get_mut(i - 8)
        } {
            *to = *b;
        }
    }
    h = dns_hash_step(h, u64::from_le_bytes(lo));
    h = dns_hash_step(h, u64::from_le_bytes(hi));
    dns_hash_step(
        h,
        u64::from(server_port) | u64::from(family) << 16 | (payload.len() as u64) << 32,
    )
}

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
