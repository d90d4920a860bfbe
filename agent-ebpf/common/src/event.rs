//! What every record in the ring buffers starts with: the common header and the event kinds.

use core::mem::size_of;

// Items the documentation links to.
#[cfg(doc)]
use crate::FlowKey;

/// Event kinds (in [`FlowKey::kind`] and [`EventHeader::kind`]). Ids are fixed forever and never
/// reused.
pub mod kind {
    /// This host's connect() was refused while in SYN_SENT: by a RST, or (flag
    /// [`crate::flow_flags::ICMP_REJECT`]) by an ICMP error.
    pub const CONNECT_REFUSED: u32 = 1;
    /// This host answered a SYN with RST because no socket listens.
    pub const SYN_REFUSED: u32 = 2;
    /// The kernel dropped a packet for a reason in [`crate::DROP_REASONS_MAP`].
    pub const PACKET_DROP: u32 = 3;
    /// This host's connect() ended in SYN_SENT without any answer.
    pub const CONNECT_TIMEOUT: u32 = 4;
    /// A DNS packet (query or answer) a socket on this host sent or received ([`crate::DnsEvent`]).
    pub const DNS: u32 = 16;
    /// The OOM killer chose a victim ([`crate::OomEvent`]).
    pub const OOM_VICTIM: u32 = 5;
}

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
