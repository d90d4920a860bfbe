//! Packets the kernel drops, with its reason, counted per flow in the kernel.
//!
//! `skb:kfree_skb` fires for every freed packet that was dropped rather than consumed; only
//! reasons the agent asked for (the `DROP_REASONS` array, filled from the running kernel's BTF
//! names) are looked at. The IP and transport headers are read from the packet the kernel
//! already has (`skb->head + skb->network_header / transport_header`); nothing is parsed beyond
//! addresses, ports, TCP flags and ICMP type/code.
//!
//! TCP drops with reason NO_SOCKET are skipped: the kernel answers those SYNs with a RST, and
//! the refusal probes report them as refused connections (with the same counts).
//!
//! Kernel interfaces:
//! - raw tracepoint kfree_skb: arguments (skb, location, reason, ...); the tracefs format of
//!   skb:kfree_skb tells whether this kernel has the reason (Linux 5.17+; before, the location
//!   argument is recorded in its place, see `flow_flags::LOCATION`)
//! - struct sk_buff.protocol (__be16 ETH_P_*)
//! - struct sk_buff: head (ptr), network_header / transport_header (u16 offsets from head,
//!   0xffff when unset), sk (ptr)
//! - struct sock: __sk_common.skc_state (u8), sk_cgrp_data.cgroup -> cgroup.kn -> kernfs_node.id
//!   (the sending socket's cgroup2 id, read only for full sockets)
//! - with no socket, where the packet came from: sk_buff.skb_iif and dev; net_device.ifindex,
//!   nd_net, index_hlist, rtnl_link_ops -> rtnl_link_ops.kind ("veth"), and its private data
//!   (`netdev_priv`, the `priv` member or the struct's size aligned to 32), whose first word is
//!   a veth's peer; net.dev_index_head (256 buckets) and ns.inum

use aya_ebpf::{helpers::bpf_jiffies64, macros::raw_tracepoint, programs::RawTracePointContext};
use triage_agent_common::{
    AF_INET, AF_INET6, FlowKey, FlowStats, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, flow_flags, kind, tcp_state,
};

use crate::{
    flows,
    maps::{DROP_REASONS, INGRESS_CACHE, RESET_SKB, offsets},
    read::kread,
    skb::{ETH_P_IP, ETH_P_IPV6, HEADER_UNSET, skb_headers},
};

/// `TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)`: the
/// argument indexes (stable since the reason was added in Linux 5.17).
const ARG_SKB: usize = 0;
const ARG_LOCATION: usize = 1;
const ARG_REASON: usize = 2;

/// TCP flags kept in the flow key.
const TCP_FLAGS_KEPT: u8 = TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK;

/// A raw tracepoint: the kernel hands over the tracepoint's arguments as they are, without
/// building the trace record a classic tracepoint program reads (the costliest part per
/// dropped packet).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    let _ = try_kfree_skb(&ctx);
    0
}

