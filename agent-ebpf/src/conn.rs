//! Failed TCP connections, from both ends, with tracepoints only (no kprobes needed). Every
//! occurrence is counted as a flow ([`crate::flows`]): the first goes to userspace at once,
//! repeats are counted in the kernel.
//!
//! Connecting side: `sock:inet_sock_set_state` CLOSE -> SYN_SENT runs in the connect() caller's
//! context, so pid, comm and cgroup id are remembered there, in the socket's slot of
//! [`CONNECT_SLOTS`]: an array the verifier inlines, so an attempt that is answered (cleared at
//! ESTABLISHED) costs no map operation. An attempt becomes interesting, and moves to the
//! [`CONNECTS`] hash with its cgroup's share checked, only when its SYN is retransmitted or
//! another attempt in flight needs its slot.
//! - `tcp:tcp_receive_reset` (softirq, where "current" means nothing) on a remembered socket:
//!   the connection was refused by a RST.
//! - SYN_SENT -> CLOSE while still remembered (no RST came): refused by an ICMP error when the
//!   socket's `sk_err` says so (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EACCES), otherwise it
//!   was never answered: a timeout, with the SYN retransmissions `tcp_retransmit_skb` saw.
//!
//! Refusing side: `tcp:tcp_send_reset` with no socket, answering a bare SYN, means a connection
//! attempt reached a port nothing listens on.
//!
//! Kernel interfaces (field offsets come from tracefs `format` and BTF at load time); every hook
//! is a raw tracepoint (attached with bpf(2), no perf_event_open):
//! - raw tracepoint inet_sock_set_state: arguments (sk, oldstate, newstate); struct sock
//!   (BTF): sk_protocol, __sk_common.{skc_family, skc_dport, skc_rcv_saddr, skc_daddr,
//!   skc_v6_rcv_saddr, skc_v6_daddr}, inet_sock.inet_sport, sk_err, sk_err_soft
//! - raw tracepoint tcp_receive_reset: argument (sk); the socket's fields as above
//! - raw tracepoint tcp_retransmit_skb: argument (sk)
//! - raw tracepoint tcp_send_reset (Linux >= 6.10: sk, skb, reason); the tracefs format of
//!   tcp:tcp_send_reset tells the layout (and whether it has a reason); the SYN's IP and TCP
//!   headers are read from the packet (`skb->head` + header offsets)
//! - struct sock.sk_err (BTF): how a connect() without RST ended

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use triage_agent_common::{
    ABSENT, AF_INET, AF_INET6, COMM_LEN, ERROR_UNKNOWN, FlowKey, FlowStats, IPPROTO_TCP,
    LOST_CONNECT_TABLE, LOST_FIELD_READ, NetnsCgroups, PendingConnect, TCP_ACK, TCP_SYN,
    cgroup_loss, connect_slot, errno, flow_flags, kind, send_reset_layout, tcp_state,
};

use crate::{
    flows,
    maps::{
        CONNECT_SLOTS, CONNECTS, ConnectSlot, EEXIST, LAST_CONNECTOR, NETNS_CGROUPS, RESET_SKB,
        count_loss, offsets,
    },
    read::kread,
    share,
    skb::{ETH_P_IP, ETH_P_IPV6, HEADER_UNSET, skb_headers},
};

/// Family, source and destination address of a flow.
type Addresses = (u16, [u8; 16], [u8; 16]);

/// A connector-side flow for a remembered attempt.
#[inline(always)]
fn connector_flow(
    kind: u32,
    reason: u32,
    flags: u32,
    pending: &PendingConnect,
    (family, saddr, daddr): Addresses,
    sport: u16,
    dport: u16,
) -> (FlowKey, FlowStats) {
    let key = FlowKey {
        kind,
        reason,
        cgroup_id: pending.cgroup_id,
        family,
        protocol: IPPROTO_TCP as u8,
        tcp_flags: 0,
        sport: 0,
        dport,
        ingress_netns: 0,
        flags: flags | flow_flags::HAS_PROCESS,
        saddr,
        daddr,
    };
    let stats = FlowStats {
        pid: pending.pid,
        tgid: pending.tgid,
        comm: pending.comm,
        extra: pending.syn_retransmits,
        last_sport: sport,
        ..FlowStats::default()
    };
    (key, stats)
}

