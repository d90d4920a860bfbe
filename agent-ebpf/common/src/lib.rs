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
/// Name of the read-only global carrying the running kernel's layouts ([`Offsets`]).
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Index in [`LOSS_MAP`]: an event was dropped because the ring buffer was full.
pub const LOST_RESERVE: u32 = 0;
/// Index in [`LOSS_MAP`]: a connect() could not be remembered (the table was full).
pub const LOST_CONNECT_TABLE: u32 = 1;
/// Index in [`LOSS_MAP`]: an event was seen but a field of its record could not be read.
pub const LOST_FIELD_READ: u32 = 2;
/// Number of slots in [`LOSS_MAP`].
pub const LOSS_SLOTS: u32 = 3;

/// Size of the ring buffer in bytes (a power of two multiple of the page size). 256 KiB holds
/// about 2,000 connection events: enough for bursts while userspace is descheduled.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Entries in [`CONNECTS_MAP`]: concurrent connect() calls still waiting for SYN-ACK or RST.
pub const CONNECTS_ENTRIES: u32 = 16 * 1024;

/// Length of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Event kinds. Ids are fixed forever and never reused.
pub mod kind {
    /// This host's connect() was answered with RST while in SYN_SENT: [`super::ConnEvent`].
    pub const CONNECT_REFUSED: u32 = 1;
    /// This host answered a SYN with RST because no socket listens: [`super::ConnEvent`].
    pub const SYN_REFUSED: u32 = 2;
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

/// Flags in [`ConnEvent::flags`].
pub mod conn_flags {
    /// `pid`, `tgid`, `comm` and `cgroup_id` describe the process that called connect().
    pub const HAS_PROCESS: u32 = 1 << 0;
    /// `reason` holds an `enum sk_rst_reason` value of the running kernel.
    pub const HAS_REASON: u32 = 1 << 1;
}

/// A refused TCP connection, seen from either side.
///
/// `src` is always the side that sent the SYN and `dst` the side that answered with RST, so
/// both kinds read the same way: "src tried dst and was refused".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    pub header: EventHeader,
    /// cgroup v2 id of the connecting task (the directory inode in the cgroup2 hierarchy).
    pub cgroup_id: u64,
    /// Kernel socket cookie, 0 when unknown.
    pub sock_cookie: u64,
    /// Thread id of the connecting task.
    pub pid: u32,
    /// Process id of the connecting task.
    pub tgid: u32,
    /// Bitset of [`conn_flags`].
    pub flags: u32,
    /// Raw `enum sk_rst_reason` value; its name comes from the running kernel's BTF.
    pub reason: u32,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    pub _pad0: u16,
    /// Source address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Destination address: IPv4 in the first 4 bytes, or IPv6.
    pub daddr: [u8; 16],
    /// Command name of the connecting task, NUL padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<ConnEvent>() == 104);

/// What the kernel side remembers between connect() and the answer to the SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingConnect {
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<PendingConnect>() == 32);

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

/// `sock:inet_sock_set_state` record offsets (tracefs `format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetStateOffsets {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub protocol: u32,
}

/// `tcp:tcp_receive_reset` record offsets (tracefs `format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveResetOffsets {
    pub skaddr: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub sock_cookie: u32,
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

/// Member offsets of `struct sk_buff` (BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    pub data: u32,
}

/// The running kernel's layouts, one typed struct per hook family, handed to the programs as a
/// read-only global so the verifier sees them as constants. Tracepoint record offsets come from
/// tracefs `format` files; struct member offsets from /sys/kernel/btf/vmlinux.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub set_state: SetStateOffsets,
    pub receive_reset: ReceiveResetOffsets,
    pub send_reset: SendResetOffsets,
    pub skb: SkbOffsets,
}
const _: () = assert!(size_of::<Offsets>() == 80);

impl Offsets {
    /// Every offset absent: the programs attach but do nothing until real offsets are set.
    pub const ABSENT: Self = Self {
        set_state: SetStateOffsets {
            skaddr: ABSENT,
            oldstate: ABSENT,
            newstate: ABSENT,
            protocol: ABSENT,
        },
        receive_reset: ReceiveResetOffsets {
            skaddr: ABSENT,
            sport: ABSENT,
            dport: ABSENT,
            family: ABSENT,
            saddr: ABSENT,
            daddr: ABSENT,
            saddr_v6: ABSENT,
            daddr_v6: ABSENT,
            sock_cookie: ABSENT,
        },
        send_reset: SendResetOffsets {
            layout: send_reset_layout::UNSUPPORTED,
            skbaddr: ABSENT,
            skaddr: ABSENT,
            reason: ABSENT,
            saddr: ABSENT,
            daddr: ABSENT,
        },
        skb: SkbOffsets { data: ABSENT },
    };
}

/// TCP states as in include/net/tcp_states.h (part of the kernel ABI: the tracepoint's print
/// format names them with these values).
pub mod tcp_state {
    pub const SYN_SENT: i32 = 2;
    pub const CLOSE: i32 = 7;
}

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data of integers and byte arrays with explicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingConnect {}
}