fn try_kfree_skb(ctx: &RawTracePointContext) -> Result<(), i32> {
    let o = offsets();
    // Before Linux 5.17 there is no reason: every freed packet is a drop candidate and where it
    // was freed (the tracepoint's second argument) stands in for the reason.
    let (reason, flags) = if o.kfree_skb.reason == triage_agent_common::ABSENT {
        let location: u64 = ctx.arg(ARG_LOCATION);
        (location as u32, flow_flags::LOCATION)
    } else {
        let reason: u64 = ctx.arg(ARG_REASON);
        let reason = reason as u32;
        match DROP_REASONS.get(reason) {
            Some(wanted) if *wanted != 0 => {}
            _ => return Ok(()),
        }
        (reason, flow_flags::HAS_REASON)
    };
    let skb: u64 = ctx.arg(ARG_SKB);
    // A SYN that `tcp_send_reset` just refused on this CPU: skipped below anyway (a TCP
    // NO_SOCKET drop), known here without reading the packet. The mark is used once, and only
    // in the jiffy it was made: a mark whose free never came (a run the kernel skipped) cannot
    // hide a later packet at that address.
    if flags == flow_flags::HAS_REASON
        && reason == o.kfree_skb.no_socket
        && let Some(mark) = RESET_SKB.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot, valid while the program runs; helper without preconditions.
        unsafe {
            if (*mark)[0] == skb && (*mark)[1] == bpf_jiffies64() {
                (*mark)[0] = 0;
                return Ok(());
            }
        }
    }
    let (protocol, th, nh, head) = skb_headers(skb)?;
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return Ok(());
    }
    if nh == HEADER_UNSET {
        return Ok(());
    }
    let ip = head + nh as u64;
    let mut key = FlowKey {
        kind: kind::PACKET_DROP,
        reason,
        flags,
        ..FlowKey::default()
    };
    // The IP header and the first transport bytes in one read when the transport header
    // follows a plain IP header (no IPv4 options, no IPv6 extension headers): the common case.
    let mut l4 = [0u8; 14];
    let l4_inline;
    if protocol == ETH_P_IP {
        let hdr: [u8; 34] = kread(ip, 0)?;
        if hdr[0] >> 4 != 4 {
            return Ok(());
        }
        key.family = AF_INET;
        key.protocol = hdr[9];
        key.saddr[..4].copy_from_slice(&hdr[12..16]);
        key.daddr[..4].copy_from_slice(&hdr[16..20]);
        l4_inline = hdr[0] & 0x0f == 5 && (th == HEADER_UNSET || th == nh + 20);
        l4.copy_from_slice(&hdr[20..34]);
    } else {
        let hdr: [u8; 54] = kread(ip, 0)?;
        if hdr[0] >> 4 != 6 {
            return Ok(());
        }
        key.family = AF_INET6;
        key.protocol = hdr[6];
        key.saddr.copy_from_slice(&hdr[8..24]);
        key.daddr.copy_from_slice(&hdr[24..40]);
        l4_inline = th == HEADER_UNSET || th == nh + 40;
        l4.copy_from_slice(&hdr[40..54]);
    }
    // TCP drops for want of a socket are refusals the refusal probes report.
    if flags == flow_flags::HAS_REASON
        && reason == o.kfree_skb.no_socket
        && key.protocol == IPPROTO_TCP as u8
    {
        return Ok(());
    }
    if !l4_inline {
        l4 = kread(head + th as u64, 0)?;
    }
    let mut sport = 0u16;
    match key.protocol {
        p if p == IPPROTO_TCP as u8 => {
            sport = u16::from_be_bytes([l4[0], l4[1]]);
            key.dport = u16::from_be_bytes([l4[2], l4[3]]);
            key.tcp_flags = l4[13] & TCP_FLAGS_KEPT;
        }
        IPPROTO_UDP => {
            sport = u16::from_be_bytes([l4[0], l4[1]]);
            key.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            key.sport = l4[0] as u16;
            key.dport = l4[1] as u16;
        }
        _ => {}
    }
    // `sk_buff.dev` and `sk` are neighbours in every kernel since 4.x: one read then.
    let (dev, sk) = if o.skb.sk == o.skb.dev + 8 {
        let w: [u64; 2] = kread(skb, o.skb.dev).unwrap_or([0, 0]);
        (w[0], w[1])
    } else {
        (
            kread(skb, o.skb.dev).unwrap_or(0),
            kread(skb, o.skb.sk).unwrap_or(0),
        )
    };
    if let Some(id) = socket_cgroup(sk) {
        key.cgroup_id = id;
        key.flags |= flow_flags::SOCKET_CGROUP;
    } else if let Some(netns) = ingress_netns(skb, dev) {
        // No socket: the source address says who sent it, and a pod with CAP_NET_RAW can write
        // any. Where it entered says it truly.
        key.ingress_netns = netns;
        key.flags |= flow_flags::INGRESS_NETNS;
    }
    flows::record(
        flows::site::DROP,
        &key,
        FlowStats {
            last_sport: sport,
            ..FlowStats::default()
        },
    );
    Ok(())
}

