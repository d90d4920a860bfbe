//! Decoding of ring buffer records into [`RawEvent`]s. Bytes from the kernel are checked, never
//! trusted: a short, oversized or unknown record is a [`DecodeError`] (counted by the reader),
//! never a panic. Layouts are the #[repr(C)] types of triage-agent-common, read field by field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use triage_agent_common::{
    AF_INET, AF_INET6, COMM_LEN, DnsEvent, DnsHeld, EventHeader, FlowEvent, FlowKey, FlowStats,
    OomEvent, UNKNOWN_U8, UNKNOWN_U64, flow_flags, kind,
};

use crate::event::{Flow, FlowKind, OomVictim, RawEvent, TaskInfo};

/// The kernel's page size.
pub fn page_size() -> u64 {
    #[cfg(feature = "node-agent")]
    {
        // SAFETY: sysconf has no preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(v) = u64::try_from(v)
            && v > 0
        {
            return v;
        }
    }
    4096
}

/// A memory cgroup limit in bytes, `None` for "max" (PAGE_COUNTER_MAX = LONG_MAX / PAGE_SIZE,
/// or anything near it).
pub fn limit_bytes(pages: u64, page: u64) -> Option<u64> {
    let max_pages = (i64::MAX as u64) / page.max(1);
    (pages < max_pages).then(|| pages.saturating_mul(page))
}

fn oom_victim(e: &OomEvent) -> OomVictim {
    let page = page_size();
    let known = |v: u64| (v != UNKNOWN_U64).then_some(v);
    let cgroup_id = Some(e.cgroup_id).filter(|id| *id != 0);
    OomVictim {
        boot_ns: e.header.boot_ns,
        pid: e.pid,
        tgid: e.tgid,
        comm: comm_string(&e.comm),
        uid: e.uid,
        cgroup_id,
        main_process: (cgroup_id.is_some() && e.parent_cgroup_id != 0)
            .then_some(e.parent_cgroup_id != e.cgroup_id),
        memcg_usage_bytes: known(e.memcg_usage_pages).map(|p| p.saturating_mul(page)),
        memcg_limit_bytes: known(e.memcg_limit_pages).and_then(|p| limit_bytes(p, page)),
        rss_bytes: known(e.rss_pages).map(|p| p.saturating_mul(page)),
        oom_score_adj: e.oom_score_adj,
        oom_group: (e.oom_group != UNKNOWN_U8).then_some(e.oom_group != 0),
    }
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte {what}")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("event kind {kind} says {declared} bytes, record has {len}")]
    LengthMismatch {
        kind: u32,
        declared: u32,
        len: usize,
    },
    #[error("unknown address family {family}")]
    UnknownFamily { family: u16 },
}

/// A record type the kernel programs write: `#[repr(C)]` integers and byte arrays only, every
/// padding byte an explicit field, so every bit pattern is a valid value and every byte of a
/// value is initialized. The layout is the type in triage-agent-common, written once: decoding
/// reads it, [`encode`] (tests, fuzzing, the bench) writes it.
///
/// # Safety
/// Only for types of that shape.
pub unsafe trait Record: Copy {}

// SAFETY: plain #[repr(C)] records of integers and byte arrays with explicit padding (the same
// claim triage-agent-common makes for aya::Pod; the sizes below hold it to no hidden padding).
unsafe impl Record for EventHeader {}
// SAFETY: as above.
unsafe impl Record for FlowEvent {}
// SAFETY: as above.
unsafe impl Record for OomEvent {}
// SAFETY: as above.
unsafe impl Record for DnsEvent {}
// SAFETY: as above.
unsafe impl Record for DnsHeld {}

const _: () = {
    assert!(size_of::<EventHeader>() == 16);
    assert!(size_of::<FlowKey>() == 64);
    assert!(
        size_of::<FlowEvent>()
            == size_of::<EventHeader>() + size_of::<FlowKey>() + size_of::<FlowStats>()
    );
};

