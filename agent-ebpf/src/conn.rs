//! Refused TCP connections, from both ends, with tracepoints only (no kprobes needed).
//!
//! Connecting side: `sock:inet_sock_set_state` CLOSE -> SYN_SENT runs in the connect() caller's
//! context, so pid, comm and cgroup id are remembered there, keyed by the socket address.
//! `tcp:tcp_receive_reset` fires (in softirq, where "current" means nothing) when a RST arrives;
//! if the socket is still remembered it was in SYN_SENT: the connection was refused.
//!
//! Refusing side: `tcp:tcp_send_reset` with no socket, answering a bare SYN, means a connection
//! attempt reached a port nothing listens on.
//!
//! Kernel interfaces (field offsets come from tracefs `format` at load time):
//! - sock:inet_sock_set_state: skaddr (ptr), oldstate/newstate (int), protocol (u16)
//! - tcp:tcp_receive_reset: skaddr, sport/dport (u16, host order), family, saddr/daddr ([u8; 4]),
//!   saddr_v6/daddr_v6 ([u8; 16]), sock_cookie (u64)
//! - tcp:tcp_send_reset (Linux >= 6.10): skbaddr, skaddr, reason (enum sk_rst_reason),
//!   saddr/daddr (sockaddr_in/sockaddr_in6 in 28 bytes; saddr is the local end)
//! - struct sk_buff.data (BTF): the TCP header of the segment being answered

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use triage_agent_common::{
    ABSENT, AF_INET, AF_INET6, COMM_LEN, ConnEvent, EventHeader, IPPROTO_TCP, LOST_CONNECT_TABLE,
    LOST_FIELD_READ, LOST_RESERVE, Offsets, PendingConnect, conn_flags, kind, send_reset_layout,
    tcp_state,
};

use crate::maps::{CONNECTS, EVENTS, count_loss, offsets};

/// Byte of the TCP header holding the flags.
const TCP_FLAGS_BYTE: u64 = 13;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// Reads a field of the tracepoint record at a load-time offset.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u32) -> Result<T, i32> {
    if offset == ABSENT {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad offset yields an error.
    unsafe { ctx.read_at::<T>(offset as usize) }
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets();
    let protocol: u16 = field(ctx, o.set_state.protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old: i32 = field(ctx, o.set_state.oldstate)?;
    let new: i32 = field(ctx, o.set_state.newstate)?;
    let sk: u64 = field(ctx, o.set_state.skaddr)?;
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        let pid_tgid = bpf_get_current_pid_tgid();
        let pending = PendingConnect {
            // SAFETY: helper without preconditions, valid in tracepoint programs.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            pid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        };
        // A plain hash, not LRU: when it is full the insert fails and is counted, instead of
        // silently evicting another attempt. Entries leave at the next state change.
        if CONNECTS.insert(sk, pending, 0).is_err() {
            count_loss(LOST_CONNECT_TABLE);
        }
    } else if old == tcp_state::SYN_SENT {
        // Answered (ESTABLISHED) or given up (CLOSE): nothing more to learn about this attempt.
        let _ = CONNECTS.remove(sk);
    }
    Ok(())
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_receive_reset(&ctx);
    0
}

fn try_tcp_receive_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets();
    let sk: u64 = field(ctx, o.receive_reset.skaddr)?;
    // SAFETY: the value is copied out before the entry is removed.
    let pending = match unsafe { CONNECTS.get(sk) } {
        Some(pending) => *pending,
        // Not a socket in SYN_SENT: a reset of an established connection, not a refusal.
        None => return Ok(()),
    };
    // Every field is read before the entry goes: a refusal whose record cannot be read is
    // counted, never silently lost.
    let event = refusal_event(ctx, &o, &pending);
    let _ = CONNECTS.remove(sk);
    match event {
        Ok(Some(event)) => emit(event),
        Ok(None) => {}
        Err(_) => count_loss(LOST_FIELD_READ),
    }
    Ok(())
}