/// The network namespace a packet (at `dev`, its `sk_buff.dev`) came from when it entered
/// through the node's end of a veth pair: the namespace of the pair's other end (a pod's). The device it entered through is
/// `skb->dev` where the drop happened on the way in (routing, rp_filter), else (a bridge, whose
/// `skb->dev` is the output port by then) the one of its namespace with that ifindex, found
/// in the namespace's ifindex hash. `None` for a packet that did not enter through a veth (a
/// physical interface, a tunnel, sent by this host) or when a read fails.
#[inline(always)]
fn ingress_netns(skb: u64, dev: u64) -> Option<u32> {
    let o = offsets();
    let i = &o.ingress;
    if i.skb_iif == triage_agent_common::ABSENT || dev == 0 {
        return None;
    }
    let iif: i32 = kread(skb, i.skb_iif).ok()?;
    if iif <= 0 {
        return None;
    }
    // A flood repeats one way in on one CPU: the last answer is kept per CPU for a few jiffies
    // (a device and its ifindex, both, name one veth; a device freed and another allocated at
    // its address gets a new ifindex).
    // SAFETY: helper without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let cache = INGRESS_CACHE.get_ptr_mut(0);
    if let Some(c) = cache {
        // SAFETY: this CPU's slot, valid while the program runs; it cannot migrate meanwhile.
        unsafe {
            if (*c).dev == dev && (*c).iif == iif && jiffies.wrapping_sub((*c).jiffies) < 16 {
                return ((*c).netns != 0).then_some((*c).netns);
            }
        }
    }
    let netns = veth_peer_netns(dev, iif).unwrap_or(0);
    if let Some(c) = cache {
        // SAFETY: as above.
        unsafe {
            (*c).dev = dev;
            (*c).iif = iif;
            (*c).netns = netns;
            (*c).jiffies = jiffies;
        }
    }
    (netns != 0).then_some(netns)
}

/// The namespace at the far end of the veth with ifindex `iif` in `dev`'s namespace (see
/// [`ingress_netns`]).
#[inline(always)]
fn veth_peer_netns(dev: u64, iif: i32) -> Option<u32> {
    let o = offsets();
    let i = &o.ingress;
    let ifindex: i32 = kread(dev, o.skb.dev_ifindex).ok()?;
    let input = if ifindex == iif {
        dev
    } else {
        let net: u64 = kread(dev, i.dev_net).ok()?;
        let heads: u64 = kread(net, i.net_index_head).ok()?;
        let mut node: u64 = kread(heads + ((iif as u64) & 255) * 8, 0).ok()?;
        let mut found = 0u64;
        // A bucket holds the devices whose ifindex shares the low 8 bits: a handful at most.
        for _ in 0..4 {
            if node == 0 {
                break;
            }
            let candidate = node - u64::from(i.dev_index_hlist);
            if kread::<i32>(candidate, o.skb.dev_ifindex).ok()? == iif {
                found = candidate;
                break;
            }
            node = kread(node, 0).ok()?;
        }
        found
    };
    if input == 0 {
        return None;
    }
    let ops: u64 = kread(input, i.dev_link_ops).ok()?;
    if ops == 0 {
        return None;
    }
    let kind: u64 = kread(ops, i.link_ops_kind).ok()?;
    let name: [u8; 5] = kread(kind, 0).ok()?;
    if name != *b"veth\0" {
        return None;
    }
    let peer: u64 = kread(input, i.dev_priv).ok()?;
    if peer == 0 {
        return None;
    }
    let net: u64 = kread(peer, i.dev_net).ok()?;
    let inum: u32 = kread(net, i.net_inum).ok()?;
    (inum != 0).then_some(inum)
}

/// The cgroup2 id of a full socket (not a request or timewait mini socket).
#[inline(always)]
fn socket_cgroup(sk: u64) -> Option<u64> {
    let o = offsets();
    if sk == 0 {
        return None;
    }
    let state: u8 = kread(sk, o.sock.state).ok()?;
    let state = state as i32;
    if state == tcp_state::NEW_SYN_RECV || state == tcp_state::TIME_WAIT {
        return None;
    }
    let cgroup: u64 = kread(sk, o.sock.cgroup).ok()?;
    let kn: u64 = kread(cgroup, o.sock.cgroup_kn).ok()?;
    let id: u64 = kread(kn, o.sock.kn_id).ok()?;
    (id != 0).then_some(id)
}