/// Reads a record from the front of `bytes`; `None` when they are too short, never a panic.
pub fn read_record<T: Record>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes, any bit pattern is a valid T
    // (Record), and read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn read<T: Record>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    read_record(bytes).ok_or(DecodeError::Short {
        what,
        len: bytes.len(),
        need: size_of::<T>(),
    })
}

/// The bytes of a record as the kernel programs lay it out (tests, fuzzing, benchmarks).
pub fn encode<T: Record>(record: &T) -> Vec<u8> {
    // SAFETY: a Record has no uninitialized (implicit padding) bytes; the slice covers exactly
    // the value, which outlives it.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

/// Decodes one ring buffer record (a flow's first occurrence, or an OOM victim).
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let header: EventHeader = read(bytes, "event header")?;
    let check = |need: usize| {
        if header.len as usize != need || bytes.len() < need {
            return Err(DecodeError::LengthMismatch {
                kind: header.kind,
                declared: header.len,
                len: bytes.len(),
            });
        }
        Ok(())
    };
    match header.kind {
        kind::CONNECT_REFUSED | kind::SYN_REFUSED | kind::PACKET_DROP | kind::CONNECT_TIMEOUT => {
            check(size_of::<FlowEvent>())?;
            let e: FlowEvent = read(bytes, "flow event")?;
            flow(&e.key, &e.stats).map(RawEvent::Flow)
        }
        kind::OOM_VICTIM => {
            check(size_of::<OomEvent>())?;
            let e: OomEvent = read(bytes, "oom event")?;
            Ok(RawEvent::OomVictim(oom_victim(&e)))
        }
        other => Err(DecodeError::UnknownKind { kind: other }),
    }
}

/// The high half of every kernel text address (see `flow_flags::LOCATION`).
const KERNEL_TEXT_HIGH: u64 = 0xffff_ffff_0000_0000;

/// A flow from its key and counts (a ring buffer event, or a drained flow table entry).
pub fn flow(key: &FlowKey, stats: &FlowStats) -> Result<Flow, DecodeError> {
    let kind = match key.kind {
        kind::CONNECT_REFUSED => FlowKind::ConnectRefused,
        kind::SYN_REFUSED => FlowKind::SynRefused,
        kind::PACKET_DROP => FlowKind::PacketDrop,
        kind::CONNECT_TIMEOUT => FlowKind::ConnectTimeout,
        other => return Err(DecodeError::UnknownKind { kind: other }),
    };
    let (src_ip, dst_ip) = match key.family {
        AF_INET => (ipv4(&key.saddr), ipv4(&key.daddr)),
        AF_INET6 => (ipv6(key.saddr), ipv6(key.daddr)),
        other => return Err(DecodeError::UnknownFamily { family: other }),
    };
    let sport = if key.sport != 0 {
        key.sport
    } else {
        stats.last_sport
    };
    let has = |flag| key.flags & flag != 0;
    let icmp = has(flow_flags::ICMP_REJECT);
    Ok(Flow {
        kind,
        count: stats.count.max(1),
        first_ns: stats.first_ns.min(stats.last_ns),
        last_ns: stats.last_ns,
        src: SocketAddr::new(src_ip, sport),
        dst: SocketAddr::new(dst_ip, key.dport),
        protocol: key.protocol,
        tcp_flags: key.tcp_flags,
        // Kernel enum values; for timeouts the socket's errno (0: the application gave up).
        reason: (has(flow_flags::HAS_REASON) || kind == FlowKind::ConnectTimeout)
            .then_some(key.reason)
            .filter(|_| !icmp),
        icmp_errno: icmp.then_some(key.reason),
        cgroup_id: Some(key.cgroup_id).filter(|id| *id != 0),
        task: has(flow_flags::HAS_PROCESS).then(|| TaskInfo {
            pid: stats.pid,
            tgid: stats.tgid,
            comm: comm_string(&stats.comm),
        }),
        ingress_netns: has(flow_flags::INGRESS_NETNS).then_some(key.ingress_netns),
        ingress_cgroups: Vec::new(),
        syn_retransmits: stats.extra,
        location: has(flow_flags::LOCATION).then_some(KERNEL_TEXT_HIGH | u64::from(key.reason)),
    })
}

