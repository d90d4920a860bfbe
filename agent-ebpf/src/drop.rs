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
//! - skb:kfree_skb: skbaddr (ptr), protocol (u16, host order ETH_P_*), reason (enum
//!   skb_drop_reason; absent before Linux 5.17: the program then stays detached)
//! - struct sk_buff: head (ptr), network_header / transport_header (u16 offsets from head,
//!   0xffff when unset), sk (ptr)
//! - struct sock: __sk_common.skc_state (u8), sk_cgrp_data.cgroup -> cgroup.kn -> kernfs_node.id
//!   (the sending socket's cgroup2 id, read only for full sockets)

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use triage_agent_common::{
    AF_INET, AF_INET6, FlowKey, FlowStats, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    flow_flags, kind, tcp_state,
};

use crate::{
    conn::{field, kread},
    flows,
    maps::{DROP_REASONS, offsets},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `skb->*_header` value meaning "not set".
const HEADER_UNSET: u16 = 0xffff;
/// TCP flags kept in the flow key.
const TCP_FLAGS_KEPT: u8 = 0x01 | 0x02 | 0x04 | 0x10; // FIN, SYN, RST, ACK

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets();
    let reason: u32 = field(ctx, o.kfree_skb.reason)?;
    match DROP_REASONS.get(reason) {
        Some(wanted) if *wanted != 0 => {}
        _ => return Ok(()),
    }
    let protocol: u16 = field(ctx, o.kfree_skb.protocol)?;
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return Ok(());
    }
    let skb: u64 = field(ctx, o.kfree_skb.skbaddr)?;
    let head: u64 = kread(skb, o.skb.head)?;
    // network_header and transport_header are adjacent u16s in every kernel since 3.x: one
    // read for both when they are.
    let (nh, th): (u16, u16) = if o.skb.network_header == o.skb.transport_header + 2 {
        let both: [u8; 4] = kread(skb, o.skb.transport_header)?;
        (
            u16::from_ne_bytes([both[2], both[3]]),
            u16::from_ne_bytes([both[0], both[1]]),
        )
    } else {
        (
            kread(skb, o.skb.network_header)?,
            kread(skb, o.skb.transport_header).unwrap_or(HEADER_UNSET),
        )
    };
    if nh == HEADER_UNSET {
        return Ok(());
    }
    let ip = head + nh as u64;
    // TCP drops for want of a socket are refusals the refusal probes report: find out with a
    // one-byte read before parsing anything.
    if reason == o.kfree_skb.no_socket {
        let at = if protocol == ETH_P_IP { 9 } else { 6 };
        let proto: u8 = kread(ip, at)?;
        if proto == IPPROTO_TCP as u8 {
            return Ok(());
        }
    }
    let mut key = FlowKey {
        kind: kind::PACKET_DROP,
        reason,
        flags: flow_flags::HAS_REASON,
        ..FlowKey::default()
    };
    let transport_guess;
    if protocol == ETH_P_IP {
        let hdr: [u8; 20] = kread(ip, 0)?;
        if hdr[0] >> 4 != 4 {
            return Ok(());
        }
        key.family = AF_INET;
        key.protocol = hdr[9];
        key.saddr[..4].copy_from_slice(&hdr[12..16]);
        key.daddr[..4].copy_from_slice(&hdr[16..20]);
        transport_guess = nh as u64 + ((hdr[0] & 0x0f) as u64) * 4;
    } else {
        let hdr: [u8; 40] = kread(ip, 0)?;
        if hdr[0] >> 4 != 6 {
            return Ok(());
        }
        key.family = AF_INET6;
        key.protocol = hdr[6];
        key.saddr.copy_from_slice(&hdr[8..24]);
        key.daddr.copy_from_slice(&hdr[24..40]);
        transport_guess = nh as u64 + 40;
    }
    let transport = if th == HEADER_UNSET || th <= nh {
        head + transport_guess
    } else {
        head + th as u64
    };
    let mut sport = 0u16;
    match key.protocol {
        p if p == IPPROTO_TCP as u8 => {
            let t: [u8; 14] = kread(transport, 0)?;
            sport = u16::from_be_bytes([t[0], t[1]]);
            key.dport = u16::from_be_bytes([t[2], t[3]]);
            key.tcp_flags = t[13] & TCP_FLAGS_KEPT;
        }
        IPPROTO_UDP => {
            let t: [u8; 4] = kread(transport, 0)?;
            sport = u16::from_be_bytes([t[0], t[1]]);
            key.dport = u16::from_be_bytes([t[2], t[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let t: [u8; 2] = kread(transport, 0)?;
            key.sport = t[0] as u16;
            key.dport = t[1] as u16;
        }
        _ => {}
    }
    let sk: u64 = kread(skb, o.skb.sk).unwrap_or(0);
    if let Some(id) = socket_cgroup(sk) {
        key.cgroup_id = id;
        key.flags |= flow_flags::SOCKET_CGROUP;
    }
    flows::record(
        &key,
        FlowStats {
            last_sport: sport,
            ..FlowStats::default()
        },
    );
    Ok(())
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
