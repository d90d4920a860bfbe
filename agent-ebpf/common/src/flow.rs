//! Flows of the hot signals (refused and timed-out connections, dropped packets): the key
//! that makes occurrences the same flow, its counts in the flow tables, a CPU's run of repeats,
//! and the first occurrence sent through the ring buffer.

use core::mem::size_of;

use crate::{event::EventHeader, kernel::COMM_LEN};
// Items the documentation links to.
#[cfg(doc)]
use crate::{AF_INET, AF_INET6, kind};

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
    /// `ingress_netns` holds the network namespace the packet came from.
    pub const INGRESS_NETNS: u32 = 1 << 5;
}

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
    /// A dropped packet with no local socket that entered through the node's end of a veth
    /// pair: the inode number of the network namespace at the pair's other end, where the packet
    /// was really sent from (whatever its source address says; see
    /// [`flow_flags::INGRESS_NETNS`]). 0 otherwise.
    pub ingress_netns: u32,
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
