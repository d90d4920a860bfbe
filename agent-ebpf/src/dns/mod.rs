//! DNS packets at every socket of the node's pods: cgroup_skb programs on the pods' cgroup
//! (kubepods; the cgroup2 root when the agent finds none) see each packet a socket sends
//! (egress) or receives (ingress), with the socket's cgroup, in every network namespace (pods
//! and hostNetwork pods alike), after the pod's own netfilter on the
//! way out and before the application reads it on the way in.
//!
//! Names are never parsed here: the first [`DNS_PAYLOAD_CAP`] bytes of a payload are copied
//! for userspace, which parses them with a DNS library. What the kernel reads of DNS itself is
//! the fixed start of the header (id, the QR bit, TC, rcode), so that the common case never
//! leaves it: UDP lookups are matched here (see [`DNS_HELD`]).
//!
//! - A query leaving a socket waits in one of its two slots of [`DNS_HELD`], direct-mapped by
//!   (client address, port, id), its record written in place. The slot's state word is claimed and
//!   handed on with compare-and-swap: no lock, no allocation and no hashing of the key
//!   beyond the slot's index.
//! - Its answer, NOERROR, not truncated, faster than the slow threshold, for a cgroup without a
//!   recent failure: counted in the cgroup's slot of the current
//!   [`DNS_ANSWERED_SLOTS0`]/[`DNS_ANSWERED_SLOTS1`] array, or in the current
//!   [`DNS_ANSWERED0`]/[`DNS_ANSWERED1`] table when another cgroup holds that slot (lookups,
//!   latency sum and maximum); nothing goes to userspace.
//! - Any other answer: the waiting query and the answer both go to [`DNS_RING`], and the agent
//!   decides the outcome exactly as for packets it sees one by one. After a failed answer the
//!   cgroup's good answers go up too for [`DnsTiming::recent_ns`], so a search-path walk ends
//!   in the agent.
//! - Unanswered: the agent takes the query out of its slot past a handover age (at most the
//!   slow threshold), with the same compare-and-swap through its mapping of the array, and
//!   waits for its answer or the timeout itself.
//! - At a DNS server socket of this host, a query arriving and its answer leaving are noted on
//!   the held query (the agent says from them where a timed-out query went).
//! - TCP DNS, resends, unmatched answers and a query whose two slots hold others: every packet
//!   goes to [`DNS_RING`], as without any of the above. A slot the agent took a query from
//!   keeps its key for a while, so the lookup's resends and answer go up too.
//!
//! Every packet is allowed through (return 1): the programs observe, they never filter.
//!
//! Kernel interfaces: cgroup_skb (data starts at the IP header; direct reads of the linear
//! part), bpf_skb_load_bytes, bpf_skb_cgroup_id (the socket's cgroup v2 id),
//! bpf_ringbuf_reserve/output, hash and array maps, BPF_CMPXCHG and BPF_XCHG on array values
//! (kernel 5.12 and later).
//!
//! Where each part lives: [`packet`] reads the headers, [`client`] holds a query and matches its
//! answer, [`server`] notes what a server socket of this host did with a held query, [`held`]
//! owns the slots of the held-query table, [`answered`] and [`repeats`] count lookups in the
//! kernel (with [`counters`] and [`recent`]), and [`ring`] copies packets for the agent. The
//! programs themselves are here.

mod answered;
mod client;
mod counters;
mod held;
mod packet;
mod recent;
mod repeats;
mod ring;
mod server;

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use triage_agent_common::IPPROTO_UDP;

use client::{client_answer, client_query};
use packet::{QR, connected_elsewhere, is_dns_port, parse, plainly_not_dns};
use ring::send;
use server::{server_answered, server_received};

// Items the documentation links to.
#[cfg(doc)]
use crate::maps::{
    DNS_ANSWERED_SLOTS0, DNS_ANSWERED_SLOTS1, DNS_ANSWERED0, DNS_ANSWERED1, DNS_HELD, DNS_RING,
};
#[cfg(doc)]
use triage_agent_common::{DNS_PAYLOAD_CAP, DnsTiming};

#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    observe(&ctx, true);
    1
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    observe(&ctx, false);
    1
}

/// The same capture for kernels whose verifier takes no BPF atomics (before Linux 5.12: the
/// loader falls back to these when [`dns_egress`] is rejected): every DNS packet goes to
/// [`DNS_RING`] and the agent matches answers to queries itself, as it does for TCP DNS. The
/// evidence is the same; the cost per lookup is higher (two ring records instead of none).
/// No atomic instruction may appear here: 5.10 rejects the whole program for one
/// ("BPF_STX uses reserved fields"), reachable or not.
#[cgroup_skb(egress)]
pub fn dns_egress_all(ctx: SkBuffContext) -> i32 {
    observe_all(&ctx, true);
    1
}

/// See [`dns_egress_all`].
#[cgroup_skb(ingress)]
pub fn dns_ingress_all(ctx: SkBuffContext) -> i32 {
    observe_all(&ctx, false);
    1
}

#[inline(always)]
fn observe_all(ctx: &SkBuffContext, egress: bool) {
    if connected_elsewhere(ctx) || plainly_not_dns(ctx) {
        return;
    }
    if let Some(p) = parse(ctx) {
        send(ctx, &p, egress);
    }
}

/// Where a UDP DNS packet stands, from its direction, its ports and the QR bit.
#[inline(always)]
fn observe(ctx: &SkBuffContext, egress: bool) {
    if connected_elsewhere(ctx) || plainly_not_dns(ctx) {
        return;
    }
    let Some(p) = parse(ctx) else { return };
    if p.protocol == IPPROTO_UDP {
        let answer = p.dns_flags & QR != 0;
        match (egress, answer) {
            (true, false) if is_dns_port(p.dport) => return client_query(ctx, &p),
            (false, true) if is_dns_port(p.sport) => return client_answer(ctx, &p),
            (false, false) if is_dns_port(p.dport) => return server_received(ctx, &p),
            (true, true) if is_dns_port(p.sport) => return server_answered(&p),
            _ => {}
        }
    }
    send(ctx, &p, egress);
}
