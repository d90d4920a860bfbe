//! DNS packets at every socket of the node: cgroup_skb programs on the cgroup2 root see each
//! packet a socket sends (egress) or receives (ingress), with the socket's cgroup, in every
//! network namespace (pods and hostNetwork pods alike), after the pod's own netfilter on the
//! way out and before the application reads it on the way in.
//!
//! Nothing is parsed beyond "IPv4/IPv6, UDP/TCP, one of the DNS ports, payload present": the
//! first [`DNS_PAYLOAD_CAP`] bytes of the payload are copied into [`DNS_RING`] and userspace
//! parses them with a DNS library. Every packet is allowed through (return 1): the programs
//! observe, they never filter.
//!
//! Kernel interfaces: cgroup_skb (data starts at the IP header; direct reads of the linear
//! part), bpf_skb_load_bytes,
//! bpf_skb_cgroup_id (the socket's cgroup v2 id), bpf_ringbuf_reserve.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use triage_agent_common::{
    AF_INET, AF_INET6, DNS_PAYLOAD_CAP, DNS_RING_BYTES, DnsEvent, DnsPorts, EventHeader,
    IPPROTO_TCP, IPPROTO_UDP, LOST_DNS_RESERVE, dns_flags, kind,
};

use crate::maps::{DNS_RING, count_loss};

/// Ports to capture, overwritten by the loader before load (frozen: the verifier sees
/// constants).
#[unsafe(no_mangle)]
static DNS_PORTS: DnsPorts = DnsPorts::NONE;

/// Pending bytes in the ring from which a submit wakes the reader (a quarter of the ring).
const WAKEUP_BYTES: u64 = DNS_RING_BYTES as u64 / 4;

/// Smallest UDP payload worth copying: a DNS header.
const DNS_HEADER: u32 = 12;

#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    capture(&ctx, dns_flags::EGRESS);
    1
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    capture(&ctx, 0);
    1
}

#[inline(always)]
fn is_dns_port(port: u16) -> bool {
    // SAFETY: a plain static of integers that lives for the whole program.
    let ports = unsafe { core::ptr::read_volatile(&DNS_PORTS) };
    let mut found = false;
    for p in ports.ports {
        found |= p != 0 && p == port;
    }
    found
}

/// Addresses, ports and where the payload starts, from the headers.
struct Packet {
    family: u16,
    protocol: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    payload_off: u32,
    payload_len: u32,
}

#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: buf is N writable bytes; the helper reads at most N from the packet.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset,
            buf.as_mut_ptr().cast(),
            N as u32,
        )
    };
    (ret == 0).then_some(buf)
}

/// The first `N` bytes of the packet (from the IP header): read in place when the linear part
/// holds them (the usual case: no helper call), else copied with `bpf_skb_load_bytes`.
#[inline(always)]
fn head<const N: usize>(ctx: &SkBuffContext) -> Option<[u8; N]> {
    // SAFETY: reads the context's data pointers, which the verifier gives cgroup_skb programs.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if data + N <= end {
        // SAFETY: [data, data + N) is inside the packet's linear part, checked just above.
        Some(unsafe { core::ptr::read_unaligned(data as *const [u8; N]) })
    } else {
        load(ctx, 0)
    }
}