/// A raw tracepoint (arguments `sk, oldstate, newstate`): it fires on every TCP state change of
/// the node, healthy traffic included, so it must cost as little as possible; the socket is
/// read through BTF offsets only when an attempt ends without an answer.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    let (old, new) = (old as i32, new as i32);
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        connecting(sk)
    } else if old == tcp_state::SYN_SENT {
        left_syn_sent(sk, new);
        Ok(())
    } else {
        Ok(())
    }
}

/// CLOSE -> SYN_SENT, in the connect() caller's context: who connects, kept in the socket's
/// slot. A function of its own (a BPF subprogram): its stack is not added to the failure
/// path's, which older verifiers sum over the calls (at most 512 bytes).
///
/// The socket's protocol is not read here but where an attempt ends without an answer
/// ([`left_syn_sent`]) or must leave its slot for the table ([`hold`]): the other sockets that
/// pass CLOSE -> SYN_SENT (an MPTCP connection beside its TCP subflow, DCCP's REQUESTING on
/// kernels that have DCCP) are answered or closed like TCP, so their attempt frees its slot
/// the same way, and a healthy connect reads nothing of the socket.
#[inline(never)]
fn connecting(sk: u64) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut pending = PendingConnect {
        cgroup_id: 0,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: [0; COMM_LEN],
        syn_retransmits: 0,
        error: 0,
    };
    // A workload connects again and again from one thread: within a jiffy (a few ms) the
    // thread's cgroup and name as this CPU read them for its last connect are taken as they
    // are, instead of asking the kernel again.
    // SAFETY: helper without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let last = LAST_CONNECTOR.get_ptr_mut(0);
    if let Some(l) = last {
        // SAFETY: this CPU's slot, valid while the program runs; it cannot migrate meanwhile,
        // and this program does not run nested on one CPU.
        unsafe {
            if (*l).jiffies == jiffies && (*l).pid_tgid == pid_tgid {
                pending.cgroup_id = (*l).cgroup_id;
                pending.comm = (*l).comm;
                learn_netns(sk, pending.cgroup_id, jiffies);
                hold(sk, &pending);
                return Ok(());
            }
        }
    }
    // SAFETY: helper without preconditions, valid in tracepoint programs.
    pending.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    pending.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    if let Some(l) = last {
        // SAFETY: as above.
        unsafe {
            (*l).jiffies = jiffies;
            (*l).pid_tgid = pid_tgid;
            (*l).cgroup_id = pending.cgroup_id;
            (*l).comm = pending.comm;
        }
    }
    learn_netns(sk, pending.cgroup_id, jiffies);
    hold(sk, &pending);
    Ok(())
}

/// SYN_SENT -> anything: answered (ESTABLISHED), or ended without an answer (CLOSE). A
/// subprogram for the reason [`connecting`] is one.
#[inline(never)]
fn left_syn_sent(sk: u64, new: i32) {
    if new != tcp_state::CLOSE {
        answered(sk);
        return;
    }
    match held(sk) {
        Held::Slot(slot, pending) => {
            // Every field is read before the slot is freed.
            if ended_tcp(sk, &pending).is_err() {
                count_loss(LOST_FIELD_READ);
            }
            free(slot, sk);
        }
        Held::Table(pending) => {
            if ended_tcp(sk, &pending).is_err() {
                count_loss(LOST_FIELD_READ);
            }
            // Ended: nothing more to learn about this attempt.
            forget(sk, &pending);
        }
        Held::Torn(slot) => {
            free(slot, sk);
            count_loss(LOST_CONNECT_TABLE);
        }
        Held::Nowhere => {}
    }
}