/// The connecting side's refusal, from the tcp_receive_reset record; `None` for a family that
/// is neither IPv4 nor IPv6.
#[inline(always)]
fn refusal_event(
    ctx: &TracePointContext,
    o: &Offsets,
    pending: &PendingConnect,
) -> Result<Option<ConnEvent>, i32> {
    let family: u16 = field(ctx, o.receive_reset.family)?;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = field(ctx, o.receive_reset.saddr)?;
        let d: [u8; 4] = field(ctx, o.receive_reset.daddr)?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        saddr = field(ctx, o.receive_reset.saddr_v6)?;
        daddr = field(ctx, o.receive_reset.daddr_v6)?;
    } else {
        return Ok(None);
    }
    Ok(Some(ConnEvent {
        header: header(kind::CONNECT_REFUSED),
        cgroup_id: pending.cgroup_id,
        sock_cookie: field(ctx, o.receive_reset.sock_cookie).unwrap_or(0),
        pid: pending.pid,
        tgid: pending.tgid,
        flags: conn_flags::HAS_PROCESS,
        reason: 0,
        family,
        sport: field(ctx, o.receive_reset.sport)?,
        dport: field(ctx, o.receive_reset.dport)?,
        _pad0: 0,
        saddr,
        daddr,
        comm: pending.comm,
    }))
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_send_reset(&ctx);
    0
}

fn try_tcp_send_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let o = offsets();
    if o.send_reset.layout != send_reset_layout::SOCKADDR {
        return Ok(());
    }
    let sk: u64 = field(ctx, o.send_reset.skaddr)?;
    if sk != 0 {
        // A socket exists: this reset ends a known connection, it does not refuse a new one.
        return Ok(());
    }
    let skb: u64 = field(ctx, o.send_reset.skbaddr)?;
    if skb == 0 || o.skb.data == ABSENT {
        return Ok(());
    }
    // SAFETY: probe reads of kernel memory; failures are returned, never dereferenced.
    let data: u64 = unsafe { bpf_probe_read_kernel((skb + o.skb.data as u64) as *const u64)? };
    // SAFETY: as above; skb->data points at the TCP header here (the tracepoint reads it too).
    let flags: u8 = unsafe { bpf_probe_read_kernel((data + TCP_FLAGS_BYTE) as *const u8)? };
    if flags & TCP_FLAG_SYN == 0 || flags & TCP_FLAG_ACK != 0 {
        return Ok(());
    }
    let (reason, reason_flag) = match field::<u32>(ctx, o.send_reset.reason) {
        Ok(reason) => (reason, conn_flags::HAS_REASON),
        Err(_) => (0, 0),
    };
    // saddr is the refusing (local) end, daddr the peer that sent the SYN.
    let local: [u8; 28] = field(ctx, o.send_reset.saddr)?;
    let remote: [u8; 28] = field(ctx, o.send_reset.daddr)?;
    let (family, lport, laddr) = sockaddr(&local);
    let (_, rport, raddr) = sockaddr(&remote);
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let event = ConnEvent {
        header: header(kind::SYN_REFUSED),
        cgroup_id: 0,
        sock_cookie: 0,
        pid: 0,
        tgid: 0,
        flags: reason_flag,
        reason,
        family,
        sport: rport,
        dport: lport,
        _pad0: 0,
        saddr: raddr,
        daddr: laddr,
        comm: [0; COMM_LEN],
    };
    emit(event);
    Ok(())
}

/// Splits a `sockaddr_in`/`sockaddr_in6` image into family, port (host order) and address.
#[inline(always)]
fn sockaddr(raw: &[u8; 28]) -> (u16, u16, [u8; 16]) {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&raw[4..8]);
    } else {
        addr.copy_from_slice(&raw[8..24]);
    }
    (family, port, addr)
}

#[inline(always)]
fn header(kind: u32) -> EventHeader {
    EventHeader {
        kind,
        len: size_of::<ConnEvent>() as u32,
        // SAFETY: helper without preconditions.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// Reserves, fills and submits one event; a full ring buffer is counted, never silent.
#[inline(always)]
fn emit(event: ConnEvent) {
    match EVENTS.reserve::<ConnEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        None => count_loss(LOST_RESERVE),
    }
}