/// Addresses, ports and payload of a packet to or from a DNS port; `None` for any other
/// packet, decided from one read of the headers in the common case (IPv4 without options,
/// IPv6 without extension headers), since most packets are not DNS.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    let mut p = Packet {
        family: 0,
        protocol: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        payload_off: 0,
        payload_len: 0,
    };
    // IPv4 header and the first 8 transport bytes (both ports; the UDP length). Every IPv4
    // packet with ports is at least this long; an IPv6 one is longer.
    let v4: [u8; 28] = head(ctx)?;
    // (transport header offset, its first 8 bytes)
    let (l4, first8) = match v4[0] >> 4 {
        4 => {
            // Later fragments carry no transport header.
            if u16::from_be_bytes([v4[6], v4[7]]) & 0x1fff != 0 {
                return None;
            }
            p.family = AF_INET;
            p.protocol = v4[9];
            p.saddr[..4].copy_from_slice(&v4[12..16]);
            p.daddr[..4].copy_from_slice(&v4[16..20]);
            let l4 = u32::from(v4[0] & 0x0f) * 4;
            if l4 < 20 {
                return None;
            }
            let mut first8 = [0u8; 8];
            if l4 == 20 {
                first8.copy_from_slice(&v4[20..28]);
            } else {
                first8 = load(ctx, l4)?;
            }
            (l4, first8)
        }
        6 => {
            let ip: [u8; 48] = head(ctx)?;
            // Extension headers are not followed: DNS is sent without them.
            p.family = AF_INET6;
            p.protocol = ip[6];
            p.saddr.copy_from_slice(&ip[8..24]);
            p.daddr.copy_from_slice(&ip[24..40]);
            let mut first8 = [0u8; 8];
            first8.copy_from_slice(&ip[40..48]);
            (40, first8)
        }
        _ => return None,
    };
    if u16::from(p.protocol) != IPPROTO_TCP && p.protocol != IPPROTO_UDP {
        return None;
    }
    p.sport = u16::from_be_bytes([first8[0], first8[1]]);
    p.dport = u16::from_be_bytes([first8[2], first8[3]]);
    if !is_dns_port(p.dport) && !is_dns_port(p.sport) {
        return None;
    }
    if u16::from(p.protocol) == IPPROTO_TCP {
        let tcp: [u8; 14] = load(ctx, l4)?;
        p.payload_off = l4 + u32::from(tcp[12] >> 4) * 4;
        p.payload_len = ctx.len().checked_sub(p.payload_off)?;
        if p.payload_len == 0 {
            return None;
        }
    } else {
        p.payload_off = l4 + 8;
        p.payload_len = u32::from(u16::from_be_bytes([first8[4], first8[5]])).checked_sub(8)?;
        if p.payload_len < DNS_HEADER {
            return None;
        }
    }
    Some(p)
}

/// Whether the packet's socket is connected to a peer and neither end uses a DNS port: then the
/// packet is not DNS, known from the socket alone (no packet read). Bulk traffic of connected
/// sockets (TCP streams, connected UDP) leaves here. Unconnected sockets (remote port 0: a DNS
/// server, a resolver using sendto) go on to the packet's own ports.
#[inline(always)]
fn connected_elsewhere(ctx: &SkBuffContext) -> bool {
    // __sk_buff.remote_port holds the port in network order, in the upper 16 bits on
    // little-endian kernels (in the lower ones on others): take the half that is set.
    let r = ctx.skb.remote_port();
    let raw = if r & 0xffff == 0 {
        (r >> 16) as u16
    } else {
        r as u16
    };
    let remote = u16::from_be(raw);
    remote != 0 && !is_dns_port(remote) && !is_dns_port(ctx.skb.local_port() as u16)
}

#[inline(always)]
fn capture(ctx: &SkBuffContext, flags: u8) {
    if connected_elsewhere(ctx) {
        return;
    }
    let Some(p) = parse(ctx) else { return };
    let Some(mut entry) = DNS_RING.reserve::<DnsEvent>(0) else {
        count_loss(LOST_DNS_RESERVE);
        return;
    };
    let event = entry.as_mut_ptr();
    // The copy's size, held in 64 bits: the verifier must see it bounded to 1..=CAP at the
    // helper call, and a 32-bit value's zero-extension would cut the link between the
    // register it checks and the one passed. Read back opaquely so the compiler cannot drop
    // the check it knows to hold (parse returns none for an empty payload).
    let n: u64 = u64::from(p.payload_len).min(DNS_PAYLOAD_CAP as u64);
    // SAFETY: reads a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    // SAFETY: the reserved record is a DnsEvent's worth of writable bytes; fields are written
    // in place (the payload is too big for the BPF stack) before submit.
    unsafe {
        let payload = (*event).payload.as_mut_ptr();
        let copied = n > 0
            && n <= DNS_PAYLOAD_CAP as u64
            && bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                p.payload_off,
                payload.cast(),
                n as u32,
            ) == 0;
        (*event).header = EventHeader {
            kind: kind::DNS,
            len: size_of::<DnsEvent>() as u32,
            boot_ns: bpf_ktime_get_boot_ns(),
        };
        (*event).cgroup_id = bpf_skb_cgroup_id(ctx.skb.skb);
        (*event).family = p.family;
        (*event).protocol = p.protocol;
        (*event).flags = flags;
        (*event).sport = p.sport;
        (*event).dport = p.dport;
        (*event).wire_len = p.payload_len;
        (*event).captured = if copied { n as u16 } else { 0 };
        (*event)._pad0 = 0;
        (*event).saddr = p.saddr;
        (*event).daddr = p.daddr;
    }
    // Wake the reader only once a batch is waiting: it also drains on a short timer, so a
    // wakeup per DNS packet (the costliest part of delivery) is not needed.
    let flags = if DNS_RING.query(BPF_RB_AVAIL_DATA.into()) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags.into());
}