/// A TCP attempt that ended without an answer is reported ([`ended_without_reset`]); another
/// protocol's (see [`connecting`]) is only let go. Its subflow, an MPTCP connection's TCP
/// socket, is reported on its own.
#[inline(always)]
fn ended_tcp(sk: u64, pending: &PendingConnect) -> Result<(), i32> {
    let protocol: u16 = kread(sk, offsets().sock.protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    ended_without_reset(sk, pending)
}

/// SYN_SENT -> ESTABLISHED: nothing about the attempt is needed any more, so nothing of it is
/// read: its slot is freed if it still names the socket, and the table is asked only when
/// attempts of this slot's sockets wait there (one may be this one, moved there by a
/// retransmission or by another attempt taking the slot at this instant).
#[inline(always)]
fn answered(sk: u64) {
    if let Some(slot) = CONNECT_SLOTS.get_ptr_mut(connect_slot(sk)) {
        // SAFETY: as in [`hold`].
        unsafe {
            if core::ptr::read_volatile(&(*slot).sk) == sk {
                core::ptr::write_volatile(&mut (*slot).sk, 0);
            }
            if core::ptr::read_volatile(&(*slot).tabled) == 0 {
                return;
            }
        }
    }
    // SAFETY: the value is copied out at once.
    if let Some(pending) = unsafe { CONNECTS.get(sk) }.copied() {
        forget(sk, &pending);
    }
}

/// Where a connect in flight is kept.
enum Held {
    /// In its slot of [`CONNECT_SLOTS`] (a copy; the slot is still the attempt's).
    Slot(*mut ConnectSlot, PendingConnect),
    /// In [`CONNECTS`] (a copy).
    Table(PendingConnect),
    /// Its slot names it but does not pass its seal: two CPUs wrote it at once; who connected
    /// is not known.
    Torn(*mut ConnectSlot),
    /// Not kept: not a connect in flight, or one that could not be kept (counted then).
    Nowhere,
}

/// A seal over a slot's socket, who connected and the error noted: a slot written by two CPUs
/// at once holds one writer's socket and a mix of both writers' other fields, which this tells.
#[inline(always)]
fn seal(sk: u64, p: &PendingConnect) -> u64 {
    let c = &p.comm;
    let comm0 = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let comm1 = u64::from_ne_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]);
    let ids = (u64::from(p.tgid) << 32) | u64::from(p.pid);
    let counts = (u64::from(p.syn_retransmits) << 32) | u64::from(p.error);
    let mut h = sk ^ 0x243f_6a88_85a3_08d3;
    for word in [p.cgroup_id, ids, comm0, comm1, counts] {
        h = (h ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    // Never 0, so a zeroed slot never passes for a sealed one.
    h | 1
}

/// Keeps a new attempt in its slot. An attempt of another socket still there moves to
/// [`CONNECTS`] first (its share checked there), so nothing in flight is dropped for room.
#[inline(always)]
fn hold(sk: u64, pending: &PendingConnect) {
    let Some(slot) = CONNECT_SLOTS.get_ptr_mut(connect_slot(sk)) else {
        remember(sk, *pending);
        return;
    };
    // SAFETY: a map value, valid while the program runs; other CPUs may write it at the same
    // time, which the seal tells.
    unsafe {
        // A socket that starts connecting has no attempt in flight: an entry at its address is
        // one whose end no program saw, which must not be taken for this one's.
        if core::ptr::read_volatile(&(*slot).tabled) != 0 {
            drop_stale(sk);
        }
        let occupant = core::ptr::read_volatile(&(*slot).sk);
        if occupant != 0 && occupant != sk {
            let other = core::ptr::read_volatile(&(*slot).pending);
            if core::ptr::read_volatile(&(*slot).seal) != seal(occupant, &other) {
                count_loss(LOST_CONNECT_TABLE);
            } else if kread::<u16>(occupant, offsets().sock.protocol) == Ok(IPPROTO_TCP) {
                remember(occupant, other);
            }
            // Another protocol's attempt (see [`connecting`]) is never reported: it takes no
            // place in the table.
        }
        // The socket last: a reader that finds it finds the rest written.
        core::ptr::write_volatile(&mut (*slot).pending, *pending);
        core::ptr::write_volatile(&mut (*slot).seal, seal(sk, pending));
        core::ptr::write_volatile(&mut (*slot).sk, sk);
    }
}

/// Where the attempt of `sk` is kept, if anywhere: its slot first (no map operation), then
/// [`CONNECTS`].
#[inline(always)]
fn held(sk: u64) -> Held {
    let mut torn = None;
    if let Some(slot) = CONNECT_SLOTS.get_ptr_mut(connect_slot(sk)) {
        // SAFETY: as in [`hold`].
        unsafe {
            if core::ptr::read_volatile(&(*slot).sk) == sk {
                let pending = core::ptr::read_volatile(&(*slot).pending);
                let sealed = core::ptr::read_volatile(&(*slot).seal) == seal(sk, &pending);
                if sealed && core::ptr::read_volatile(&(*slot).sk) == sk {
                    // The slot names this socket's attempt: one in the table at its address is
                    // an earlier socket's (or this one's, being moved there by another CPU
                    // this instant, which the slot's copy stands for).
                    if core::ptr::read_volatile(&(*slot).tabled) != 0 {
                        drop_stale(sk);
                    }
                    return Held::Slot(slot, pending);
                }
                torn = Some(slot);
            } else if core::ptr::read_volatile(&(*slot).tabled) == 0 {
                // No attempt of this slot's sockets is in the table: no lookup.
                return Held::Nowhere;
            }
        }
    }
    // A torn slot may be one being taken over on another CPU, which moves its occupant here
    // before it writes: the table is asked before the attempt is called lost.
    // SAFETY: the value is copied out at once.
    match (unsafe { CONNECTS.get(sk) }, torn) {
        (Some(p), _) => Held::Table(*p),
        (None, Some(slot)) => Held::Torn(slot),
        (None, None) => Held::Nowhere,
    }
}

/// [`held`] for the programs that see a connect fail or retry (a reset received, an error
/// reported, a retransmission): a hit counts only for a socket still in SYN_SENT. Any other
/// socket found there is a later one at the address of an attempt whose end no program saw
/// (a run the kernel skipped, or a move that crossed the attempt's own answer on another
/// CPU): that stale attempt is let go, so it cannot name its process and pod in another
/// socket's failure.
#[inline(always)]
fn held_connecting(sk: u64) -> Held {
    match held(sk) {
        Held::Slot(slot, _) if !still_connecting(sk) => {
            free(slot, sk);
            Held::Nowhere
        }
        Held::Table(pending) if !still_connecting(sk) => {
            forget(sk, &pending);
            Held::Nowhere
        }
        h => h,
    }
}

/// Whether `sk` is in SYN_SENT; a socket whose state cannot be read is taken to be (as if
/// unchecked). A subprogram returning a scalar, so the callers' verifier state stays small
/// (older verifiers sum the stack over calls, and reject a struct or enum returned through
/// the caller's stack from some of these programs).
#[inline(never)]
fn still_connecting(sk: u64) -> bool {
    match kread::<u8>(sk, offsets().sock.state) {
        Ok(state) => i32::from(state) == tcp_state::SYN_SENT,
        Err(_) => true,
    }
}

/// Lets go of the table's entry at `sk`, if any: an attempt whose end no program saw.
#[inline(always)]
fn drop_stale(sk: u64) {
    // SAFETY: the value is copied out at once.
    if let Some(stale) = unsafe { CONNECTS.get(sk) }.copied() {
        forget(sk, &stale);
    }
}

/// Frees `sk`'s slot, unless another attempt has taken it meanwhile.
#[inline(always)]
fn free(slot: *mut ConnectSlot, sk: u64) {
    // SAFETY: as in [`hold`].
    unsafe {
        if core::ptr::read_volatile(&(*slot).sk) == sk {
            core::ptr::write_volatile(&mut (*slot).sk, 0);
        }
    }
}

/// Keeps an attempt in [`CONNECTS`], within its cgroup's share; what does not fit is counted
/// against the cgroup.
#[inline(always)]
fn remember(sk: u64, pending: PendingConnect) {
    // A plain hash, not LRU: when it is full the insert fails and is counted, instead of
    // silently evicting another attempt. Entries leave at the next state change. A cgroup
    // holds at most its share of the table, so one pod's attempts to a black hole cannot
    // blind the agent to everyone else's; what it loses is counted against it.
    if !share::take_connect(pending.cgroup_id) {
        count_loss(LOST_CONNECT_TABLE);
        share::lose(pending.cgroup_id, cgroup_loss::CONNECTS);
        return;
    }
    // Counted in the socket's slot before the entry exists, so a reader never skips it.
    tabled(sk, 1);
    match CONNECTS.insert(sk, pending, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        // An earlier socket at this address whose end no program saw (a run the kernel
        // skipped): its place goes back to its cgroup, and the entry is this one's.
        Err(e) if e == -EEXIST => {
            // Removed first (whoever removes it gives its count and place back), then this
            // attempt inserted as new: the count stays one per entry whatever runs between.
            drop_stale(sk);
            if CONNECTS
                .insert(sk, pending, u64::from(BPF_NOEXIST))
                .is_err()
            {
                tabled(sk, u64::MAX);
                share::give_connect(pending.cgroup_id);
                count_loss(LOST_CONNECT_TABLE);
                share::lose(pending.cgroup_id, cgroup_loss::CONNECTS);
            }
        }
        Err(_) => {
            tabled(sk, u64::MAX);
            share::give_connect(pending.cgroup_id);
            count_loss(LOST_CONNECT_TABLE);
            share::lose(pending.cgroup_id, cgroup_loss::CONNECTS);
        }
    }
}

/// Adds `delta` (`u64::MAX`: takes one) to the count of table entries of `sk`'s slot.
#[inline(always)]
fn tabled(sk: u64, delta: u64) {
    if let Some(slot) = CONNECT_SLOTS.get_ptr_mut(connect_slot(sk)) {
        // SAFETY: a map value, valid while the program runs; every CPU changes the count with
        // an atomic add (BPF_XADD, which 5.10 has).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                core::ptr::addr_of_mut!((*slot).tabled),
                delta,
            )
        };
    }
}

