//! Decoding of ring buffer records into [`RawEvent`]s. Bytes from the kernel are checked, never
//! trusted: a short, oversized or unknown record is a [`DecodeError`] (counted by the reader),
//! never a panic. Layouts are the #[repr(C)] types of triage-agent-common, read field by field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use triage_agent_common::{
    AF_INET, AF_INET6, COMM_LEN, EventHeader, FlowEvent, FlowKey, FlowStats, OomEvent, UNKNOWN_U8,
    UNKNOWN_U64, flow_flags, kind,
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

/// Little cursor over a record: every read is bounds-checked.
struct Fields<'a> {
    bytes: &'a [u8],
    what: &'static str,
    need: usize,
}

impl Fields<'_> {
    fn array<const N: usize>(&self, offset: usize) -> Result<[u8; N], DecodeError> {
        offset
            .checked_add(N)
            .and_then(|end| self.bytes.get(offset..end))
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Short {
                what: self.what,
                len: self.bytes.len(),
                need: self.need,
            })
    }
    fn u8(&self, offset: usize) -> Result<u8, DecodeError> {
        self.array::<1>(offset).map(|[b]| b)
    }
    fn u16(&self, offset: usize) -> Result<u16, DecodeError> {
        self.array(offset).map(u16::from_ne_bytes)
    }
    fn u32(&self, offset: usize) -> Result<u32, DecodeError> {
        self.array(offset).map(u32::from_ne_bytes)
    }
    fn u64(&self, offset: usize) -> Result<u64, DecodeError> {
        self.array(offset).map(u64::from_ne_bytes)
    }

    fn key(&self, at: usize) -> Result<FlowKey, DecodeError> {
        use std::mem::offset_of;
        Ok(FlowKey {
            kind: self.u32(at + offset_of!(FlowKey, kind))?,
            reason: self.u32(at + offset_of!(FlowKey, reason))?,
            cgroup_id: self.u64(at + offset_of!(FlowKey, cgroup_id))?,
            family: self.u16(at + offset_of!(FlowKey, family))?,
            protocol: self.u8(at + offset_of!(FlowKey, protocol))?,
            tcp_flags: self.u8(at + offset_of!(FlowKey, tcp_flags))?,
            sport: self.u16(at + offset_of!(FlowKey, sport))?,
            dport: self.u16(at + offset_of!(FlowKey, dport))?,
            ifindex: self.u32(at + offset_of!(FlowKey, ifindex))?,
            flags: self.u32(at + offset_of!(FlowKey, flags))?,
            saddr: self.array(at + offset_of!(FlowKey, saddr))?,
            daddr: self.array(at + offset_of!(FlowKey, daddr))?,
        })
    }

    fn stats(&self, at: usize) -> Result<FlowStats, DecodeError> {
        use std::mem::offset_of;
        Ok(FlowStats {
            count: self.u64(at + offset_of!(FlowStats, count))?,
            first_ns: self.u64(at + offset_of!(FlowStats, first_ns))?,
            last_ns: self.u64(at + offset_of!(FlowStats, last_ns))?,
            pid: self.u32(at + offset_of!(FlowStats, pid))?,
            tgid: self.u32(at + offset_of!(FlowStats, tgid))?,
            comm: self.array(at + offset_of!(FlowStats, comm))?,
            extra: self.u32(at + offset_of!(FlowStats, extra))?,
            last_sport: self.u16(at + offset_of!(FlowStats, last_sport))?,
            _pad0: 0,
        })
    }
}

