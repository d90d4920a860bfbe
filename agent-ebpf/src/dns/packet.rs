//! A packet's headers, read in the kernel: whether it is DNS at all (decided cheaply first, since
//! most packets are not), and for DNS its addresses, ports, where its payload starts, and for UDP
//! the id and flags word at the start of the DNS header.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::SkBuffContext};
use triage_agent_common::{AF_INET, AF_INET6, DnsKey, DnsPorts, IPPROTO_TCP, IPPROTO_UDP};

// Items the documentation links to.
#[cfg(doc)]
use crate::maps::DNS_HELD;

/// Ports to capture, overwritten by the loader before load (frozen: the verifier sees
/// constants).
#[unsafe(no_mangle)]
static DNS_PORTS: DnsPorts = DnsPorts::NONE;

/// Header flag bits (the second 16-bit word of a DNS header, host order).
pub(super) const QR: u16 = 0x8000;

pub(super) const TC: u16 = 0x0200;

pub(super) const RCODE: u16 = 0x000f;

/// Smallest UDP payload worth copying: a DNS header.
const DNS_HEADER: u32 = 12;

/// Whether `port` is one of the configured DNS ports. The loader packs them from the first
/// entry, so the first unused entry (0) ends the list; the values are constants to the
/// verifier (a frozen global), which drops the compares past the last port configured: with
/// the default (53 alone) this is one compare.
#[inline(always)]
pub(super) fn is_dns_port(port: u16) -> bool {
    // SAFETY: a plain static of integers that lives for the whole program.
    let ports = unsafe { core::ptr::read_volatile(&DNS_PORTS) };
    for p in ports.ports {
        if p == 0 {
            return false;
        }
        if p == port {
            return true;
        }
    }
    false
}

/// Addresses, ports and where the payload starts, from the headers.
pub(super) struct Packet {
    pub(super) family: u16,
    pub(super) protocol: u8,
    pub(super) saddr: [u8; 16],
    pub(super) daddr: [u8; 16],
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) payload_off: u32,
    pub(super) payload_len: u32,
    /// UDP: the DNS id (as on the wire) and flags word (host order) from the payload's start.
    pub(super) id: u16,
    pub(super) dns_flags: u16,
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

/// Which end of a packet is the DNS client.
#[derive(Clone, Copy)]
pub(super) enum Client {
    /// A query on its way to a server.
    Source,
    /// An answer on its way back.
    Destination,
}

impl Packet {
    /// The key its lookup is held under in [`DNS_HELD`]: the client's address and port and the
    /// id, which the client and a server on this host both see.
    #[inline(always)]
    pub(super) fn key(&self, client: Client) -> DnsKey {
        let (addr, port) = match client {
            Client::Source => (self.saddr, self.sport),
            Client::Destination => (self.daddr, self.dport),
        };
        DnsKey {
            client: addr,
            client_port: port,
            id: self.id,
            family: self.family,
            _pad0: 0,
        }
    }
}

/// Addresses, ports and payload of a packet to or from a DNS port; `None` for any other
/// packet, decided from one read of the headers in the common case (IPv4 without options,
/// IPv6 without extension headers), since most packets are not DNS.
#[inline(always)]
pub(super) fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    let mut p = Packet {
        family: 0,
        protocol: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        payload_off: 0,
        payload_len: 0,
        id: 0,
        dns_flags: 0,
    };
    // IPv4 header, the first 8 transport bytes (both ports; the UDP length) and the first 4
    // of a UDP payload (DNS id and flags). A packet shorter than this carries no DNS header.
    let v4: [u8; 32] = head(ctx)?;
    // (transport header offset, its first 8 bytes, the 4 bytes after them)
    let (l4, first8, after8) = match v4[0] >> 4 {
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
            let mut first12 = [0u8; 12];
            if l4 == 20 {
                first12.copy_from_slice(&v4[20..32]);
            } else {
                first12 = load(ctx, l4)?;
            }
            let (mut first8, mut after8) = ([0u8; 8], [0u8; 4]);
            first8.copy_from_slice(&first12[..8]);
            after8.copy_from_slice(&first12[8..]);
            (l4, first8, after8)
        }
        6 => {
            let ip: [u8; 52] = head(ctx)?;
            // Extension headers are not followed: DNS is sent without them.
            p.family = AF_INET6;
            p.protocol = ip[6];
            p.saddr.copy_from_slice(&ip[8..24]);
            p.daddr.copy_from_slice(&ip[24..40]);
            let (mut first8, mut after8) = ([0u8; 8], [0u8; 4]);
            first8.copy_from_slice(&ip[40..48]);
            after8.copy_from_slice(&ip[48..52]);
            (40, first8, after8)
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
        p.id = u16::from_ne_bytes([after8[0], after8[1]]);
        p.dns_flags = u16::from_be_bytes([after8[2], after8[3]]);
    }
    Some(p)
}

/// Whether the packet's socket is connected to a peer and neither end uses a DNS port: then the
/// packet is not DNS, known from the socket alone (no packet read). Bulk traffic of connected
/// sockets (TCP streams, connected UDP) leaves here. Unconnected sockets (remote port 0: a DNS
/// server, a resolver using sendto) go on to the packet's own ports.
#[inline(always)]
pub(super) fn connected_elsewhere(ctx: &SkBuffContext) -> bool {
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

/// Whether the packet is certainly not DNS, from three plain loads of its linear part: the IP
/// version and header length, the protocol, and both ports (for IPv4 without options and IPv6
/// without extension headers: the common case). Anything it cannot decide this cheaply goes to
/// [`parse`]. Unconnected sockets' bulk traffic (a UDP flood sent with sendto) leaves here,
/// before the full parse builds anything.
#[inline(always)]
pub(super) fn plainly_not_dns(ctx: &SkBuffContext) -> bool {
    // SAFETY: reads the context's data pointers, which the verifier gives cgroup_skb programs.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    // (protocol offset, transport offset) by the first byte; the ports end 4 bytes after the
    // transport offset.
    if data + 24 > end {
        return false;
    }
    // SAFETY: the first byte, inside the linear part (checked just above).
    let (protocol_at, ports_at) = match unsafe { *(data as *const u8) } {
        0x45 => (9, 20),
        b if b >> 4 == 6 && data + 44 <= end => (6, 40),
        _ => return false,
    };
    // SAFETY: both inside the linear part: the checks above cover ports_at + 4.
    let (protocol, ports) = unsafe {
        (
            *((data + protocol_at) as *const u8),
            core::ptr::read_unaligned((data + ports_at) as *const u32),
        )
    };
    if protocol != IPPROTO_UDP && u16::from(protocol) != IPPROTO_TCP {
        return true;
    }
    // Both ports in network order: source first.
    let bytes = ports.to_ne_bytes();
    let sport = u16::from_be_bytes([bytes[0], bytes[1]]);
    let dport = u16::from_be_bytes([bytes[2], bytes[3]]);
    !is_dns_port(sport) && !is_dns_port(dport)
}