/// How long a CPU takes the namespace of the cgroup it learned last as learned: 250 jiffies,
/// 0.25 s at HZ=1000 to 2.5 s at HZ=100.
const RELEARN_JIFFIES: u64 = 250;

/// Notes a connecting socket's cgroup in its network namespace's entry (the agent tells pods'
/// namespaces from it, see drop.rs): a read of the socket's namespace, a lookup, and a write
/// only for a cgroup the entry does not hold.
#[inline(always)]
fn learn_netns(sk: u64, cgroup_id: u64, jiffies: u64) {
    let o = offsets();
    let last = LAST_CONNECTOR.get_ptr_mut(0);
    // A cgroup's sockets live in its pod's namespace: what this CPU told the map for the
    // cgroup it last learned is not asked again for RELEARN_JIFFIES (0.25-2.5 s by the
    // kernel's HZ), not even the socket's namespace. A process of that cgroup that enters
    // another namespace (setns) has it learned at the next expiry, and on any CPU that learns
    // another cgroup in between.
    if let Some(l) = last {
        // SAFETY: this CPU's slot, valid while the program runs; it cannot migrate meanwhile.
        unsafe {
            if (*l).learned_cgroup == cgroup_id
                && jiffies.wrapping_sub((*l).learned_jiffies) < RELEARN_JIFFIES
            {
                return;
            }
        }
    }
    // (An absent offset fails the read.)
    let Ok(net) = kread::<u64>(sk, o.ingress.sock_net) else {
        return;
    };
    let Ok(inum) = kread::<u32>(net, o.ingress.net_inum) else {
        return;
    };
    let told = match NETNS_CGROUPS.get_ptr_mut(inum) {
        // SAFETY: a map value, valid while the program runs; two CPUs racing here each write
        // a cgroup that was seen, which is all the value says.
        Some(seen) => unsafe {
            if (*seen).first != cgroup_id && (*seen).other != cgroup_id {
                (*seen).other = cgroup_id;
            }
            true
        },
        None => {
            let first = NetnsCgroups {
                first: cgroup_id,
                other: 0,
            };
            match NETNS_CGROUPS.insert(inum, first, u64::from(BPF_NOEXIST)) {
                Ok(()) => true,
                // Another CPU told it this instant, maybe of another cgroup: this one is
                // added to what it wrote.
                Err(e) if e == -EEXIST => match NETNS_CGROUPS.get_ptr_mut(inum) {
                    // SAFETY: as above.
                    Some(seen) => unsafe {
                        if (*seen).first != cgroup_id && (*seen).other != cgroup_id {
                            (*seen).other = cgroup_id;
                        }
                        true
                    },
                    None => false,
                },
                Err(_) => false,
            }
        }
    };
    // Only what the map holds is taken as learned: a failed insert is tried again next time.
    if told && let Some(l) = last {
        // SAFETY: as above.
        unsafe {
            (*l).learned_cgroup = cgroup_id;
            (*l).learned_jiffies = jiffies;
        }
    }
}

