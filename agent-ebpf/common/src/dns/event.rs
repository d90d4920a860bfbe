//! DNS packets copied for the agent: the record, its flags, and the settings the loader hands
//! the capture programs (the DNS ports, the timing thresholds).

use core::mem::size_of;

use crate::event::EventHeader;
// Items the documentation links to.
#[cfg(doc)]
use crate::{AF_INET, AF_INET6, kind};

/// Bytes of a DNS payload copied into a [`DnsEvent`]: the 12-byte header and the question of
/// any legal name (at most 255 bytes on the wire, plus type and class), also behind TCP's
/// 2-byte length prefix (12 + 255 + 4 + 2 = 273, rounded up to a multiple of 8). Answers are
/// not needed: the outcome is the header's rcode.
pub const DNS_PAYLOAD_CAP: usize = 288;
/// How many DNS ports can be configured.
pub const DNS_PORTS_MAX: usize = 8;

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
    /// [`crate::DnsHeld`], the event followed by what a server socket of this host did with it.
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