fn ipv4(a: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

fn ipv6(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    // A v4 peer of a dual-stack socket: report it as the IPv4 address pods are known by.
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The kernel's comm: up to 16 bytes, NUL-terminated when shorter; any bytes allowed.
fn comm_string(raw: &[u8; COMM_LEN]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u32, family: u16) -> FlowEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 3]);
        FlowEvent {
            header: EventHeader {
                kind,
                len: size_of::<FlowEvent>() as u32,
                boot_ns: 42,
            },
            key: FlowKey {
                kind,
                reason: 0,
                cgroup_id: 1234,
                family,
                protocol: 6,
                tcp_flags: 0,
                sport: 0,
                dport: 8080,
                ingress_netns: 0,
                flags: flow_flags::HAS_PROCESS,
                saddr,
                daddr,
            },
            stats: FlowStats {
                count: 1,
                first_ns: 42,
                last_ns: 42,
                pid: 11,
                tgid: 10,
                comm,
                extra: 0,
                last_sport: 40000,
                _pad0: 0,
            },
        }
    }

    fn decoded(e: &FlowEvent) -> Flow {
        let RawEvent::Flow(f) = decode(&encode(e)).unwrap() else {
            unreachable!("a flow")
        };
        f
    }

    #[test]
    fn decodes_connector_side() {
        let f = decoded(&event(kind::CONNECT_REFUSED, AF_INET));
        assert_eq!(f.kind, FlowKind::ConnectRefused);
        assert_eq!((f.first_ns, f.last_ns, f.count), (42, 42, 1));
        assert_eq!(
            f.src,
            "10.0.0.2:40000".parse().unwrap(),
            "latest source port"
        );
        assert_eq!(f.dst, "10.0.0.3:8080".parse().unwrap());
        let task = f.task.unwrap();
        assert_eq!((task.pid, task.tgid, task.comm.as_str()), (11, 10, "curl"));
        assert_eq!(f.cgroup_id, Some(1234));
        assert_eq!((f.reason, f.icmp_errno), (None, None));
    }

    #[test]
    fn decodes_refuser_side_with_reason_and_v6() {
        let mut ev = event(kind::SYN_REFUSED, AF_INET6);
        ev.key.flags = flow_flags::HAS_REASON;
        ev.key.reason = 1;
        ev.key.cgroup_id = 0;
        ev.key.saddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        ev.key.daddr = "::ffff:10.0.0.3".parse::<Ipv6Addr>().unwrap().octets();
        let f = decoded(&ev);
        assert_eq!(f.kind, FlowKind::SynRefused);
        assert_eq!(f.task, None);
        assert_eq!(f.cgroup_id, None);
        assert_eq!(f.reason, Some(1));
        assert_eq!(f.src, "[fd00::2]:40000".parse().unwrap());
        assert_eq!(
            f.dst,
            "10.0.0.3:8080".parse().unwrap(),
            "v4-mapped shown as v4"
        );
    }

    #[test]
    fn drained_entries_and_icmp_rejects() {
        let mut ev = event(kind::CONNECT_REFUSED, AF_INET);
        ev.key.flags |= flow_flags::ICMP_REJECT;
        ev.key.reason = 113;
        ev.stats.count = 0;
        let f = flow(&ev.key, &ev.stats).unwrap();
        assert_eq!(f.icmp_errno, Some(113));
        assert_eq!(f.reason, None);
        assert_eq!(f.count, 1, "never zero");
        let mut drop = event(kind::PACKET_DROP, AF_INET);
        drop.key.flags = flow_flags::HAS_REASON | flow_flags::SOCKET_CGROUP;
        drop.key.reason = 12;
        drop.key.protocol = 17;
        drop.stats.count = 20_000;
        drop.stats.first_ns = 10;
        drop.stats.last_ns = 99;
        let f = flow(&drop.key, &drop.stats).unwrap();
        assert_eq!(
            (f.kind, f.count, f.first_ns, f.last_ns),
            (FlowKind::PacketDrop, 20_000, 10, 99)
        );
        assert_eq!(
            (f.reason, f.protocol, f.task.is_some()),
            (Some(12), 17, false)
        );
        assert_eq!(f.location, None);
        // Kernels without drop reasons: the low half of where the packet was freed.
        drop.key.flags = flow_flags::LOCATION | flow_flags::SOCKET_CGROUP;
        drop.key.reason = 0x81a0_008c;
        let f = flow(&drop.key, &drop.stats).unwrap();
        assert_eq!((f.reason, f.location), (None, Some(0xffff_ffff_81a0_008c)));
        let mut timeout = event(kind::CONNECT_TIMEOUT, AF_INET);
        timeout.stats.extra = 3;
        assert_eq!(decoded(&timeout).syn_retransmits, 3);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let raw = encode(&event(kind::CONNECT_REFUSED, AF_INET));
        for len in 0..raw.len() {
            assert!(decode(&raw[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut raw = encode(&event(kind::CONNECT_REFUSED, AF_INET));
        raw[0] = 0xff;
        assert!(matches!(decode(&raw), Err(DecodeError::UnknownKind { .. })));
        let mut ev = event(kind::CONNECT_REFUSED, 77);
        assert!(matches!(
            decode(&encode(&ev)),
            Err(DecodeError::UnknownFamily { family: 77 })
        ));
        ev.key.family = AF_INET;
        ev.header.len = 8;
        assert!(matches!(
            decode(&encode(&ev)),
            Err(DecodeError::LengthMismatch { .. })
        ));
        ev.header.len = size_of::<FlowEvent>() as u32;
        ev.key.kind = 99;
        assert!(matches!(
            decode(&encode(&ev)),
            Err(DecodeError::UnknownKind { kind: 99 })
        ));
        // Arbitrary bytes of every length never panic.
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn oom_victims_decode_with_unknowns_and_truncations_are_errors() {
        let page = page_size();
        let mut comm = [0u8; COMM_LEN];
        comm[..6].copy_from_slice(b"worker");
        let e = OomEvent {
            header: EventHeader {
                kind: kind::OOM_VICTIM,
                len: size_of::<OomEvent>() as u32,
                boot_ns: 77,
            },
            cgroup_id: 9,
            parent_cgroup_id: 9,
            memcg_usage_pages: 100,
            memcg_limit_pages: (i64::MAX as u64) / page,
            rss_pages: UNKNOWN_U64,
            pid: 42,
            tgid: 41,
            uid: 1000,
            oom_score_adj: -998,
            oom_group: UNKNOWN_U8,
            _pad0: 0,
            comm,
        };
        let bytes = encode(&e);
        let RawEvent::OomVictim(v) = decode(&bytes).unwrap() else {
            panic!("not an OOM victim")
        };
        assert_eq!((v.pid, v.tgid, v.comm.as_str()), (42, 41, "worker"));
        assert_eq!(v.main_process, Some(false), "its parent is in its cgroup");
        assert_eq!(v.memcg_usage_bytes, Some(100 * page));
        assert_eq!(v.memcg_limit_bytes, None, "PAGE_COUNTER_MAX is no limit");
        assert_eq!((v.rss_bytes, v.oom_group), (None, None));
        assert_eq!(v.oom_score_adj, -998);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        let orphan = OomEvent {
            parent_cgroup_id: 0,
            ..e
        };
        let RawEvent::OomVictim(v) = decode(&encode(&orphan)).unwrap() else {
            panic!("not an OOM victim")
        };
        assert_eq!(v.main_process, None, "unknown parent: unknown");
    }

    #[test]
    fn comm_without_nul_and_invalid_utf8() {
        assert_eq!(comm_string(b"abcdefghijklmnop"), "abcdefghijklmnop");
        let mut raw = [0u8; COMM_LEN];
        raw[..4].copy_from_slice(&[0xff, b'a', 0, b'b']);
        assert_eq!(comm_string(&raw), "\u{fffd}a");
    }
}