/// Takes a remembered attempt out of the table and gives its place back to its cgroup's share
/// (only the program that removed the entry does).
#[inline(always)]
fn forget(sk: u64, pending: &PendingConnect) {
    if CONNECTS.remove(sk).is_ok() {
        tabled(sk, u64::MAX);
        share::give_connect(pending.cgroup_id);
    }
}

/// A connecting socket's addresses, ports (local first) and state; `None` for a family that is
/// neither IPv4 nor IPv6.
#[inline(always)]
fn socket_ends(sk: u64) -> Result<Option<(Addresses, u16, u16, u8)>, i32> {
    let o = offsets();
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    // `struct sock_common` starts skc_daddr, skc_rcv_saddr, skc_hash, skc_dport, skc_num,
    // skc_family, skc_state in every kernel since 4.x: one read then, else one per field.
    let d = o.sock.daddr;
    let (family, dport, state) = if o.sock.rcv_saddr == d + 4
        && o.sock.dport == d + 12
        && o.sock.family == d + 16
        && o.sock.state == d + 18
    {
        let c: [u8; 19] = kread(sk, d)?;
        daddr[..4].copy_from_slice(&c[0..4]);
        saddr[..4].copy_from_slice(&c[4..8]);
        (
            u16::from_ne_bytes([c[16], c[17]]),
            u16::from_be_bytes([c[12], c[13]]),
            c[18],
        )
    } else {
        let family: u16 = kread(sk, o.sock.family)?;
        if family == AF_INET {
            let s: [u8; 4] = kread(sk, o.sock.rcv_saddr)?;
            let d: [u8; 4] = kread(sk, d)?;
            saddr[..4].copy_from_slice(&s);
            daddr[..4].copy_from_slice(&d);
        }
        let dport = u16::from_be(kread::<u16>(sk, o.sock.dport)?);
        let state = kread::<u8>(sk, o.sock.state).unwrap_or(tcp_state::SYN_SENT as u8);
        (family, dport, state)
    };
    if family == AF_INET6 {
        saddr = kread(sk, o.sock.v6_rcv_saddr)?;
        daddr = kread(sk, o.sock.v6_daddr)?;
    } else if family != AF_INET {
        return Ok(None);
    }
    let sport = u16::from_be(kread::<u16>(sk, o.sock.sport)?);
    Ok(Some(((family, saddr, daddr), sport, dport, state)))
}