/// Decodes one ring buffer record (a flow's first occurrence).
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let header_len = size_of::<EventHeader>();
    let f = Fields {
        bytes,
        what: "event header",
        need: header_len,
    };
    let event_kind = f.u32(std::mem::offset_of!(EventHeader, kind))?;
    let declared = f.u32(std::mem::offset_of!(EventHeader, len))?;
    match event_kind {
        kind::CONNECT_REFUSED | kind::SYN_REFUSED | kind::PACKET_DROP | kind::CONNECT_TIMEOUT => {
            let need = size_of::<FlowEvent>();
            if declared as usize != need || bytes.len() < need {
                return Err(DecodeError::LengthMismatch {
                    kind: event_kind,
                    declared,
                    len: bytes.len(),
                });
            }
            let f = Fields {
                bytes,
                what: "flow event",
                need,
            };
            let key = f.key(std::mem::offset_of!(FlowEvent, key))?;
            let stats = f.stats(std::mem::offset_of!(FlowEvent, stats))?;
            flow(&key, &stats).map(RawEvent::Flow)
        }
        kind::OOM_VICTIM => {
            use std::mem::offset_of;
            let need = size_of::<OomEvent>();
            if declared as usize != need || bytes.len() < need {
                return Err(DecodeError::LengthMismatch {
                    kind: event_kind,
                    declared,
                    len: bytes.len(),
                });
            }
            let f = Fields {
                bytes,
                what: "oom event",
                need,
            };
            let e = OomEvent {
                header: EventHeader {
                    kind: event_kind,
                    len: declared,
                    boot_ns: f.u64(offset_of!(EventHeader, boot_ns))?,
                },
                cgroup_id: f.u64(offset_of!(OomEvent, cgroup_id))?,
                parent_cgroup_id: f.u64(offset_of!(OomEvent, parent_cgroup_id))?,
                memcg_usage_pages: f.u64(offset_of!(OomEvent, memcg_usage_pages))?,
                memcg_limit_pages: f.u64(offset_of!(OomEvent, memcg_limit_pages))?,
                rss_pages: f.u64(offset_of!(OomEvent, rss_pages))?,
                pid: f.u32(offset_of!(OomEvent, pid))?,
                tgid: f.u32(offset_of!(OomEvent, tgid))?,
                uid: f.u32(offset_of!(OomEvent, uid))?,
                oom_score_adj: f.u16(offset_of!(OomEvent, oom_score_adj))? as i16,
                oom_group: f.u8(offset_of!(OomEvent, oom_group))?,
                _pad0: 0,
                comm: f.array(offset_of!(OomEvent, comm))?,
            };
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
        ifindex: key.ifindex,
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

/// Encodes an OOM event the way the kernel program lays it out (tests, fuzzing).
pub fn encode_oom(e: &OomEvent) -> Vec<u8> {
    use std::mem::offset_of;
    let mut out = vec![0u8; size_of::<OomEvent>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        if let Some(dst) = out.get_mut(offset..offset + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(offset_of!(EventHeader, kind), &e.header.kind.to_ne_bytes());
    put(offset_of!(EventHeader, len), &e.header.len.to_ne_bytes());
    put(
        offset_of!(EventHeader, boot_ns),
        &e.header.boot_ns.to_ne_bytes(),
    );
    put(offset_of!(OomEvent, cgroup_id), &e.cgroup_id.to_ne_bytes());
    put(
        offset_of!(OomEvent, parent_cgroup_id),
        &e.parent_cgroup_id.to_ne_bytes(),
    );
    put(
        offset_of!(OomEvent, memcg_usage_pages),
        &e.memcg_usage_pages.to_ne_bytes(),
    );
    put(
        offset_of!(OomEvent, memcg_limit_pages),
        &e.memcg_limit_pages.to_ne_bytes(),
    );
    put(offset_of!(OomEvent, rss_pages), &e.rss_pages.to_ne_bytes());
    put(offset_of!(OomEvent, pid), &e.pid.to_ne_bytes());
    put(offset_of!(OomEvent, tgid), &e.tgid.to_ne_bytes());
    put(offset_of!(OomEvent, uid), &e.uid.to_ne_bytes());
    put(
        offset_of!(OomEvent, oom_score_adj),
        &e.oom_score_adj.to_ne_bytes(),
    );
    put(offset_of!(OomEvent, oom_group), &[e.oom_group]);
    put(offset_of!(OomEvent, comm), &e.comm);
    out
}

/// Encodes a flow event the way the kernel programs lay it out (tests, fuzzing, benchmarks).
pub fn encode_flow(e: &FlowEvent) -> Vec<u8> {
    use std::mem::offset_of;
    let mut out = vec![0u8; size_of::<FlowEvent>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        if let Some(dst) = out.get_mut(offset..offset + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    let h = offset_of!(FlowEvent, header);
    put(
        h + offset_of!(EventHeader, kind),
        &e.header.kind.to_ne_bytes(),
    );
    put(
        h + offset_of!(EventHeader, len),
        &e.header.len.to_ne_bytes(),
    );
    put(
        h + offset_of!(EventHeader, boot_ns),
        &e.header.boot_ns.to_ne_bytes(),
    );
    let k = offset_of!(FlowEvent, key);
    put(k + offset_of!(FlowKey, kind), &e.key.kind.to_ne_bytes());
    put(k + offset_of!(FlowKey, reason), &e.key.reason.to_ne_bytes());
    put(
        k + offset_of!(FlowKey, cgroup_id),
        &e.key.cgroup_id.to_ne_bytes(),
    );
    put(k + offset_of!(FlowKey, family), &e.key.family.to_ne_bytes());
    put(k + offset_of!(FlowKey, protocol), &[e.key.protocol]);
    put(k + offset_of!(FlowKey, tcp_flags), &[e.key.tcp_flags]);
    put(k + offset_of!(FlowKey, sport), &e.key.sport.to_ne_bytes());
    put(k + offset_of!(FlowKey, dport), &e.key.dport.to_ne_bytes());
    put(
        k + offset_of!(FlowKey, ifindex),
        &e.key.ifindex.to_ne_bytes(),
    );
    put(k + offset_of!(FlowKey, flags), &e.key.flags.to_ne_bytes());
    put(k + offset_of!(FlowKey, saddr), &e.key.saddr);
    put(k + offset_of!(FlowKey, daddr), &e.key.daddr);
    let st = offset_of!(FlowEvent, stats);
    put(
        st + offset_of!(FlowStats, count),
        &e.stats.count.to_ne_bytes(),
    );
    put(
        st + offset_of!(FlowStats, first_ns),
        &e.stats.first_ns.to_ne_bytes(),
    );
    put(
        st + offset_of!(FlowStats, last_ns),
        &e.stats.last_ns.to_ne_bytes(),
    );
    put(st + offset_of!(FlowStats, pid), &e.stats.pid.to_ne_bytes());
    put(
        st + offset_of!(FlowStats, tgid),
        &e.stats.tgid.to_ne_bytes(),
    );
    put(st + offset_of!(FlowStats, comm), &e.stats.comm);
    put(
        st + offset_of!(FlowStats, extra),
        &e.stats.extra.to_ne_bytes(),
    );
    put(
        st + offset_of!(FlowStats, last_sport),
        &e.stats.last_sport.to_ne_bytes(),
    );
    out
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
                ifindex: 0,
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
        let RawEvent::Flow(f) = decode(&encode_flow(e)).unwrap() else {
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
        let raw = encode_flow(&event(kind::CONNECT_REFUSED, AF_INET));
        for len in 0..raw.len() {
            assert!(decode(&raw[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut raw = encode_flow(&event(kind::CONNECT_REFUSED, AF_INET));
        raw[0] = 0xff;
        assert!(matches!(decode(&raw), Err(DecodeError::UnknownKind { .. })));
        let mut ev = event(kind::CONNECT_REFUSED, 77);
        assert!(matches!(
            decode(&encode_flow(&ev)),
            Err(DecodeError::UnknownFamily { family: 77 })
        ));
        ev.key.family = AF_INET;
        ev.header.len = 8;
        assert!(matches!(
            decode(&encode_flow(&ev)),
            Err(DecodeError::LengthMismatch { .. })
        ));
        ev.header.len = size_of::<FlowEvent>() as u32;
        ev.key.kind = 99;
        assert!(matches!(
            decode(&encode_flow(&ev)),
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
        let bytes = encode_oom(&e);
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
        let RawEvent::OomVictim(v) = decode(&encode_oom(&orphan)).unwrap() else {
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
