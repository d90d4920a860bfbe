//! Each cgroup's bounded share of the kernel's shared tables and rings, and what a cgroup lost
//! when its share was used up (or the table was full), so that one pod cannot blind the agent
//! to every other pod's failures, and what it loses is counted against it.
//!
//! - The connect table ([`CONNECT_SHARES_MAP`]): attempts in flight per socket cgroup, counted
//!   up on insert and down when the attempt leaves; at [`CONNECTS_PER_CGROUP`] a cgroup's next
//!   attempt is not remembered.
//! - The flow tables, the event ring and the DNS ring ([`SHARES_MAP`]): entries or records per
//!   [`ShareKey`] within a window ([`share_class`]); the rings only once they are half full. Past the share a new flow is sent through
//!   the ring instead of entering the table, a flow's first occurrence waits for the table's
//!   drain instead of the ring (neither is lost), and a DNS packet is not copied (lost).
//!
//! Both maps are LRU hashes: a count the kernel forgets starts again from zero, which only
//! loosens a share. What each cgroup lost goes to [`CGROUP_LOSSES_MAPS`], switched with the flow
//! tables' generation so the agent reads each count exactly once.

use core::mem::size_of;

use crate::{
    CONNECTS_ENTRIES, DNS_RING_BYTES, DnsEvent, EVENTS_RING_BYTES, FLOWS_ENTRIES, FlowEvent,
};

/// Name of the LRU hash of connect attempts in flight per socket cgroup (`u64` -> `i64`).
pub const CONNECT_SHARES_MAP: &str = "CONNECT_SHARES";
/// Name of the LRU hash of what each [`ShareKey`] used in its current window ([`Share`]).
pub const SHARES_MAP: &str = "SHARES";
/// Names of the two tables of what each cgroup lost (`u64` -> [`CgroupLosses`]), switched by
/// the flow tables' generation (`GENERATION_MAP`).
pub const CGROUP_LOSSES_MAPS: [&str; 2] = ["CGROUP_LOSSES0", "CGROUP_LOSSES1"];

/// Entries in [`CONNECT_SHARES_MAP`] and in [`SHARES_MAP`]: cgroups with recent activity.
pub const SHARE_ENTRIES: u32 = 8 * 1024;
/// Entries in each of [`CGROUP_LOSSES_MAPS`]: cgroups that lost something in one drain
/// interval (past that, a loss is counted node-wide only).
pub const CGROUP_LOSSES_ENTRIES: u32 = 4 * 1024;

/// Connect attempts one cgroup may have in the connect table at once: an eighth of it.
pub const CONNECTS_PER_CGROUP: i64 = CONNECTS_ENTRIES as i64 / 8;

/// The shares and their limits.
pub mod share_class {
    use super::*;

    /// New entries in one generation of the flow table (one drain interval, 500 ms; counted per
    /// generation, so a late drain cannot let a share grow): an eighth of the table per cgroup.
    pub const FLOWS: u32 = 0;
    /// Flow first occurrences through the event ring per window, once it is half full (the
    /// reader is behind: it is woken by each record and drains at once, so the ring fills only
    /// while it is descheduled): a 32nd of the records it holds per [`WINDOW_NS`], so one
    /// cgroup takes the other half only if the reader stalls for 1.6 s. A first occurrence past
    /// the share waits in the flow table for the next drain; lost only when the table did not
    /// take it either.
    pub const EVENTS: u32 = 1;
    /// DNS packets copied through the DNS ring per window, once it is half full: a 32nd of the
    /// records it holds. Below half every packet goes up, so a busy pod's lookups are counted
    /// exactly while the reader keeps up.
    pub const DNS: u32 = 2;

    /// Added to a class for a key that is a network namespace (the inode number a dropped
    /// packet with no socket came from, see `FlowKey::ingress_netns`), not a cgroup: such a
    /// packet is its sender's, whose share it uses.
    pub const NETNS: u32 = 0x100;

    pub const FLOWS_LIMIT: u32 = FLOWS_ENTRIES / 8;
    pub const EVENTS_LIMIT: u32 = EVENTS_RING_BYTES / size_of::<FlowEvent>() as u32 / 32;
    pub const DNS_LIMIT: u32 = DNS_RING_BYTES / size_of::<DnsEvent>() as u32 / 32;
    /// The window of the ring shares.
    pub const WINDOW_NS: u64 = 100_000_000;
    /// The flows with no local socket (peers' packets: refused SYNs, drops on the node's
    /// bridge, when it did not come through a pod's veth) share one key (id 0), with twice a
    /// cgroup's limit: a quarter of each generation, and eight times a cgroup's share of the
    /// event ring. A pod's own first occurrence that a full ring cannot take still waits in the
    /// table, under the pod's own share, for the next drain.
    pub const PEER_FLOWS_LIMIT: u32 = FLOWS_ENTRIES / 4;
    /// The peers' share of the event ring once it is half full: a quarter of it per window.
    pub const PEER_EVENTS_LIMIT: u32 = EVENTS_LIMIT * 8;
}

/// Whose share a flow, event or DNS packet uses: a socket cgroup's (`id` its cgroup id), or,
/// for a flow with no local socket (a peer's packet: a refused SYN, a drop on the node's
/// bridge), the one share of all such flows (`id` 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShareKey {
    pub id: u64,
    /// A [`share_class`].
    pub class: u32,
    pub _pad0: u32,
}
const _: () = assert!(size_of::<ShareKey>() == 16);

/// What a key used in its window: the window's start (boot ns for the rings, the generation word
/// for the flow table) and the count since.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Share {
    pub window_start: u64,
    pub used: u32,
    pub _pad0: u32,
}
const _: () = assert!(size_of::<Share>() == 16);

/// What one cgroup lost in a drain interval, each counted in its unit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLosses {
    /// connect() attempts not remembered: their refusal or timeout cannot be seen.
    pub connects: u64,
    /// Flow occurrences (refusals, timeouts, drops) neither counted in the flow table nor
    /// sent through the event ring.
    pub occurrences: u64,
    /// DNS packets not copied to the agent.
    pub dns_packets: u64,
}
const _: () = assert!(size_of::<CgroupLosses>() == 24);

/// Field indexes of [`CgroupLosses`] for the programs' counting helper.
pub mod cgroup_loss {
    pub const CONNECTS: u32 = 0;
    pub const OCCURRENCES: u32 = 1;
    pub const DNS_PACKETS: u32 = 2;
}