/// SYN_SENT -> CLOSE without a RST: rejected by ICMP, or never answered. Addresses and ports
/// come from the socket.
#[inline(always)]
fn ended_without_reset(sk: u64, pending: &PendingConnect) -> Result<(), i32> {
    let o = offsets();
    let Some((addrs, sport, dport, _)) = socket_ends(sk)? else {
        return Ok(());
    };
    // The hard error, else a soft one: an ICMP error that came while the socket was busy stays
    // soft until a retransmission, and the application may give up first.
    let hard: i32 = kread(sk, o.sock.sk_err).unwrap_or(0);
    let soft: i32 = kread(sk, o.sock.sk_err_soft).unwrap_or(0);
    let mut err = if hard != 0 { hard } else { soft }.unsigned_abs();
    if err == 0 && pending.error != 0 {
        // The error was reported (inet_sk_error_report) but the application, woken first, had
        // already taken its errno. Reported on the first SYN, with no reset, it was an ICMP
        // error; after retransmissions it may as well be the kernel giving up: a timeout.
        if pending.error != ERROR_UNKNOWN {
            err = pending.error;
        } else if pending.syn_retransmits == 0 {
            let (key, stats) = connector_flow(
                kind::CONNECT_REFUSED,
                0,
                flow_flags::ICMP_REJECT,
                pending,
                addrs,
                sport,
                dport,
            );
            flows::record(flows::site::STATE_CHANGE, &key, stats);
            return Ok(());
        }
    }
    let (kind, reason, flags) = match err {
        errno::ECONNREFUSED | errno::EHOSTUNREACH | errno::ENETUNREACH | errno::EACCES => {
            (kind::CONNECT_REFUSED, err, flow_flags::ICMP_REJECT)
        }
        // ETIMEDOUT (the kernel gave up), or 0 (the application gave up first).
        _ => (kind::CONNECT_TIMEOUT, err, 0),
    };
    let (key, stats) = connector_flow(kind, reason, flags, pending, addrs, sport, dport);
    flows::record(flows::site::STATE_CHANGE, &key, stats);
    Ok(())
}

/// A raw tracepoint (argument `sk`) fired when an error is reported on a socket: for a connect
/// still waiting (no reset came, or the entry would be gone) that is an ICMP error or the
/// kernel giving up. The woken application may take the errno before the socket closes, so it
/// is noted here.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let error = || {
        let err: i32 = kread(sk, offsets().sock.sk_err).unwrap_or(0);
        if err != 0 {
            err.unsigned_abs()
        } else {
            ERROR_UNKNOWN
        }
    };
    match held_connecting(sk) {
        // The error is sealed with the rest: an attempt taking the slot at this instant fails
        // its seal (counted, never given this socket's error).
        Held::Slot(slot, mut pending) => {
            pending.error = error();
            // SAFETY: as in [`hold`].
            unsafe {
                core::ptr::write_volatile(&mut (*slot).pending.error, pending.error);
                core::ptr::write_volatile(&mut (*slot).seal, seal(sk, &pending));
            }
        }
        Held::Table(_) => {
            if let Some(pending) = CONNECTS.get_ptr_mut(sk) {
                // SAFETY: the entry belongs to this socket, whose error reports are serialized.
                unsafe { (*pending).error = error() };
            }
        }
        Held::Torn(_) | Held::Nowhere => {}
    }
    0
}

/// A raw tracepoint (argument `sk`), not the classic one: attaching a classic tracepoint takes
/// perf_event_open, which kernels with `perf_event_paranoid` 3 (Debian's default) refuse
/// without CAP_SYS_ADMIN. A socket is in a slot or in `CONNECTS` only while it is in SYN_SENT
/// (`inet_sock_set_state` takes it out on any other state, and [`held_connecting`] lets go of
/// what a skipped run left), so a hit there is a SYN retransmission. The first one makes the attempt interesting: it moves
/// from its slot to `CONNECTS`, where it waits, its cgroup's share checked, as long as the
/// kernel retries (its slot must stay free for the attempts that are answered).
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    match held_connecting(sk) {
        Held::Slot(slot, mut pending) => {
            pending.syn_retransmits = pending.syn_retransmits.wrapping_add(1);
            remember(sk, pending);
            free(slot, sk);
        }
        Held::Table(_) => {
            if let Some(pending) = CONNECTS.get_ptr_mut(sk) {
                // SAFETY: the entry belongs to this socket, whose retransmissions are
                // serialized.
                unsafe { (*pending).syn_retransmits = (*pending).syn_retransmits.wrapping_add(1) };
            }
        }
        Held::Torn(slot) => {
            free(slot, sk);
            count_loss(LOST_CONNECT_TABLE);
        }
        Held::Nowhere => {}
    }
    0
}

/// A raw tracepoint (argument `sk`): the socket that got the reset.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    let _ = try_tcp_receive_reset(&ctx);
    0
}

fn try_tcp_receive_reset(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sk: u64 = ctx.arg(0);
    // Every field is read before the attempt is let go: a refusal whose socket cannot be read
    // is counted, never silently lost.
    // The socket's state comes with its addresses (see [`held_connecting`] for why it counts).
    let (pending, ends) = match held(sk) {
        Held::Slot(slot, pending) => {
            let ends = socket_ends(sk);
            free(slot, sk);
            (pending, ends)
        }
        Held::Table(pending) => {
            let ends = socket_ends(sk);
            forget(sk, &pending);
            (pending, ends)
        }
        Held::Torn(slot) => {
            free(slot, sk);
            count_loss(LOST_CONNECT_TABLE);
            return Ok(());
        }
        // Not a socket in SYN_SENT: a reset of an established connection, not a refusal.
        Held::Nowhere => return Ok(()),
    };
    match ends {
        Ok(Some((addrs, sport, dport, state))) if i32::from(state) == tcp_state::SYN_SENT => {
            let (key, stats) =
                connector_flow(kind::CONNECT_REFUSED, 0, 0, &pending, addrs, sport, dport);
            flows::record(flows::site::RESET_RECEIVED, &key, stats);
        }
        // A later socket at the address of an attempt whose end no program saw: let go above.
        Ok(Some(_)) | Ok(None) => {}
        Err(_) => count_loss(LOST_FIELD_READ),
    }
    Ok(())
}

/// A raw tracepoint (arguments `sk, skb, reason` since Linux 6.10): with no socket, the SYN
/// being answered is read from the packet.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    let _ = try_tcp_send_reset(&ctx);
    0
}

fn try_tcp_send_reset(ctx: &RawTracePointContext) -> Result<(), i32> {
    let o = offsets();
    if o.send_reset.layout != send_reset_layout::SOCKADDR {
        return Ok(());
    }
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        // A socket exists: this reset ends a known connection, it does not refuse a new one.
        return Ok(());
    }
    let skb: u64 = ctx.arg(1);
    // The kernel frees this packet next, on this CPU, as a NO_SOCKET drop: the drop program
    // knows it from this mark without reading it again.
    if let Some(mark) = RESET_SKB.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid while the program runs; helper without preconditions.
        unsafe { *mark = [skb, bpf_jiffies64()] };
    }
    let (protocol, th, nh, head) = skb_headers(skb)?;
    if nh == HEADER_UNSET {
        return Ok(());
    }
    let ip = head + nh as u64;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    // The IP header and the TCP header's first bytes in one read when the TCP header follows
    // a plain IP header (no IPv4 options, no IPv6 extension headers): the common case.
    let mut t = [0u8; 14];
    let (family, tcp, inline) = if protocol == ETH_P_IP {
        let hdr: [u8; 34] = kread(ip, 0)?;
        saddr[..4].copy_from_slice(&hdr[12..16]);
        daddr[..4].copy_from_slice(&hdr[16..20]);
        t.copy_from_slice(&hdr[20..34]);
        let ihl = ((hdr[0] & 0x0f) as u64) * 4;
        (AF_INET, nh as u64 + ihl, ihl == 20)
    } else if protocol == ETH_P_IPV6 {
        let hdr: [u8; 54] = kread(ip, 0)?;
        saddr.copy_from_slice(&hdr[8..24]);
        daddr.copy_from_slice(&hdr[24..40]);
        t.copy_from_slice(&hdr[40..54]);
        (AF_INET6, nh as u64 + 40, true)
    } else {
        return Ok(());
    };
    let (tcp, inline) = if th == HEADER_UNSET || th <= nh {
        (head + tcp, inline)
    } else {
        (head + th as u64, inline && u64::from(th) == tcp)
    };
    if !inline {
        t = kread(tcp, 0)?;
    }
    let flags = t[13];
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return Ok(());
    }
    let (reason, reason_flag) = if o.send_reset.reason == ABSENT {
        (0, 0)
    } else {
        let r: u64 = ctx.arg(2);
        (r as u32, flow_flags::HAS_REASON)
    };
    // The SYN went from the remote end (saddr, its source port) to this host's port.
    let key = FlowKey {
        kind: kind::SYN_REFUSED,
        reason,
        cgroup_id: 0,
        family,
        protocol: IPPROTO_TCP as u8,
        tcp_flags: 0,
        sport: 0,
        dport: u16::from_be_bytes([t[2], t[3]]),
        ingress_netns: 0,
        flags: reason_flag,
        saddr,
        daddr,
    };
    flows::record(
        flows::site::RESET_SENT,
        &key,
        FlowStats {
            last_sport: u16::from_be_bytes([t[0], t[1]]),
            ..FlowStats::default()
        },
    );
    Ok(())
}
